"""Property-based fuzzing: whatever a server sends, every request ends typed and nothing leaks.

A scripted peer (:mod:`h2pool.testing`) plays a sequence of server moves drawn
by hypothesis, valid and invalid alike, against a pool running a few requests
at once. Whatever the moves, each request must end, within a bound, with a
``Response`` or an :class:`h2pool.H2PoolError`; afterwards no stream, slot or
waiter is left, no task outlives the pool, and nothing reached the event
loop's exception handler or h2pool's error log.

The HPACK part checks that the caching coders of :mod:`h2pool.hpack_cache`
agree with plain ``hpack`` coders over stateful sequences of header blocks.

Examples are derandomized and the example database is off, so a run is the
same on every machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import struct
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import h2.exceptions
import hpack
import hyperframe.exceptions
from h2.errors import ErrorCodes
from h2.settings import SettingCodes
from hpack import Decoder, Encoder, HeaderTuple, NeverIndexedHeaderTuple
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    PushPromiseFrame,
    RstStreamFrame,
    SettingsFrame,
)
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from h2pool import H2PoolError, Pool, Response
from h2pool.hpack_cache import CachingDecoder, CachingEncoder
from h2pool.testing import MockServer, PeerRequest, Reply, ScriptedPeer, idle

ORIGIN = "https://example.test"

#: Far above any example's need (every per-step timeout is a fraction of a
#: second), far below pytest-timeout: hitting it means a request hung.
HANG_BOUND = 5.0

#: Short per-step timeouts, so an example that leaves requests unanswered ends quickly.
POOL_OPTIONS: dict[str, Any] = {
    "read_timeout": 0.2,
    "write_timeout": 0.2,
    "acquire_timeout": 0.5,
    "connect_timeout": 0.5,
    "ping_interval": 0.3,
    "ping_timeout": 0.2,
    "max_retries": 2,
    "retry_backoff": 0.001,
    "retry_backoff_max": 0.005,
    "initial_stream_window": 65_535,
    "connection_window": 65_535 * 2,
}

FUZZ_SETTINGS = settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

#: What the scripted peer's own h2 or frame code may refuse of a move that no
#: longer fits its state (a response on a stream the client reset, say): the
#: move is then simply not made. Exceptions of the client are never caught here.
PEER_REFUSALS = (
    h2.exceptions.H2Error,
    hyperframe.exceptions.HyperframeError,
    hpack.HPACKError,
    struct.error,
    ValueError,
    KeyError,
)


# Server moves.


@dataclass(frozen=True)
class Move:
    """One thing the server does; ``stream`` picks among the streams the peer has seen."""

    kind: str
    stream: int = 0
    args: tuple[Any, ...] = ()


ERROR_CODES = st.one_of(st.sampled_from(list(ErrorCodes)), st.integers(0, 2**32 - 1))
STREAM_PICK = st.integers(0, 7)

_NAMES = st.one_of(
    st.sampled_from(
        [
            b":status",
            b":path",
            b":method",
            b"content-type",
            b"content-length",
            b"connection",
            b"te",
            b"Upper",
            b"x-a",
            b"",
            b"bad name",
            b"x\x00y",
            b"set-cookie",
        ]
    ),
    st.binary(min_size=0, max_size=12),
)
_VALUES = st.one_of(
    st.sampled_from([b"200", b"204", b"404", b"99", b"1000", b"abc", b"", b"trailers", b"a\r\nb", b"\x00", b" pad "]),
    st.binary(max_size=24),
)
HEADER_LISTS = st.lists(st.tuples(_NAMES, _VALUES), max_size=6)
STATUS_FIRST = st.builds(lambda rest, status: [(b":status", status), *rest], HEADER_LISTS, _VALUES)
RESPONSE_HEADERS = st.one_of(STATUS_FIRST, HEADER_LISTS)

#: Moves a correct server may make: they keep the connection going, so the
#: invalid moves that follow meet streams in every state.
VALID_MOVES = st.one_of(
    st.builds(Move, st.just("respond"), STREAM_PICK, st.tuples(st.integers(100, 599), st.integers(0, 40_000))),
    st.builds(Move, st.just("data"), STREAM_PICK, st.tuples(st.integers(0, 20_000), st.booleans())),
    st.builds(Move, st.just("window"), st.integers(-1, 7), st.tuples(st.integers(1, 200_000))),
    st.builds(
        Move,
        st.just("valid_settings"),
        st.just(0),
        st.tuples(
            st.fixed_dictionaries(
                {},
                optional={
                    SettingCodes.MAX_CONCURRENT_STREAMS: st.integers(0, 10),
                    SettingCodes.INITIAL_WINDOW_SIZE: st.integers(0, 2**31 - 1),
                    SettingCodes.MAX_FRAME_SIZE: st.integers(2**14, 2**24 - 1),
                    SettingCodes.HEADER_TABLE_SIZE: st.integers(0, 8192),
                },
            )
        ),
    ),
    st.builds(Move, st.just("peer_ping"), st.just(0), st.tuples(st.binary(min_size=8, max_size=8))),
    st.builds(Move, st.just("request")),
    st.builds(Move, st.just("idle"), st.just(0), st.tuples(st.integers(1, 30))),
    st.builds(Move, st.just("pause_writing")),
    st.builds(Move, st.just("resume_writing")),
)

#: Moves that break a rule, or end the connection, or both.
HOSTILE_MOVES = st.one_of(
    st.builds(Move, st.just("headers"), STREAM_PICK, st.tuples(RESPONSE_HEADERS, st.booleans())),
    st.builds(Move, st.just("raw_headers"), STREAM_PICK, st.tuples(RESPONSE_HEADERS, st.booleans(), st.booleans())),
    st.builds(Move, st.just("raw_data"), STREAM_PICK, st.tuples(st.integers(0, 70_000), st.booleans())),
    st.builds(Move, st.just("rst"), STREAM_PICK, st.tuples(ERROR_CODES)),
    st.builds(
        Move,
        st.just("window_update"),
        st.integers(-1, 7),
        st.tuples(st.one_of(st.sampled_from([0, 1, 2**31 - 1, 2**31]), st.integers(0, 2**32 - 1))),
    ),
    st.builds(
        Move,
        st.just("settings"),
        st.just(0),
        st.tuples(
            st.dictionaries(
                st.one_of(st.integers(1, 8), st.integers(0, 0xFFFF)),
                st.one_of(st.sampled_from([0, 1, 2**14 - 1, 2**24, 2**31 - 1, 2**31]), st.integers(0, 2**32 - 1)),
                max_size=4,
            )
        ),
    ),
    st.builds(Move, st.just("settings_ack")),
    st.builds(Move, st.just("ping"), st.just(0), st.tuples(st.binary(min_size=8, max_size=8), st.booleans())),
    st.builds(
        Move, st.just("goaway"), st.just(0), st.tuples(st.integers(0, 9) | st.integers(0, 2**31 - 1), ERROR_CODES)
    ),
    st.builds(Move, st.just("push_promise"), STREAM_PICK, st.tuples(st.integers(0, 20))),
    st.builds(Move, st.just("continuation"), STREAM_PICK, st.tuples(st.binary(max_size=20), st.booleans())),
    st.builds(Move, st.just("split_headers"), STREAM_PICK, st.tuples(RESPONSE_HEADERS, st.integers(1, 3))),
    st.builds(Move, st.just("priority"), STREAM_PICK, st.tuples(st.integers(0, 9))),
    st.builds(
        Move,
        st.just("unknown_frame"),
        STREAM_PICK,
        st.tuples(st.integers(0x0A, 0xFF), st.integers(0, 0xFF), st.binary(max_size=30)),
    ),
    st.builds(Move, st.just("raw"), st.just(0), st.tuples(st.binary(min_size=1, max_size=40))),
    st.builds(Move, st.just("vanish")),
    st.builds(Move, st.just("disconnect")),
)

# Two valid moves for each hostile one.
MOVES = st.one_of(VALID_MOVES, VALID_MOVES, HOSTILE_MOVES)


def _stream_id(peer: ScriptedPeer, pick: int) -> int:
    """A stream the peer has seen, or (for picks past them) an odd or even one the client never opened."""
    ids = sorted(peer.requests)
    if pick < 0:
        return 0
    if pick < len(ids):
        return ids[pick]
    return 2 * pick + 1 + (max(ids) if ids else 0)


def _raw_header_block(headers: list[tuple[bytes, bytes]], huffman: bool) -> bytes:
    # A separate encoder: its table is not the peer's, so indexed entries can
    # also desynchronise the client's decoder, which must fail cleanly.
    return Encoder().encode(headers, huffman=huffman)


def play_move(peer: ScriptedPeer, move: Move) -> None:
    """Make one server move on ``peer``; moves the peer's own state cannot make are skipped."""
    stream_id = _stream_id(peer, move.stream)
    args = move.args
    kind = move.kind
    # These call into the client at once: outside the try, so nothing it raises is taken for a peer refusal.
    if kind == "pause_writing":
        peer.pause_client_writing()
        return
    if kind == "resume_writing":
        peer.resume_client_writing()
        return
    try:
        if kind == "respond":
            status, size = args
            peer.respond(stream_id, status, body=bytes(size))
        elif kind == "headers":
            headers, end_stream = args
            # h2 cannot frame an empty block (raw_headers sends one).
            if headers:
                peer.send_headers(stream_id, headers, end_stream=end_stream)
        elif kind == "raw_headers":
            headers, end_stream, huffman = args
            flags = ["END_HEADERS", *(["END_STREAM"] if end_stream else [])]
            peer.send_frame(HeadersFrame(stream_id, data=_raw_header_block(headers, huffman), flags=flags))
        elif kind == "data":
            size, end_stream = args
            peer.send_data(stream_id, bytes(size), end_stream=end_stream)
        elif kind == "raw_data":
            size, end_stream = args
            chunk = 16_384
            data_frames = [
                DataFrame(stream_id, data=bytes(min(chunk, size - start))) for start in range(0, size, chunk)
            ]
            if end_stream:
                data_frames.append(DataFrame(stream_id, data=b"", flags=["END_STREAM"]))
            if data_frames:
                peer.send_frame(*data_frames)
        elif kind == "rst":
            peer.send_frame(RstStreamFrame(stream_id, error_code=args[0]))
        elif kind == "window_update":
            # By hand: hyperframe would mask the reserved bit, and an increment of 0 must get through.
            peer.send_raw(struct.pack("!BHBBL", 0, 4, 0x08, 0, stream_id) + struct.pack("!L", args[0]))
        elif kind == "settings":
            peer.send_frame(SettingsFrame(0, settings=args[0]))
        elif kind == "window":
            peer.window_update(stream_id, args[0])
        elif kind == "peer_ping":
            peer.ping(args[0])
        elif kind == "valid_settings":
            if args[0]:
                peer.update_settings(args[0])
        elif kind == "settings_ack":
            peer.send_frame(SettingsFrame(0, flags=["ACK"]))
        elif kind == "ping":
            data, ack = args
            peer.send_frame(PingFrame(0, opaque_data=data, flags=["ACK"] if ack else []))
        elif kind == "goaway":
            last_stream_id, code = args
            peer.goaway(last_stream_id=last_stream_id, error_code=code)
        elif kind == "push_promise":
            block = Encoder().encode([(b":method", b"GET"), (b":path", b"/pushed")])
            peer.send_frame(
                PushPromiseFrame(stream_id, promised_stream_id=args[0] * 2, data=block, flags=["END_HEADERS"])
            )
        elif kind == "continuation":
            data, end_headers = args
            peer.send_frame(ContinuationFrame(stream_id, data=data, flags=["END_HEADERS"] if end_headers else []))
        elif kind == "split_headers":
            headers, pieces = args
            block = _raw_header_block(headers, True)
            step = max(1, len(block) // pieces + 1)
            parts = [block[start : start + step] for start in range(0, len(block), step)] or [b""]
            frames: list[Frame] = [
                HeadersFrame(stream_id, data=parts[0], flags=[] if len(parts) > 1 else ["END_HEADERS"])
            ]
            for index, part in enumerate(parts[1:], start=2):
                flags = ["END_HEADERS"] if index == len(parts) else []
                frames.append(ContinuationFrame(stream_id, data=part, flags=flags))
            peer.send_frame(*frames)
        elif kind == "priority":
            peer.send_frame(PriorityFrame(stream_id, depends_on=args[0]))
        elif kind == "unknown_frame":
            frame_type, flags, payload = args
            peer.send_raw(struct.pack("!BHBBL", 0, len(payload), frame_type, flags, stream_id) + payload)
        elif kind == "raw":
            peer.send_raw(args[0])
        elif kind == "vanish":
            peer.vanish()
        elif kind == "disconnect":
            peer.disconnect()
        elif kind not in ("idle", "request"):
            raise AssertionError(f"unknown move {kind}")
    except PEER_REFUSALS:
        event(f"move not made by the peer: {kind}")


# The client side of one example.


async def _stream_and_read(pool: Pool, url: str) -> Response:
    async with pool.stream("GET", url) as response:
        async for _ in response.aiter_bytes():
            pass
    return response


def _requests(pool: Pool) -> list[Coroutine[Any, Any, Response]]:
    return [
        pool.request("GET", f"{ORIGIN}/get"),
        pool.request("POST", f"{ORIGIN}/small", content=b"x" * 100),
        # Over the inline limit: sent by a body task while the response is read.
        pool.request("POST", f"{ORIGIN}/large", content=bytes(100_000)),
        _stream_and_read(pool, f"{ORIGIN}/stream"),
    ]


def _answer(request: PeerRequest) -> Reply:
    return Reply(body=b"fine")


@dataclass
class Observed:
    """What went wrong outside the requests' own outcomes."""

    loop_errors: list[dict[str, Any]] = field(default_factory=list)
    log_records: list[logging.LogRecord] = field(default_factory=list)


class _Collect(logging.Handler):
    def __init__(self, records: list[logging.LogRecord]) -> None:
        super().__init__(logging.ERROR)
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def _outcome(coro: Coroutine[Any, Any, Response]) -> Response | BaseException:
    try:
        return await coro
    except BaseException as exc:
        return exc


@dataclass(frozen=True)
class Scenario:
    """One example: the server's settings and read sizes, its moves, and how it ends."""

    moves: list[Move]
    #: Answer whatever is still unanswered at the end, on every live connection.
    finish_politely: bool
    peer_settings: dict[int, int] | None
    #: Split the server's bytes into reads of at most this many bytes.
    max_read_size: int | None


SCENARIOS = st.builds(
    Scenario,
    moves=st.lists(MOVES, max_size=12),
    finish_politely=st.booleans(),
    peer_settings=st.sampled_from(
        [
            None,
            {SettingCodes.MAX_CONCURRENT_STREAMS: 1},
            {SettingCodes.MAX_CONCURRENT_STREAMS: 2, SettingCodes.INITIAL_WINDOW_SIZE: 1000},
        ]
    ),
    max_read_size=st.none() | st.integers(1, 64),
)


async def run_scenario(scenario: Scenario) -> None:
    loop = asyncio.get_running_loop()
    observed = Observed()
    loop.set_exception_handler(lambda _, context: observed.loop_errors.append(context))
    handler = _Collect(observed.log_records)
    logger = logging.getLogger("h2pool")
    logger.addHandler(handler)
    try:
        await _check_scenario(scenario, observed)
    finally:
        logger.removeHandler(handler)


async def _check_scenario(scenario: Scenario, observed: Observed) -> None:
    server = MockServer(settings=scenario.peer_settings, max_read_size=scenario.max_read_size)
    pool = Pool(connector=server.connector, **POOL_OPTIONS)
    baseline = asyncio.all_tasks()
    tasks = [asyncio.create_task(_outcome(coro)) for coro in _requests(pool)]
    first = await server.next_peer()
    await first.wait_for(lambda: bool(first.requests))
    await idle()
    for number, move in enumerate(scenario.moves):
        if move.kind == "request":
            tasks.append(asyncio.create_task(_outcome(pool.request("GET", f"{ORIGIN}/later/{number}"))))
        else:
            play_move(server.peers[-1], move)
        await idle(move.args[0] if move.kind == "idle" else 3)
    if scenario.finish_politely:
        # Replays and any request still unanswered get a quick, valid answer.
        server.handler = _answer
        for peer in server.peers:
            if peer.connected:
                peer.resume_client_writing()
                with contextlib.suppress(*PEER_REFUSALS):
                    peer.auto_respond(_answer)
    try:
        async with asyncio.timeout(HANG_BOUND):
            results = await asyncio.gather(*tasks)
    except TimeoutError:
        raise AssertionError(f"a request hung: {[task for task in tasks if not task.done()]}") from None
    for result in results:
        event(f"request outcome: {type(result).__name__}")
        assert isinstance(result, Response | H2PoolError), f"{type(result).__name__}: {result!r}"
    await idle()
    stats = pool.stats()
    assert (stats.streams_open, stats.slots_reserved, stats.waiting) == (0, 0, 0), stats
    server.assert_slots_consistent()
    await pool.aclose()
    await idle()
    leftover = asyncio.all_tasks() - baseline
    assert not leftover, f"tasks outlived the pool: {leftover}"
    del tasks, results
    gc.collect()
    assert observed.loop_errors == [], observed.loop_errors
    assert observed.log_records == [], [record.getMessage() for record in observed.log_records]


@FUZZ_SETTINGS
@given(scenario=SCENARIOS)
def test_any_server_behaviour_ends_every_request_with_a_response_or_an_h2pool_error(scenario: Scenario) -> None:
    asyncio.run(run_scenario(scenario))


# HPACK: the caching coders against plain ones.


_HPACK_NAMES = st.one_of(
    st.sampled_from([b":status", b"content-type", b"server", b"date", b"authorization", b"x-long"]),
    st.binary(min_size=1, max_size=10),
)
_HPACK_VALUES = st.one_of(
    st.sampled_from([b"200", b"text/html", b"nginx", b""]),
    st.binary(max_size=30),
    # Larger than small tables: added entries evict everything, or do not fit at all.
    st.binary(min_size=200, max_size=300),
)


@st.composite
def header_lists(draw: st.DrawFn) -> list[list[HeaderTuple]]:
    """A few header lists over a few shared fields, each use marked never-indexed or not.

    Sharing fields makes the same name and value appear both indexable and
    never-indexed (RFC 7541 §7.1.3) in one coder's lifetime.
    """
    fields = draw(st.lists(st.tuples(_HPACK_NAMES, _HPACK_VALUES), min_size=1, max_size=6))
    uses = st.tuples(st.integers(0, len(fields) - 1), st.integers(0, 4).map(lambda n: n == 0))
    lists = draw(st.lists(st.lists(uses, max_size=6), min_size=1, max_size=5))
    return [
        [NeverIndexedHeaderTuple(*fields[i]) if never else HeaderTuple(*fields[i]) for i, never in header_list]
        for header_list in lists
    ]


@dataclass(frozen=True)
class HpackStep:
    """Encode ``pool[index]``, or (if ``table_size`` is set) resize the encoders' tables first."""

    index: int
    huffman: bool
    table_size: int | None


TABLE_SIZES = st.none() | st.sampled_from([0, 32, 64, 256, 4096]) | st.integers(0, 8192)
HPACK_STEPS = st.lists(
    st.builds(HpackStep, st.integers(0, 4), st.booleans(), TABLE_SIZES),
    min_size=1,
    max_size=40,
)


def _as_plain(headers: list[HeaderTuple]) -> list[tuple[bytes, bytes]]:
    return [(bytes(name), bytes(value)) for name, value in headers]


def _sensitive(headers: list[HeaderTuple]) -> list[bool]:
    return [isinstance(field_, NeverIndexedHeaderTuple) for field_ in headers]


@FUZZ_SETTINGS
@given(lists=header_lists(), steps=HPACK_STEPS)
# A field sent plain in a block that left the table as it was (here a table of
# size 0), then sent never-indexed: a cache keyed on the tuple alone reused the
# plain block and dropped the mark.
@example(
    lists=[[HeaderTuple(b"authorization", b"secret")], [NeverIndexedHeaderTuple(b"authorization", b"secret")]],
    steps=[HpackStep(0, False, 0), HpackStep(0, False, None), HpackStep(1, False, None)],
)
def test_caching_hpack_coders_agree_with_plain_coders_over_stateful_sequences(
    lists: list[list[HeaderTuple]], steps: list[HpackStep]
) -> None:
    plain_encoder, caching_encoder = Encoder(), CachingEncoder()
    plain_decoder, caching_decoder = Decoder(), CachingDecoder(max_header_list_size=1 << 20)
    # Decodes what the caching encoder sends.
    peer_decoder = CachingDecoder(max_header_list_size=1 << 20)
    for decoder in (plain_decoder, caching_decoder, peer_decoder):
        decoder.max_allowed_table_size = 8192
        decoder.max_header_list_size = 1 << 20
    for step in steps:
        if step.table_size is not None:
            plain_encoder.header_table_size = step.table_size
            caching_encoder.header_table_size = step.table_size
        headers = lists[step.index % len(lists)]
        plain_block = plain_encoder.encode(headers, huffman=step.huffman)
        cached_block = caching_encoder.encode(headers, huffman=step.huffman)
        expected = _as_plain(headers)

        plain_result = list(plain_decoder.decode(plain_block, raw=True))
        cached_result = list(caching_decoder.decode(plain_block, raw=True))
        assert _as_plain(plain_result) == expected
        # The same bytes on the same table: identical, down to never-indexed marks.
        assert _as_plain(cached_result) == expected
        assert _sensitive(cached_result) == _sensitive(plain_result)

        via_cache = list(peer_decoder.decode(cached_block, raw=True))
        assert _as_plain(via_cache) == expected
        # A field the plain encoder marks never-indexed must stay marked.
        assert all(
            cached or not plain for cached, plain in zip(_sensitive(via_cache), _sensitive(plain_result), strict=True)
        )
        # Both tables stay in step with their decoders.
        assert list(caching_encoder.header_table.dynamic_entries) == list(peer_decoder.header_table.dynamic_entries)
        assert list(plain_encoder.header_table.dynamic_entries) == list(plain_decoder.header_table.dynamic_entries)
        assert list(caching_decoder.header_table.dynamic_entries) == list(plain_decoder.header_table.dynamic_entries)
