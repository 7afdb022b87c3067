"""The exceptions h2pool raises.

Every error a caller can see derives from :class:`H2PoolError`, so one
``except`` clause covers the library. Each subclass names one failure a caller
may want to treat differently: a connect failure can be retried elsewhere, a
stream reset carries the peer's error code, a GOAWAY carries the last stream
the server promises to have processed. Messages always name the origin, and
the stream where there is one, because in a pool of many origins an error
without its origin is hard to act on.
"""

from __future__ import annotations

from typing import Any, TypeVar

from h2.errors import ErrorCodes

E = TypeVar("E", bound="H2PoolError")


def _where(origin: str, stream_id: int | None) -> str:
    if stream_id is None:
        return origin
    return f"{origin} stream {stream_id}"


class H2PoolError(Exception):
    """Base class of every error raised by h2pool.

    ``origin`` is the ``scheme://host:port`` the failure concerns (empty when
    none does); ``stream_id`` is the HTTP/2 stream, or ``None``.

    ``may_have_been_processed`` is False only when h2pool knows the server
    did not act on the request: it was never sent, the server refused the
    stream (REFUSED_STREAM), or a GOAWAY named a last stream below it. Such
    requests are replayed by ``Pool.request`` and ``Pool.stream``; a request
    whose error says True is never replayed silently.
    """

    may_have_been_processed = True

    def __init__(self, message: str, *, origin: str = "", stream_id: int | None = None) -> None:
        self.origin = origin
        self.stream_id = stream_id
        self.message = message
        prefix = _where(origin, stream_id)
        super().__init__(f"{prefix}: {message}" if prefix else message)

    def for_stream(self: E, stream_id: int | None) -> E:
        """A fresh copy naming ``stream_id``: one failure, many streams, one exception each.

        Raising one exception object in many tasks would tangle their
        tracebacks, so each stream gets its own copy.
        """
        clone = _rebuild(type(self), (f"{_where(self.origin, stream_id)}: {self.message}",), self.__dict__)
        clone.stream_id = stream_id
        clone.__cause__ = self.__cause__
        return clone

    def __reduce__(self) -> tuple[Any, ...]:
        # Subclasses take other constructor arguments than the message, so
        # copying and pickling rebuild from the attributes instead.
        return (_rebuild, (type(self), self.args, self.__dict__))


def _rebuild(cls: type[E], args: tuple[Any, ...], state: dict[str, Any]) -> E:
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


class InvalidRequest(H2PoolError, ValueError):
    """The caller asked for something h2pool refuses to send.

    Raised before anything reaches the network: a header name or value with
    CR, LF or NUL, a connection-specific header, an unsupported URL.
    """

    may_have_been_processed = False


class RequestBodyError(H2PoolError):
    """The request body's async iterator raised; the cause is chained."""


class ConnectError(H2PoolError):
    """A connection to the origin could not be set up (TCP or DNS)."""

    may_have_been_processed = False


class TLSError(ConnectError):
    """The TLS handshake failed: certificate, hostname or protocol."""


class ALPNError(TLSError):
    """The server completed TLS but did not select ``h2`` in ALPN."""


class H2PoolTimeout(H2PoolError, TimeoutError):
    """Base class of the timeouts; also a builtin :class:`TimeoutError`."""


class ConnectTimeout(H2PoolTimeout, ConnectError):
    """Setting a connection up took longer than ``connect_timeout``.

    That covers resolving the host, the TCP connect and the TLS handshake
    (which also has ``tls_handshake_timeout``), and then the server's
    SETTINGS, which must arrive within ``connect_timeout`` of the handshake.
    """


class TLSHandshakeTimeout(ConnectTimeout, TLSError):
    """The TLS handshake took longer than ``tls_handshake_timeout``."""


class AcquireTimeout(H2PoolTimeout):
    """No stream slot became free within ``acquire_timeout``."""

    may_have_been_processed = False


class ReadTimeout(H2PoolTimeout):
    """The server sent nothing for this stream within ``read_timeout``."""


class WriteTimeout(H2PoolTimeout):
    """Request data could not be sent within ``write_timeout``.

    Either the peer gave no flow-control window or the socket did not drain.
    """


class RequestTimeout(H2PoolTimeout):
    """The whole request took longer than its ``timeout``."""


class StreamReset(H2PoolError):
    """The peer reset the stream (RST_STREAM); ``error_code`` says why.

    REFUSED_STREAM means the server did no work on it (RFC 9113 §8.7).
    """

    def __init__(self, error_code: ErrorCodes | int, *, origin: str, stream_id: int | None) -> None:
        self.error_code = error_code
        name = error_code.name if isinstance(error_code, ErrorCodes) else str(error_code)
        super().__init__(f"stream reset by peer ({name})", origin=origin, stream_id=stream_id)
        if error_code == ErrorCodes.REFUSED_STREAM:
            self.may_have_been_processed = False


class ConnectionClosed(H2PoolError):
    """The connection carrying the stream is gone."""


class ConnectionTerminated(ConnectionClosed):
    """The server sent GOAWAY.

    ``last_stream_id`` is the highest stream the server may have processed;
    streams above it were not processed at all (and say so in
    ``may_have_been_processed``).
    """

    def __init__(
        self,
        error_code: ErrorCodes | int,
        last_stream_id: int,
        *,
        origin: str,
        stream_id: int | None = None,
        detail: str = "",
    ) -> None:
        self.error_code = error_code
        self.last_stream_id = last_stream_id
        name = error_code.name if isinstance(error_code, ErrorCodes) else str(error_code)
        message = f"connection terminated by GOAWAY ({name}, last stream {last_stream_id})"
        if detail:
            message = f"{message}: {detail}"
        super().__init__(message, origin=origin, stream_id=stream_id)


class ConnectionLost(ConnectionClosed):
    """The socket closed or failed without a GOAWAY."""


class ProtocolError(H2PoolError):
    """The peer broke the HTTP/2 protocol, or sent a malformed response."""


class PoolClosed(H2PoolError):
    """The pool was closed; no further requests are accepted."""


def not_processed(error: E) -> E:
    """Mark ``error`` as one the server certainly did not act on."""
    error.may_have_been_processed = False
    return error
