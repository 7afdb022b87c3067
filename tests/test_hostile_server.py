"""Hostile servers over real TLS sockets: every misbehaviour gives a typed error, then the pool carries on.

Each test runs one scripted misbehaviour of :class:`tests.hostile.HostileServer`
(HTTP/2 written frame by frame) and checks four things: the affected request
gets its typed h2pool error, or is replayed transparently when the server
never processed it; nothing waits longer than a small multiple of the pool's
timeouts; no stream or reserved slot is left behind; and the same pool still
serves a request to a well-behaved real server (nghttpd).

Covered elsewhere, not repeated here: an untrusted certificate (TLSError) and
a server without h2 in ALPN (ALPNError) in ``tests/test_integration_tls.py``.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from h2.errors import ErrorCodes
from hyperframe.frame import DataFrame, HeadersFrame, PingFrame, PushPromiseFrame, RstStreamFrame, SettingsFrame

from h2pool import (
    ALPNError,
    ConnectionLost,
    Pool,
    ProtocolError,
    ReadTimeout,
    StreamReset,
    TLSError,
)
from h2pool.connection import Connection
from h2pool.origin import parse_origin
from tests.hostile import FRAME_DATA, HostileServer, Peer, Request, raw_frame, serve_ok, window_update
from tests.servers import Certs, ServerProcess, expected_bytes

pytestmark = pytest.mark.timeout(30)

#: Small timeouts so every failure path is exercised in well under a second.
FAST: dict[str, Any] = {
    "connect_timeout": 2.0,
    "tls_handshake_timeout": 2.0,
    "acquire_timeout": 2.0,
    "read_timeout": 0.5,
    "write_timeout": 0.5,
    "ping_timeout": 0.3,
    "retry_backoff": 0.01,
    "retry_backoff_max": 0.05,
}

#: Bounds a whole test: only catches hangs, far above what any test needs.
BOUND = 10.0

BIG_HEADER = 70_000  # over the default max_header_list_size of 64 KiB


@asynccontextmanager
async def scene(
    certs: Certs, client_ssl_context: ssl.SSLContext, *scripts: Any, rcvbuf: int | None = None, **options: Any
) -> AsyncIterator[tuple[HostileServer, Pool]]:
    """A hostile server running ``scripts`` and a pool with the FAST timeouts (overridden by ``options``)."""
    async with (
        asyncio.timeout(BOUND),
        HostileServer(certs.server_ssl_context(), *scripts, rcvbuf=rcvbuf) as server,
        Pool(client_ssl_context, **{**FAST, **options}) as pool,
    ):
        yield server, pool


def assert_no_streams_or_reservations(pool: Pool) -> None:
    stats = pool.stats()
    assert (stats.streams_open, stats.slots_reserved, stats.waiting) == (0, 0, 0), stats


async def assert_pool_still_serves(pool: Pool, nghttpd: ServerProcess) -> None:
    """Nothing leaked, and the same pool still talks to a well-behaved server."""
    assert_no_streams_or_reservations(pool)
    response = await pool.request("GET", nghttpd.url("/small"))
    assert response.status == 200
    assert response.content == expected_bytes("small")
    assert_no_streams_or_reservations(pool)


def connections_of(pool: Pool, origin: str) -> list[Connection]:
    # Test-only peek at the pool's connections: the write-buffer size and the
    # PING round trip are properties of the socket, not of any request.
    state = pool._origins.get(parse_origin(origin))
    return list(state.slots.ledgers) if state is not None else []


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    # Polling on purpose: some predicates sample state nothing signals (a write buffer's size).
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.005)


def elapsed_since(start: float) -> float:
    return asyncio.get_running_loop().time() - start


# Header blocks.


async def test_response_header_list_over_max_header_list_size_raises_protocol_error(
    certs: Certs, client_ssl_context: ssl.SSLContext, nghttpd: ServerProcess
) -> None:
    async def script(peer: Peer) -> None:
        peer.send_preface()
        request = await peer.next_request()
        # One value of 70 kB: a HEADERS frame and four CONTINUATIONs.
        peer.send_headers(request.stream_id, [(":status", "200"), ("x-big", "a" * BIG_HEADER)], end_stream=True)

    async with scene(certs, client_ssl_context, script) as (server, pool):
        with pytest.raises(ProtocolError) as caught:
            await pool.request("GET", server.url("/"))
        assert caught.value.origin == server.origin
        peer = server.peers[0]
        await peer.wait_for(lambda: bool(peer.goaways))
        assert peer.goaways[0][0] != ErrorCodes.NO_ERROR
        await assert_pool_still_serves(pool, nghttpd)


async def test_continuation_flood_is_cut_off_with_protocol_error(
    certs: Certs, client_ssl_context: ssl.SSLContext, nghttpd: ServerProcess
) -> None:
    flood = 20_000  # 1 KiB each: 20 MiB of one never-ending header block
    sent = 0

    async def script(peer: Peer) -> None:
        nonlocal sent
        peer.send_preface()
        request = await peer.next_request()
        peer.send(HeadersFrame(request.stream_id, peer.header_block([(":status", "200")])))
        continuation = raw_frame(0x9, 0, request.stream_id, b"\x00" * 1024)
        while sent < flood and not peer.closed.is_set():
            peer.send(continuation * 100)
            sent += 100
            if not await peer.drain():
                break

    async with scene(certs, client_ssl_context, script) as (server, pool):
        with pytest.raises(ProtocolError):
            await pool.request("GET", server.url("/"))
        peer = server.peers[0]
        await peer.wait_closed()
        assert peer.goaways and peer.goaways[0][0] == ErrorCodes.PROTOCOL_ERROR
        # The client gave up after a bounded backlog; only socket buffers
        # account for what the server wrote beyond it.
        assert sent < flood
        await assert_pool_still_serves(pool, nghttpd)


# Flow control and frame size.


async def test_data_beyond_the_advertised_stream_window_is_a_flow_control_error(
    certs: Certs, client_ssl_context: ssl.SSLContext, nghttpd: ServerProcess
) -> None:
    window = 16_384

    async def script(peer: Peer) -> None:
        peer.send_preface()
        request = await peer.next_request()
        peer.send_headers(request.stream_id, [(":status", "200")])
        peer.send(DataFrame(request.stream_id, b"x" * window), DataFrame(request.stream_id, b"y"))

    async with scene(certs, client_ssl_context, script, initial_stream_window=window) as (server, pool):
        with pytest.raises(ProtocolError) as caught:
            async with pool.stream("GET", server.url("/")) as response:
                # Reading would hand window back: only read once the client has
                # seen the whole overrun, to make it one byte beyond what it allowed.
                peer = server.peers[0]
                await peer.wait_for(lambda: bool(peer.goaways))
                await response.aread()
        assert "flow control" in str(caught.value).lower()
        peer = server.peers[0]
        await peer.wait_for(lambda: bool(peer.goaways))
        assert peer.goaways[0][0] == ErrorCodes.FLOW_CONTROL_ERROR
        await assert_pool_still_serves(pool, nghttpd)


@pytest.mark.parametrize(
    ("on_stream", "increment", "code"),
    [
        (False, 2**31 - 1, ErrorCodes.FLOW_CONTROL_ERROR),
        (True, 2**31 - 1, ErrorCodes.FLOW_CONTROL_ERROR),
        (False, 0, ErrorCodes.PROTOCOL_ERROR),
    ],
    ids=["connection-overflow", "stream-overflow", "zero-increment"],
)
async def test_invalid_window_update_raises_protocol_error(
    certs: Certs,
    client_ssl_context: ssl.SSLContext,
    nghttpd: ServerProcess,
    on_stream: bool,
    increment: int,
    code: ErrorCodes,
) -> None:
    async def script(peer: Peer) -> None:
        peer.send_preface()
        request = await peer.next_request()
        peer.send(window_update(request.stream_id if on_stream else 0, increment))

    async with scene(certs, client_ssl_context, script) as (server, pool):
        started = asyncio.get_running_loop().time()
        with pytest.raises(ProtocolError):
            await pool.request("GET", server.url("/"))
        # A typed error at once, not a read timeout.
        assert elapsed_since(started) < FAST["read_timeout"]
        peer = server.peers[0]
        await peer.wait_for(lambda: bool(peer.goaways or peer.resets))
        sent_codes = [c for c, _ in peer.goaways] + [c for _, c in peer.resets]
        assert sent_codes[0] == code
        await assert_pool_still_serves(pool, nghttpd)


async def test_frame_larger_than_our_max_frame_size_is_a_frame_size_error(
    certs: Certs, client_ssl_context: ssl.SSLContext, nghttpd: ServerProcess
) -> None:
    async def script(peer: Peer) -> None:
        peer.send_preface()
        request = await peer.next_request()
        peer.send_headers(request.stream_id, [(":status", "200")])
        # Within the stream window, one byte over our SETTINGS_MAX_FRAME_SIZE.
        peer.send(DataFrame(request.stream_id, b"x" * 16_385, flags=["END_STREAM"]))

    async with scene(certs, client_ssl_context, script) as (server, pool):
        with pytest.raises(ProtocolError):
            await pool.request("GET", server.url("/"))
        peer = server.peers[0]
        await peer.wait_for(lambda: bool(peer.goaways))
        assert peer.goaways[0][0] == ErrorCodes.FRAME_SIZE_ERROR
        await assert_pool_still_serves(pool, nghttpd)


async def test_oversized_frame_header_fails_at_once_without_waiting_for_its_payload(
    certs: Certs, client_ssl_context: ssl.SSLContext, nghttpd: ServerProcess
) -> None:
    # The header announces 16 MiB; only a few bytes follow. The length alone
    # breaks our SETTINGS_MAX_FRAME_SIZE: waiting for (and buffering) the
    # payload only hands the server a way to hold the stream or our memory.
    async def script(peer: Peer) -> None:
        peer.send_preface()
        request = await peer.next_request()
        peer.send_headers(request.stream_id, [(":status", "200")])
        peer.send(raw_frame(FRAME_DATA, 0, request.stream_id, b"x" * 100, length=2**24 - 1))

    async with scene(certs, client_ssl_context, script, read_timeout=3.0) as (server, pool):
        started = asyncio.get_running_loop().time()
        with pytest.raises(ProtocolError):
            await pool.request("GET", server.url("/"))
        assert elapsed_since(started) < 1.0
        await assert_pool_still_serves(pool, nghttpd)


# Floods.


def _flood_frame(kind: str) -> bytes:
    if kind == "ping":
        return PingFrame(0, b"floodfld").serialize()
    return SettingsFrame(0, settings={0x4: 65_535}).serialize()


@pytest.mark.parametrize("kind", ["ping", "settings"])
async def test_control_frame_flood_is_answered_without_our_write_buffer_growing(
    certs: Certs, client_ssl_context: ssl.SSLContext, nghttpd: ServerProcess, kind: str
) -> None:
    flood = 20_000
    batch = 500
    frame = _flood_frame(kind)

    async def script(peer: Peer) -> None:
        peer.send_preface()
        first = await peer.next_request()
        peer.respond(first.stream_id, b"first")
        for _ in range(flood // batch):
            peer.send(frame * batch)
            if not await peer.drain():
                return
        await serve_ok(peer)

    async with scene(certs, client_ssl_context, script) as (server, pool):
        assert (await pool.request("GET", server.url("/first"))).content == b"first"
        (conn,) = connections_of(pool, server.origin)
        transport = conn.transport
        assert transport is not None
        peer = server.peers[0]
        biggest = 0

        def answered_or_closed() -> bool:
            nonlocal biggest
            biggest = max(biggest, transport.get_write_buffer_size())
            return (peer.ping_acks if kind == "ping" else peer.settings_acks) >= flood or peer.closed.is_set()

        await wait_until(answered_or_closed, timeout=8.0)
        # Either every frame was answered on a live connection or the
        # connection was closed; a growing backlog of answers is neither.
        if not peer.closed.is_set():
            response = await pool.request("GET", server.url("/after"))
            assert response.content == b"ok /after"
            assert response.headers["x-connection"] == "0"
        assert biggest < 1 << 20
        await assert_pool_still_serves(pool, nghttpd)


async def test_ping_flood_from_a_server_that_never_reads_ends_with_a_bounded_buffer(
    certs: Certs, client_ssl_context: ssl.SSLContext, nghttpd: ServerProcess
) -> None:
    frame = _flood_frame("ping")
    flood_limit = 2_000_000  # 34 MB: a safety stop the client must end long before
    sent = 0

    async def script(peer: Peer) -> None:
        nonlocal sent
        peer.send_preface()
        await peer.next_request()
        peer.stop_reading()
        while sent < flood_limit:
            peer.send(frame * 1000)
            sent += 1000
            if not await peer.drain():
                return

    # Long timeouts: only the flood guard (or, failing it, write_timeout) may end this.
    write_timeout = 10.0
    options: dict[str, Any] = {"read_timeout": 20.0, "ping_timeout": 20.0, "write_timeout": write_timeout}
    async with scene(certs, client_ssl_context, script, rcvbuf=4096, **options) as (server, pool):
        loop = asyncio.get_running_loop()
        request = asyncio.create_task(pool.request("GET", server.url("/")))
        await wait_until(lambda: bool(server.attempts))
        (conn,) = connections_of(pool, server.origin)
        transport = conn.transport
        assert transport is not None
        biggest = 0
        started = loop.time()
        while not request.done() and loop.time() - started < 8.0:
            biggest = max(biggest, transport.get_write_buffer_size())
            await asyncio.sleep(0.002)
        with pytest.raises(ProtocolError, match="floods"):
            await request
        assert loop.time() - started < write_timeout
        assert sent < flood_limit
        # The kernel's socket buffers take the first few MB of answers; after
        # that, what we hold must stay near the transport's high-water mark
        # (512 KiB under TLS) however long write_timeout is, not grow with
        # the flood until write_timeout fires.
        assert biggest < 1 << 20, f"{biggest} bytes of answers buffered for a server that does not read"
        assert_no_streams_or_reservations(pool)
        await assert_pool_still_serves(pool, nghttpd)


# Frames the client never asked for.


async def test_push_promise_despite_enable_push_0_is_a_protocol_error(
    certs: Certs, client_ssl_context: ssl.SSLContext, nghttpd: ServerProcess
) -> None:
    async def script(peer: Peer) -> None:
        peer.send_preface()
        request = await peer.next_request()
        block = peer.header_block([(":method", "GET"), (":scheme", "https"), (":authority", "x"), (":path", "/p")])
        peer.send(PushPromiseFrame(request.stream_id, promised_stream_id=2, data=block, flags=["END_HEADERS"]))
        peer.respond(request.stream_id, b"pushed")

    async with scene(certs, client_ssl_context, script) as (server, pool):
        with pytest.raises(ProtocolError):
            await pool.request("GET", server.url("/"))
        await assert_pool_still_serves(pool, nghttpd)


def _data_on_idle_stream(peer: Peer, request: Request) -> bytes:
    return DataFrame(request.stream_id + 4, b"stray", flags=["END_STREAM"]).serialize()


def _headers_on_unpromised_stream(peer: Peer, request: Request) -> bytes:
    block = peer.header_block([(":status", "200")])
    return HeadersFrame(2, block, flags=["END_HEADERS", "END_STREAM"]).serialize()


def _reset_of_idle_stream(peer: Peer, request: Request) -> bytes:
    return RstStreamFrame(request.stream_id + 6, error_code=ErrorCodes.CANCEL).serialize()


def _window_update_of_idle_stream(peer: Peer, request: Request) -> bytes:
    return window_update(request.stream_id + 8, 1024)


@pytest.mark.parametrize(
    "stray",
    [_data_on_idle_stream, _headers_on_unpromised_stream, _reset_of_idle_stream, _window_update_of_idle_stream],
    ids=["DATA", "HEADERS-even", "RST_STREAM", "WINDOW_UPDATE"],
)
async def test_frame_on_a_stream_we_never_opened_is_a_protocol_error(
    certs: Certs, client_ssl_context: ssl.SSLContext, nghttpd: ServerProcess, stray: Callable[[Peer, Request], bytes]
) -> None:
    # RFC 9113 §5.1: on an idle stream only HEADERS and PRIORITY may arrive,
    # and a server never opens an odd stream nor an unpromised even one.
    async def script(peer: Peer) -> None:
        peer.send_preface()
        request = await peer.next_request()
        peer.send(stray(peer, request))
        # Had the client ignored the stray frame, this would succeed.
        peer.respond(request.stream_id, b"ok")

    async with scene(certs, client_ssl_context, script) as (server, pool):
        with pytest.raises(ProtocolError):
            await pool.request("GET", server.url("/"))
        await assert_pool_still_serves(pool, nghttpd)


# Malformed responses: a stream error, not a connection error.


@pytest.mark.parametrize(
    "head",
    [
        [("content-type", "text/plain")],
        [(":status", "abc")],
        [(":status", "200"), ("Content-Type", "text/plain")],
        [(":status", "200"), ("connection", "keep-alive")],
    ],
    ids=["no-status", "non-numeric-status", "uppercase-name", "connection-specific"],
)
async def test_malformed_response_fails_only_its_own_stream(
    certs: Certs, client_ssl_context: ssl.SSLContext, nghttpd: ServerProcess, head: list[tuple[str, str]]
) -> None:
    async def script(peer: Peer) -> None:
        peer.send_preface()
        requests = {r.path: r for r in [await peer.next_request(), await peer.next_request()]}
        bad, good = requests["/bad"], requests["/good"]
        peer.send_headers(bad.stream_id, head)
        await peer.wait_for(lambda: any(stream == bad.stream_id for stream, _ in peer.resets))
        peer.respond(good.stream_id, b"fine")

    async with scene(certs, client_ssl_context, script) as (server, pool):
        bad, good = await asyncio.gather(
            pool.request("GET", server.url("/bad")), pool.request("GET", server.url("/good")), return_exceptions=True
        )
        assert isinstance(bad, ProtocolError), repr(bad)
        assert not isinstance(good, BaseException), repr(good)
        assert good.content == b"fine"
        peer = server.peers[0]
        assert (bad.stream_id, ErrorCodes.PROTOCOL_ERROR) in peer.resets
        assert len(server.peers) == 1
        await assert_pool_still_serves(pool, nghttpd)


# Connection start and silence.


async def test_server_preface_that_is_not_settings_is_a_protocol_error(
    certs: Certs, client_ssl_context: ssl.SSLContext, nghttpd: ServerProcess
) -> None:
    async def script(peer: Peer) -> None:
        # RFC 9113 §3.4: the server's first frame MUST be SETTINGS.
        peer.send(PingFrame(0, b"notfirst"))
        peer.send_preface()
        request = await peer.next_request()
        peer.respond(request.stream_id, b"ok")

    async with scene(certs, client_ssl_context, script) as (server, pool):
        with pytest.raises(ProtocolError):
            await pool.request("GET", server.url("/"))
        await assert_pool_still_serves(pool, nghttpd)


async def test_server_silent_after_tls_gives_read_timeout_and_the_connection_is_closed(
    certs: Certs, client_ssl_context: ssl.SSLContext, nghttpd: ServerProcess
) -> None:
    async def script(peer: Peer) -> None:
        peer.answer_pings = False  # and it sends nothing at all

    async with scene(certs, client_ssl_context, script) as (server, pool):
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(ReadTimeout):
            await pool.request("GET", server.url("/"))
        assert FAST["read_timeout"] * 0.9 <= elapsed_since(started) < FAST["read_timeout"] + 1.0
        # The read timeout sent a health PING; unanswered, it closes the connection.
        peer = server.peers[0]
        await peer.wait_closed(timeout=FAST["ping_timeout"] + 1.0)
        assert peer.pings_received >= 1
        assert pool.stats().connections == 0
        await assert_pool_still_serves(pool, nghttpd)


async def test_stall_mid_body_gives_read_timeout_and_an_answered_health_ping_keeps_the_connection(
    certs: Certs, client_ssl_context: ssl.SSLContext, nghttpd: ServerProcess
) -> None:
    async def script(peer: Peer) -> None:
        peer.send_preface()
        stalled = await peer.next_request()
        peer.send_headers(stalled.stream_id, [(":status", "200")])
        peer.send_data(stalled.stream_id, b"x" * 100)
        await serve_ok(peer)

    async with scene(certs, client_ssl_context, script) as (server, pool):
        started = asyncio.get_running_loop().time()
        with pytest.raises(ReadTimeout) as caught:
            await pool.request("GET", server.url("/stall"))
        assert elapsed_since(started) < FAST["read_timeout"] + 1.0
        assert caught.value.stream_id == 1
        (conn,) = connections_of(pool, server.origin)
        # The health PING was sent and answered: the connection is trusted again.
        await wait_until(lambda: conn.ping_rtt is not None, timeout=FAST["ping_timeout"] + 1.0)
        peer = server.peers[0]
        assert peer.pings_received == 1
        assert (1, ErrorCodes.CANCEL) in peer.resets
        response = await pool.request("GET", server.url("/next"))
        assert response.content == b"ok /next"
        assert response.headers["x-connection"] == "0"
        assert len(server.peers) == 1
        await assert_pool_still_serves(pool, nghttpd)


async def test_close_mid_body_gives_connection_lost_that_may_have_been_processed(
    certs: Certs, client_ssl_context: ssl.SSLContext, nghttpd: ServerProcess
) -> None:
    async def script(peer: Peer) -> None:
        peer.send_preface()
        request = await peer.next_request()
        peer.send_headers(request.stream_id, [(":status", "200")])
        peer.send_data(request.stream_id, b"x" * 100)
        await peer.drain()
        peer.close()

    async with scene(certs, client_ssl_context, script) as (server, pool):
        with pytest.raises(ConnectionLost) as caught:
            await pool.request("GET", server.url("/"))
        assert caught.value.may_have_been_processed is True
        assert len(server.attempts) == 1
        await assert_pool_still_serves(pool, nghttpd)


async def test_unanswered_keepalive_ping_closes_the_connection_and_the_next_request_dials_anew(
    certs: Certs, client_ssl_context: ssl.SSLContext, nghttpd: ServerProcess
) -> None:
    ping_interval, ping_timeout = 0.3, 0.3

    async def mute_after_first(peer: Peer) -> None:
        peer.send_preface()
        request = await peer.next_request()
        peer.answer_pings = False
        peer.respond(request.stream_id, b"first")

    options: dict[str, Any] = {"ping_interval": ping_interval, "ping_timeout": ping_timeout}
    async with scene(certs, client_ssl_context, mute_after_first, serve_ok, **options) as (server, pool):
        first = await pool.request("GET", server.url("/"))
        answered_at = asyncio.get_running_loop().time()
        assert first.content == b"first"
        peer = server.peers[0]
        await peer.wait_closed(timeout=ping_interval + ping_timeout + 1.0)
        assert ping_interval * 0.9 <= elapsed_since(answered_at) < ping_interval + ping_timeout + 0.5
        assert peer.pings_received >= 1
        second = await pool.request("GET", server.url("/again"))
        assert second.headers["x-connection"] == "1"
        assert len(server.peers) == 2
        await assert_pool_still_serves(pool, nghttpd)


async def test_certificate_for_another_host_fails_with_tls_error(
    certs: Certs, client_ssl_context: ssl.SSLContext, nghttpd: ServerProcess
) -> None:
    # Signed by the CA the client trusts, but for "other.test" only.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    certs.ca.issue_cert("other.test").configure_cert(context)
    context.set_alpn_protocols(["h2"])

    async def never_reached(peer: Peer) -> None:
        raise AssertionError("the client accepted a certificate for another host")

    async with (
        asyncio.timeout(BOUND),
        HostileServer(context, never_reached) as server,
        Pool(client_ssl_context, **FAST) as pool,
    ):
        with pytest.raises(TLSError) as caught:
            await pool.request("GET", server.url("/"))
        assert not isinstance(caught.value, ALPNError)
        assert caught.value.origin == server.origin
        assert "127.0.0.1" in str(caught.value)
        assert pool.stats().connections == 0
        await assert_pool_still_serves(pool, nghttpd)


# Replays: only what the server never processed.


async def test_goaway_below_in_flight_streams_replays_them_on_a_new_connection(
    certs: Certs, client_ssl_context: ssl.SSLContext, nghttpd: ServerProcess
) -> None:
    async def goaway_after_first(peer: Peer) -> None:
        peer.send_preface()
        requests = sorted([await peer.next_request() for _ in range(3)], key=lambda r: r.stream_id)
        peer.goaway(last_stream_id=requests[0].stream_id)
        # The stream at last_stream_id is still answered on this connection.
        peer.respond(requests[0].stream_id, b"kept")

    async with scene(certs, client_ssl_context, goaway_after_first, serve_ok) as (server, pool):
        paths = ["/a", "/b", "/c"]
        responses = await asyncio.gather(*(pool.request("GET", server.url(p)) for p in paths))
        first_conn = {r.path: r.stream_id for r in server.attempts if r.peer.index == 0}
        assert len(first_conn) == 3
        kept = min(first_conn, key=first_conn.__getitem__)
        by_path = dict(zip(paths, responses, strict=True))
        assert by_path[kept].content == b"kept"
        assert by_path[kept].headers["x-connection"] == "0"
        for path in set(paths) - {kept}:
            assert by_path[path].content == f"ok {path}".encode()
            assert by_path[path].headers["x-connection"] == "1"
        assert len(server.attempts) == 5
        assert pool.stats().origins[server.origin].replays == 2
        await assert_pool_still_serves(pool, nghttpd)


async def test_refused_stream_is_replayed_and_served_on_the_second_attempt(
    certs: Certs, client_ssl_context: ssl.SSLContext, nghttpd: ServerProcess
) -> None:
    async def refuse_once(peer: Peer) -> None:
        peer.send_preface()
        first = await peer.next_request()
        peer.reset(first.stream_id, ErrorCodes.REFUSED_STREAM)
        second = await peer.next_request()
        peer.respond(second.stream_id, b"second")

    async with scene(certs, client_ssl_context, refuse_once) as (server, pool):
        response = await pool.request("GET", server.url("/"))
        assert response.content == b"second"
        assert len(server.attempts) == 2
        assert pool.stats().origins[server.origin].replays == 1
        await assert_pool_still_serves(pool, nghttpd)


async def test_refused_stream_forever_raises_stream_reset_after_max_retries_plus_one_attempts(
    certs: Certs, client_ssl_context: ssl.SSLContext, nghttpd: ServerProcess
) -> None:
    max_retries = 2

    async def refuse_all(peer: Peer) -> None:
        peer.send_preface()
        while True:
            request = await peer.next_request()
            peer.reset(request.stream_id, ErrorCodes.REFUSED_STREAM)

    async with scene(certs, client_ssl_context, refuse_all, max_retries=max_retries) as (server, pool):
        with pytest.raises(StreamReset) as caught:
            await pool.request("GET", server.url("/"))
        assert caught.value.error_code == ErrorCodes.REFUSED_STREAM
        assert caught.value.may_have_been_processed is False
        assert len(server.attempts) == max_retries + 1
        assert pool.stats().origins[server.origin].replays == max_retries
        await assert_pool_still_serves(pool, nghttpd)


async def test_connection_dying_after_request_headers_were_sent_is_not_replayed(
    certs: Certs, client_ssl_context: ssl.SSLContext, nghttpd: ServerProcess
) -> None:
    async def drop_on_request(peer: Peer) -> None:
        peer.send_preface()
        await peer.next_request()
        peer.abort()

    async with scene(certs, client_ssl_context, drop_on_request, serve_ok) as (server, pool):
        with pytest.raises(ConnectionLost) as caught:
            await pool.request("GET", server.url("/"))
        assert caught.value.may_have_been_processed is True
        assert len(server.attempts) == 1
        assert pool.stats().origins[server.origin].replays == 0
        await assert_pool_still_serves(pool, nghttpd)
