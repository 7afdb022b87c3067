"""Microbenchmarks of the per-request hot paths, with no sockets.

Run with ``make bench-micro`` (pytest-benchmark). This directory is outside
``testpaths``, so the main ``pytest`` run does not collect it. Each
benchmark also asserts that the work it times really happened.

A response is replayed into a fresh connection per round: bytes recorded
once from h2's own server-side state machine, with the header fields nginx
sends for a static file.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import h2.config
import h2.connection
import pytest

from h2pool.config import PoolConfig
from h2pool.connection import Connection
from h2pool.exceptions import H2PoolError
from h2pool.headers import parse_response_head, request_headers
from h2pool.origin import Origin
from h2pool.slots import OriginSlots, SlotLedger
from h2pool.stream import StreamState

ORIGIN = Origin("http", "127.0.0.1", 8080)
PATH = "/small"
BODY = bytes(100)
RESPONSE_FIELDS = [
    (b":status", b"200"),
    (b"server", b"nginx"),
    (b"date", b"Fri, 27 Nov 2026 08:00:00 GMT"),
    (b"content-type", b"application/octet-stream"),
    (b"content-length", b"100"),
    (b"last-modified", b"Fri, 27 Nov 2026 07:55:00 GMT"),
    (b"etag", b'"6566e1a4-64"'),
    (b"accept-ranges", b"bytes"),
]
ROUNDS = 2_000


class NullTransport(asyncio.Transport):
    """Takes writes and keeps them only if asked to (for recording)."""

    def __init__(self, keep: bool = False) -> None:
        super().__init__()
        self.keep = keep
        self.written = bytearray()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.keep:
            self.written += data

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class QuietListener:
    """A pool that ignores everything a connection tells it."""

    def on_settled(self, conn: Connection, peer_limit: int) -> None:
        pass

    def on_capacity(self, conn: Connection) -> None:
        pass

    def on_draining(self, conn: Connection) -> None:
        pass

    def on_closed(self, conn: Connection) -> None:
        pass

    def on_stream_error(self, conn: Connection, error: H2PoolError) -> None:
        pass


@dataclass(frozen=True)
class Recording:
    """What a server sends: its preface (SETTINGS, ACK) and then the response to stream 1."""

    preface: bytes
    response: bytes


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    try:
        yield loop
    finally:
        loop.close()


def new_connection(loop: asyncio.AbstractEventLoop, transport: NullTransport) -> Connection:
    """A connection that has sent its preface, made inside ``loop`` (it needs a running loop)."""

    async def make() -> Connection:
        conn = Connection(ORIGIN, PoolConfig(), QuietListener(), 100)
        conn.connection_made(transport)
        return conn

    return loop.run_until_complete(make())


def open_request(loop: asyncio.AbstractEventLoop, conn: Connection) -> StreamState:
    """Reserve a slot and send a GET, letting the loop flush it."""

    async def send() -> StreamState:
        conn.slots.reserve()
        stream = await conn.open_stream(request_headers("GET", ORIGIN, PATH, None), True, 1.0)
        await asyncio.sleep(0)
        return stream

    return loop.run_until_complete(send())


@pytest.fixture(scope="module")
def recording(loop: asyncio.AbstractEventLoop) -> Recording:
    transport = NullTransport(keep=True)
    conn = new_connection(loop, transport)
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
    server.initiate_connection()
    server.receive_data(bytes(transport.written))
    preface = server.data_to_send()
    transport.written.clear()
    conn.data_received(preface)
    open_request(loop, conn)
    server.receive_data(bytes(transport.written))
    server.send_headers(1, RESPONSE_FIELDS)
    server.send_data(1, BODY, end_stream=True)
    return Recording(preface, server.data_to_send())


# Slots.


@pytest.mark.parametrize(
    "peer_limit",
    [
        pytest.param(256, id="room-left"),
        # The connection fills up and is refiled as free again: the costlier path.
        pytest.param(1, id="last-free-slot"),
    ],
)
def test_origin_slot_reserve_and_release(benchmark: Any, peer_limit: int) -> None:
    slots: OriginSlots[str] = OriginSlots(max_connections=10)
    slots.add("conn", SlotLedger(local_cap=1000))
    slots.settle("conn", peer_limit)
    ledgers = slots.ledgers

    def reserve_and_release() -> None:
        conn = slots.reserve()
        assert conn is not None
        ledgers[conn].unreserve()
        slots.refresh(conn)

    benchmark(reserve_and_release)
    assert ledgers["conn"].busy == 0


def test_slot_ledger_stream_lifecycle(benchmark: Any) -> None:
    ledger = SlotLedger(local_cap=1000, peer_limit=256)

    def reserve_open_close() -> None:
        ledger.reserve()
        ledger.opened()
        ledger.closed()

    benchmark(reserve_open_close)
    assert ledger.busy == 0


# Request headers.


def test_request_headers_plain_get(benchmark: Any) -> None:
    block = benchmark(request_headers, "GET", ORIGIN, PATH, None)
    assert block[0] == (b":method", b"GET")


def test_request_headers_with_three_fields(benchmark: Any) -> None:
    fields = {"accept": "application/json", "user-agent": "bench/1.0", "x-request-id": "0123456789abcdef"}
    block = benchmark(request_headers, "GET", ORIGIN, PATH, fields)
    assert len(block) == 7


# h2 encoding.


def test_h2_encode_request(benchmark: Any, loop: asyncio.AbstractEventLoop, recording: Recording) -> None:
    """``send_headers`` + ``data_to_send`` on a set-up connection, as the pool builds it."""
    conn = new_connection(loop, NullTransport())
    conn.data_received(recording.preface)
    h2conn = conn._h2
    h2conn.data_to_send()
    block = request_headers("GET", ORIGIN, PATH, None)
    sent: list[int] = []

    def encode() -> None:
        stream_id = h2conn.get_next_available_stream_id()
        h2conn.send_headers(stream_id, block, end_stream=True)
        sent.append(len(h2conn.data_to_send()))
        # Keep h2's stream table as a warm connection's: done streams are dropped.
        del h2conn.streams[stream_id]

    benchmark(encode)
    assert sent and min(sent) > 0


# Event dispatch.


def test_dispatch_first_response_of_connection(
    benchmark: Any, loop: asyncio.AbstractEventLoop, recording: Recording
) -> None:
    """``data_received`` of HEADERS + 100-byte DATA + END_STREAM on a new connection (cold HPACK, no caches)."""
    streams: list[StreamState] = []

    def fresh_stream() -> tuple[tuple[Connection], dict[str, Any]]:
        conn = new_connection(loop, NullTransport())
        conn.data_received(recording.preface)
        streams.append(open_request(loop, conn))
        return (conn,), {}

    def dispatch(conn: Connection) -> None:
        conn.data_received(recording.response)

    benchmark.pedantic(dispatch, setup=fresh_stream, rounds=ROUNDS, warmup_rounds=50)
    stream = streams[-1]
    assert stream.head is not None and stream.head.status == 200
    assert stream.remote_closed and stream.buffered == len(BODY)


def test_dispatch_response_on_warm_connection(benchmark: Any, loop: asyncio.AbstractEventLoop) -> None:
    """The same, on a connection that has had the same response before: the steady state."""
    transport = NullTransport(keep=True)
    conn = new_connection(loop, transport)
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
    server.initiate_connection()
    streams: list[StreamState] = []

    def exchange_with_server() -> None:
        server.receive_data(bytes(transport.written))
        transport.written.clear()
        conn.data_received(server.data_to_send())

    def next_response() -> tuple[tuple[bytes], dict[str, Any]]:
        exchange_with_server()
        stream = open_request(loop, conn)
        streams.append(stream)
        server.receive_data(bytes(transport.written))
        transport.written.clear()
        server.send_headers(stream.stream_id, RESPONSE_FIELDS)
        server.send_data(stream.stream_id, BODY, end_stream=True)
        return (server.data_to_send(),), {}

    def dispatch(response: bytes) -> None:
        conn.data_received(response)

    benchmark.pedantic(dispatch, setup=next_response, rounds=ROUNDS, warmup_rounds=50)
    stream = streams[-1]
    assert stream.head is not None and stream.head.status == 200
    assert stream.remote_closed and stream.buffered == len(BODY)


# Response head.


def test_parse_response_head(benchmark: Any) -> None:
    """The fields as h2 hands them over (bytes, header_encoding=None) into status and Headers."""
    head = benchmark(parse_response_head, RESPONSE_FIELDS, origin=str(ORIGIN), stream_id=1)
    assert head.status == 200 and head.headers["content-length"] == "100"
