"""The exception hierarchy and messages (h2pool.exceptions)."""

from __future__ import annotations

import pickle

import pytest
from h2.errors import ErrorCodes

import h2pool
from h2pool.exceptions import (
    AcquireTimeout,
    ALPNError,
    ConnectError,
    ConnectionClosed,
    ConnectionLost,
    ConnectionTerminated,
    ConnectTimeout,
    H2PoolError,
    H2PoolTimeout,
    InvalidRequest,
    PoolClosed,
    ProtocolError,
    ReadTimeout,
    RequestBodyError,
    RequestTimeout,
    StreamReset,
    TLSError,
    WriteTimeout,
)

ORIGIN = "https://127.0.0.1:8443"

PLAIN_ERRORS: list[type[H2PoolError]] = [
    H2PoolError,
    InvalidRequest,
    RequestBodyError,
    ConnectError,
    TLSError,
    ALPNError,
    H2PoolTimeout,
    ConnectTimeout,
    AcquireTimeout,
    ReadTimeout,
    WriteTimeout,
    RequestTimeout,
    ConnectionClosed,
    ConnectionLost,
    ProtocolError,
    PoolClosed,
]


def _examples() -> list[H2PoolError]:
    return [
        *(cls("went wrong", origin=ORIGIN, stream_id=3) for cls in PLAIN_ERRORS),
        StreamReset(ErrorCodes.CANCEL, origin=ORIGIN, stream_id=3),
        ConnectionTerminated(ErrorCodes.NO_ERROR, 1, origin=ORIGIN, stream_id=3),
    ]


# Hierarchy


@pytest.mark.parametrize("cls", [*PLAIN_ERRORS, StreamReset, ConnectionTerminated])
def test_every_error_is_an_h2pool_error_and_exported(cls: type[H2PoolError]) -> None:
    assert issubclass(cls, H2PoolError)
    assert getattr(h2pool, cls.__name__) is cls


@pytest.mark.parametrize("cls", [ConnectTimeout, AcquireTimeout, ReadTimeout, WriteTimeout, RequestTimeout])
def test_timeouts_are_builtin_timeout_errors(cls: type[H2PoolError]) -> None:
    assert issubclass(cls, H2PoolTimeout)
    assert issubclass(cls, TimeoutError)
    with pytest.raises(TimeoutError):
        raise cls("slow", origin=ORIGIN)


def test_alpn_error_is_a_tls_error_is_a_connect_error() -> None:
    assert issubclass(ALPNError, TLSError)
    assert issubclass(TLSError, ConnectError)


def test_connect_timeout_is_both_a_timeout_and_a_connect_error() -> None:
    error = ConnectTimeout("slow", origin=ORIGIN)
    assert isinstance(error, ConnectError)
    assert isinstance(error, H2PoolTimeout)
    assert isinstance(error, TimeoutError)


@pytest.mark.parametrize("cls", [ConnectionTerminated, ConnectionLost])
def test_connection_failures_are_connection_closed(cls: type[H2PoolError]) -> None:
    assert issubclass(cls, ConnectionClosed)


def test_invalid_request_is_a_value_error() -> None:
    assert issubclass(InvalidRequest, ValueError)


@pytest.mark.parametrize(
    "cls", [ConnectError, StreamReset, ConnectionClosed, ProtocolError, PoolClosed, ReadTimeout, RequestBodyError]
)
def test_failures_are_not_value_errors(cls: type[H2PoolError]) -> None:
    # A caller's ``except ValueError`` around its own parsing must not swallow network failures.
    assert not issubclass(cls, ValueError)


def test_read_timeout_is_not_a_connect_error() -> None:
    assert not issubclass(ReadTimeout, ConnectError)


# Messages


def test_message_names_origin_and_stream() -> None:
    error = ReadTimeout("nothing for 30 s", origin=ORIGIN, stream_id=5)
    assert str(error) == f"{ORIGIN} stream 5: nothing for 30 s"
    assert (error.origin, error.stream_id, error.message) == (ORIGIN, 5, "nothing for 30 s")


def test_message_without_stream_names_origin_only() -> None:
    assert str(ConnectError("refused", origin=ORIGIN)) == f"{ORIGIN}: refused"


def test_message_without_origin_is_the_bare_message() -> None:
    error = H2PoolError("plain")
    assert str(error) == "plain"
    assert (error.origin, error.stream_id) == ("", None)


@pytest.mark.parametrize("error", _examples(), ids=lambda e: type(e).__name__)
def test_every_error_names_origin_and_stream(error: H2PoolError) -> None:
    assert f"{ORIGIN} stream 3" in str(error)


# for_stream


@pytest.mark.parametrize("cls", PLAIN_ERRORS)
def test_for_stream_returns_a_distinct_copy_naming_the_new_stream(cls: type[H2PoolError]) -> None:
    original = cls("went wrong", origin=ORIGIN, stream_id=3)
    copy = original.for_stream(7)
    assert copy is not original
    assert type(copy) is cls
    assert copy.stream_id == 7
    assert str(copy) == f"{ORIGIN} stream 7: went wrong"
    assert (copy.origin, copy.message) == (ORIGIN, "went wrong")


def test_for_stream_leaves_the_original_unchanged() -> None:
    original = ReadTimeout("slow", origin=ORIGIN, stream_id=3)
    original.for_stream(9)
    assert original.stream_id == 3
    assert str(original) == f"{ORIGIN} stream 3: slow"


def test_for_stream_none_drops_the_stream_from_the_message() -> None:
    copy = ConnectionLost("eof", origin=ORIGIN, stream_id=3).for_stream(None)
    assert copy.stream_id is None
    assert str(copy) == f"{ORIGIN}: eof"


def test_for_stream_keeps_the_cause_but_not_the_traceback() -> None:
    cause = OSError("reset by peer")
    try:
        try:
            raise cause
        except OSError as exc:
            raise ConnectionLost("socket failed", origin=ORIGIN) from exc
    except ConnectionLost as error:
        original = error
    copy = original.for_stream(1)
    assert copy.__cause__ is cause
    assert copy.__traceback__ is None
    assert original.__traceback__ is not None


def test_copies_raised_in_two_places_do_not_share_tracebacks() -> None:
    original = ConnectionLost("eof", origin=ORIGIN)
    caught: list[BaseException] = []
    for stream_id in (1, 3):
        try:
            raise original.for_stream(stream_id)
        except ConnectionLost as exc:
            caught.append(exc)
    assert caught[0] is not caught[1]
    assert caught[0].__traceback__ is not caught[1].__traceback__


def test_for_stream_copies_a_stream_reset() -> None:
    original = StreamReset(ErrorCodes.REFUSED_STREAM, origin=ORIGIN, stream_id=3)
    copy = original.for_stream(5)
    assert copy is not original
    assert copy.error_code == ErrorCodes.REFUSED_STREAM
    assert str(copy) == f"{ORIGIN} stream 5: stream reset by peer (REFUSED_STREAM)"
    assert original.stream_id == 3


def test_for_stream_copies_a_connection_terminated() -> None:
    original = ConnectionTerminated(ErrorCodes.NO_ERROR, 7, origin=ORIGIN)
    copy = original.for_stream(9)
    assert copy is not original
    assert (copy.error_code, copy.last_stream_id, copy.stream_id) == (ErrorCodes.NO_ERROR, 7, 9)
    assert str(copy).startswith(f"{ORIGIN} stream 9: connection terminated by GOAWAY (NO_ERROR, last stream 7)")
    assert original.stream_id is None


@pytest.mark.parametrize("cls", PLAIN_ERRORS)
def test_errors_survive_pickling(cls: type[H2PoolError]) -> None:
    # Errors cross process boundaries (multiprocessing, concurrent.futures) by pickle.
    error = cls("went wrong", origin=ORIGIN, stream_id=3)
    restored = pickle.loads(pickle.dumps(error))
    assert type(restored) is cls
    assert str(restored) == str(error)
    assert restored.__dict__ == error.__dict__


@pytest.mark.parametrize("error", _examples()[-2:], ids=lambda e: type(e).__name__)
def test_errors_with_codes_survive_pickling(error: H2PoolError) -> None:
    restored = pickle.loads(pickle.dumps(error))
    assert type(restored) is type(error)
    assert str(restored) == str(error)
    assert restored.__dict__ == error.__dict__


# Error codes


def test_stream_reset_carries_its_error_code() -> None:
    error = StreamReset(ErrorCodes.REFUSED_STREAM, origin=ORIGIN, stream_id=5)
    assert error.error_code is ErrorCodes.REFUSED_STREAM
    assert error.stream_id == 5
    assert str(error) == f"{ORIGIN} stream 5: stream reset by peer (REFUSED_STREAM)"


def test_stream_reset_with_an_unknown_code_shows_the_number() -> None:
    error = StreamReset(0xFF, origin=ORIGIN, stream_id=1)
    assert error.error_code == 0xFF
    assert "(255)" in str(error)


def test_connection_terminated_carries_error_code_and_last_stream_id() -> None:
    error = ConnectionTerminated(ErrorCodes.ENHANCE_YOUR_CALM, 41, origin=ORIGIN, detail="too many resets")
    assert error.error_code is ErrorCodes.ENHANCE_YOUR_CALM
    assert error.last_stream_id == 41
    assert error.stream_id is None
    assert (
        str(error) == f"{ORIGIN}: connection terminated by GOAWAY (ENHANCE_YOUR_CALM, last stream 41): too many resets"
    )


def test_connection_terminated_without_detail_has_no_trailing_colon() -> None:
    error = ConnectionTerminated(0, 0, origin=ORIGIN, stream_id=3)
    assert str(error) == f"{ORIGIN} stream 3: connection terminated by GOAWAY (0, last stream 0)"
