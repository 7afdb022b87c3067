"""HTTP/2 behaviour of the connection and the pool, against scripted in-memory peers.

No sockets: every test plays the server with :mod:`h2pool.testing`, sends the
exact frames one behaviour needs and checks exactly what the client does.
Each test ends by checking that the slot ledgers agree with h2's own stream
counts and that the peer never had to refuse anything the client sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from h2.errors import ErrorCodes
from h2.settings import SettingCodes
from hyperframe.frame import (
    DataFrame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PushPromiseFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from h2pool import (
    AcquireTimeout,
    ALPNError,
    ConnectError,
    ConnectionLost,
    ConnectionTerminated,
    Handle,
    InvalidRequest,
    Pool,
    ProtocolError,
    ReadTimeout,
    Response,
    StreamReset,
    WriteTimeout,
)
from h2pool.testing import MockServer, PeerRequest, Reply, ScriptedPeer, idle

ORIGIN = "https://example.test"
URL = f"{ORIGIN}/"
MCS = SettingCodes.MAX_CONCURRENT_STREAMS
IWS = SettingCodes.INITIAL_WINDOW_SIZE

#: Bounds each test: far above what any of them needs, far below pytest-timeout.
TEST_BOUND = 10.0


def ok(request: PeerRequest) -> Reply:
    return Reply(body=b"ok " + (request.path or "").encode())


def echo_length(request: PeerRequest) -> Reply:
    return Reply(body=str(len(request.body)).encode())


@contextlib.asynccontextmanager
async def make_pool(server: MockServer, **options: Any) -> AsyncIterator[Pool]:
    """A pool dialling ``server``; on a clean exit, checks ledgers and peer errors while still open."""
    async with asyncio.timeout(TEST_BOUND), Pool(connector=server.connector, **options) as pool:
        yield pool
        await idle()
        server.assert_slots_consistent()
        assert server.errors == [], "a peer refused what the client sent"


async def assert_settled(server: MockServer, pool: Pool) -> None:
    """No stream or reservation left behind, ledgers equal to h2, no client error seen by peers."""
    await idle()
    server.assert_slots_consistent()
    stats = pool.stats()
    assert (stats.streams_open, stats.slots_reserved, stats.waiting) == (0, 0, 0), stats
    assert server.errors == []


async def acquire(stack: contextlib.AsyncExitStack, pool: Pool) -> Handle:
    return await stack.enter_async_context(pool.acquire(ORIGIN))


async def settled_connection(server: MockServer, pool: Pool) -> ScriptedPeer:
    """Open a connection and wait until the client applies the peer's SETTINGS."""
    async with pool.acquire(ORIGIN):
        peer = await server.next_peer()
        await peer.wait_settings_acked()
    return peer


def spawn(pool: Pool, path: str = "/", **kwargs: Any) -> asyncio.Task[Response]:
    return asyncio.get_running_loop().create_task(pool.request("GET", f"{ORIGIN}{path}", **kwargs))


# Settings exchange.


async def test_our_settings_disable_push_and_carry_the_configured_options() -> None:
    server = MockServer()
    options = {
        "initial_stream_window": 100_000,
        "max_frame_size": 32_768,
        "header_table_size": 8_192,
        "max_header_list_size": 12_345,
    }
    async with make_pool(server, **options) as pool, pool.acquire(ORIGIN):
        peer = await server.next_peer()
        await peer.wait_settings_acked()
        assert isinstance(peer.frames[0], SettingsFrame), "the preface must be followed by SETTINGS"
        settings = peer.client_settings
        assert settings[SettingCodes.ENABLE_PUSH] == 0
        assert settings[SettingCodes.INITIAL_WINDOW_SIZE] == 100_000
        assert settings[SettingCodes.MAX_FRAME_SIZE] == 32_768
        assert settings[SettingCodes.HEADER_TABLE_SIZE] == 8_192
        assert settings[SettingCodes.MAX_HEADER_LIST_SIZE] == 12_345


async def test_configured_max_frame_size_is_applied_to_received_frames() -> None:
    server = MockServer()
    async with make_pool(server, max_frame_size=32_768) as pool:
        task = spawn(pool)
        peer = await server.next_peer()
        request = await peer.next_request(complete=True)
        assert peer.h2.max_outbound_frame_size == 32_768
        peer.send_headers(request.stream_id, [(":status", "200")])
        peer.send_frame(DataFrame(request.stream_id, data=bytes(32_768), flags=["END_STREAM"]))
        assert len((await task).content) == 32_768
        await assert_settled(server, pool)


async def test_connection_window_update_raises_the_window_to_connection_window() -> None:
    server = MockServer()
    async with make_pool(server, connection_window=1 << 20) as pool, pool.acquire(ORIGIN):
        peer = await server.next_peer()
        await peer.wait_settings_acked()
        assert isinstance(peer.frames[1], WindowUpdateFrame), "the window update belongs to the preface"
        assert peer.window_updates(0) == [(1 << 20) - 65_535]
        assert peer.h2.outbound_flow_control_window == 1 << 20


async def test_minimum_connection_window_sends_no_connection_window_update() -> None:
    server = MockServer()
    async with make_pool(server, connection_window=65_535) as pool, pool.acquire(ORIGIN):
        peer = await server.next_peer()
        await peer.wait_settings_acked()
        assert peer.window_updates(0) == []


async def test_peer_settings_are_acknowledged_while_no_task_reads() -> None:
    server = MockServer()
    async with make_pool(server) as pool, pool.acquire(ORIGIN):
        peer = await server.next_peer()
        await peer.wait_settings_acked()
        peer.update_settings({MCS: 7})
        await peer.wait_settings_acked()
        assert peer.settings_acked == 2
        assert server.connections[0].slots.peer_limit == 7


async def test_ping_is_answered_while_no_task_reads() -> None:
    server = MockServer()
    async with make_pool(server) as pool, pool.acquire(ORIGIN):
        peer = await server.next_peer()
        peer.ping(b"12345678")
        await idle()
        pongs = [frame for frame in peer.frames_of(PingFrame) if "ACK" in frame.flags]
        assert [frame.opaque_data for frame in pongs] == [b"12345678"]


# Request headers.


async def test_request_headers_are_pseudo_first_lowercase_and_host_becomes_authority() -> None:
    server = MockServer(ok)
    async with make_pool(server) as pool:
        await pool.request(
            "POST",
            f"{ORIGIN}:8443/a/b?q=1",
            headers=[("X-Trace", "abc"), ("Host", "other.test"), ("Accept", "*/*")],
            content=b"hi",
        )
        request = server.peers[0].requests[1]
        assert request.headers == [
            (b":method", b"POST"),
            (b":scheme", b"https"),
            (b":authority", b"other.test"),
            (b":path", b"/a/b?q=1"),
            (b"x-trace", b"abc"),
            (b"accept", b"*/*"),
        ]
        assert request.body == b"hi"
        await assert_settled(server, pool)


@pytest.mark.parametrize(
    ("url", "authority"),
    [("https://example.test/", "example.test"), ("https://example.test:8443/", "example.test:8443")],
)
async def test_authority_comes_from_the_origin_without_a_host_header(url: str, authority: str) -> None:
    server = MockServer(ok)
    async with make_pool(server) as pool:
        await pool.request("GET", url)
        assert server.peers[0].requests[1].authority == authority


BAD_HEADERS = [
    ("x-a", "v\r\nx-injected: 1"),
    ("x-a", "v\nw"),
    ("x-a", "v\rw"),
    ("x-a", "v\0w"),
    ("x-a\r\n", "v"),
    ("x\0a", "v"),
    ("x a", "v"),
]


@pytest.mark.parametrize(("name", "value"), BAD_HEADERS)
async def test_control_characters_in_headers_raise_invalid_request_before_dialling(name: str, value: str) -> None:
    server = MockServer(ok)
    async with make_pool(server) as pool:
        with pytest.raises(InvalidRequest):
            await pool.request("GET", URL, headers=[(name, value)])
        assert server.peers == []
        await assert_settled(server, pool)


@pytest.mark.parametrize(("name", "value"), BAD_HEADERS)
async def test_control_characters_in_headers_send_nothing_on_an_open_connection(name: str, value: str) -> None:
    server = MockServer(ok)
    async with make_pool(server) as pool:
        async with pool.acquire(ORIGIN) as handle:
            with pytest.raises(InvalidRequest):
                await handle.send_headers("GET", "/", [(name, value)], end_stream=True)
            await idle()
            assert server.peers[0].frames_of(HeadersFrame) == []
        await assert_settled(server, pool)


# Receive flow control: the client's window, the peer's sending.


async def test_peer_can_send_exactly_the_stream_window_and_no_more() -> None:
    server = MockServer()
    async with (
        make_pool(server, initial_stream_window=1000, adaptive_window=False) as pool,
        pool.acquire(ORIGIN) as handle,
    ):
        stream_id = await handle.send_headers("GET", "/", end_stream=True)
        peer = await server.next_peer()
        await peer.next_request(complete=True)
        peer.respond(stream_id, body=bytes(3000))
        await idle()
        assert peer.send_window(stream_id) == 0
        assert peer.pending_body(stream_id) == 2000


async def test_slow_consumer_sends_no_stream_window_update_until_it_reads() -> None:
    server = MockServer()
    async with (
        make_pool(server, initial_stream_window=1000, adaptive_window=False) as pool,
        pool.acquire(ORIGIN) as handle,
    ):
        stream_id = await handle.send_headers("GET", "/", end_stream=True)
        peer = await server.next_peer()
        await peer.next_request(complete=True)
        peer.respond(stream_id, body=bytes(3000))
        assert (await handle.read_headers()).status == 200
        await idle()
        assert peer.window_updates(stream_id) == []
        assert len(await handle.read_data()) == 1000
        await idle()
        assert peer.window_updates(stream_id) == [1000]


async def test_read_pieces_hands_over_payloads_unjoined_and_acknowledges_them() -> None:
    server = MockServer()
    async with make_pool(server, connection_window=65_535, adaptive_window=False) as pool:
        async with pool.acquire(ORIGIN) as handle:
            stream_id = await handle.send_headers("GET", "/", end_stream=True)
            peer = await server.next_peer()
            await peer.next_request(complete=True)
            peer.send_headers(stream_id, [(":status", "200")])
            peer.send_data(stream_id, b"a" * 20_000)
            peer.send_data(stream_id, b"b" * 20_000)
            await handle.read_headers()
            await peer.wait_for(lambda: peer.pending_body(stream_id) == 0)
            await idle()
            assert b"".join(await handle.read_pieces()) == b"a" * 20_000 + b"b" * 20_000
            # 70,000 bytes overdraw the 65,535-byte connection window unless
            # taking the first 40,000 gave their window back.
            peer.send_data(stream_id, b"c" * 30_000, end_stream=True)
            rest = []
            while more := await handle.read_pieces():
                rest += more
            assert b"".join(rest) == b"c" * 30_000
            assert handle._conn.buffered == 0
        await assert_settled(server, pool)


async def test_a_response_needing_no_answer_schedules_no_write_and_a_ping_does() -> None:
    server = MockServer()
    async with make_pool(server) as pool, pool.acquire(ORIGIN) as handle:
        stream_id = await handle.send_headers("GET", "/", end_stream=True)
        peer = await server.next_peer()
        await peer.next_request(complete=True)
        conn = handle._conn
        await idle()
        peer.respond(stream_id, body=b"small")
        await peer.wait_for(lambda: peer.pending_body(stream_id) == 0)
        await handle.read_headers()
        assert await handle.read_data() == b"small"
        # Neither the response nor taking its 5 bytes left anything to write.
        assert not conn._flush_scheduled
        peer.ping(b"12345678")
        await idle()
        pongs = [frame.opaque_data for frame in peer.frames_of(PingFrame) if "ACK" in frame.flags]
        assert pongs == [b"12345678"]


async def test_slow_consumer_sends_no_connection_window_update_until_it_reads() -> None:
    server = MockServer()
    async with make_pool(server, connection_window=65_535) as pool, pool.acquire(ORIGIN) as handle:
        stream_id = await handle.send_headers("GET", "/", end_stream=True)
        peer = await server.next_peer()
        await peer.next_request(complete=True)
        peer.respond(stream_id, body=bytes(70_000))
        await handle.read_headers()
        await idle()
        assert peer.h2.outbound_flow_control_window == 0
        assert peer.pending_body(stream_id) == 70_000 - 65_535
        assert peer.window_updates(0) == []
        received = 0
        while received < 65_535:
            received += len(await handle.read_data())
        await peer.wait_for(lambda: peer.pending_body(stream_id) == 0)
        assert 0 < sum(peer.window_updates(0)) <= received


async def test_reading_reopens_the_stream_window_until_the_body_is_complete() -> None:
    server = MockServer()
    async with make_pool(server, initial_stream_window=1000) as pool:
        async with pool.acquire(ORIGIN) as handle:
            stream_id = await handle.send_headers("GET", "/", end_stream=True)
            peer = await server.next_peer()
            await peer.next_request(complete=True)
            peer.respond(stream_id, body=bytes(5000))
            await handle.read_headers()
            received = 0
            while chunk := await handle.read_data():
                received += len(chunk)
            assert received == 5000
            # The client never hands out window for bytes it has not taken.
            assert sum(peer.window_updates(stream_id)) <= received
        await assert_settled(server, pool)


# Send flow control: the peer's windows, the client's uploads.


async def test_upload_stops_at_the_peer_stream_window_and_resumes_on_window_update() -> None:
    server = MockServer(settings={MCS: 100, IWS: 1000}, ack_data=False)
    async with make_pool(server) as pool, pool.acquire(ORIGIN) as handle:
        peer = await server.next_peer()
        await peer.wait_settings_acked()
        stream_id = await handle.send_headers("POST", "/")
        upload = asyncio.create_task(handle.send_data(bytes(2500), end_stream=True))
        request = await peer.next_request()
        await peer.wait_for(lambda: len(request.body) == 1000)
        await idle()
        assert len(request.body) == 1000 and not upload.done()
        peer.window_update(stream_id, 1000)
        await peer.wait_for(lambda: len(request.body) == 2000)
        await idle()
        assert not upload.done()
        peer.window_update(stream_id, 500)
        await request.wait_complete()
        await upload
        assert request.body == bytes(2500)


async def test_upload_stops_at_the_connection_window_and_resumes_on_window_update() -> None:
    server = MockServer(settings={MCS: 100, IWS: 1 << 20}, ack_data=False)
    async with make_pool(server) as pool, pool.acquire(ORIGIN) as handle:
        peer = await server.next_peer()
        await peer.wait_settings_acked()
        await handle.send_headers("POST", "/")
        upload = asyncio.create_task(handle.send_data(bytes(100_000), end_stream=True))
        request = await peer.next_request()
        await peer.wait_for(lambda: len(request.body) == 65_535)
        await idle()
        assert len(request.body) == 65_535 and not upload.done()
        peer.window_update(0, 100_000 - 65_535)
        await request.wait_complete()
        await upload
        assert len(request.body) == 100_000


async def test_window_update_wakes_the_sender_while_another_task_awaits_a_response() -> None:
    server = MockServer(settings={MCS: 100, IWS: 1000}, ack_data=False)
    async with make_pool(server) as pool, contextlib.AsyncExitStack() as stack:
        uploader, reader = await acquire(stack, pool), await acquire(stack, pool)
        peer = await server.next_peer()
        await peer.wait_settings_acked()
        upload_id = await uploader.send_headers("POST", "/up")
        upload = asyncio.create_task(uploader.send_data(bytes(2000), end_stream=True))
        upload_request = await peer.next_request()
        await peer.wait_for(lambda: len(upload_request.body) == 1000)
        read_id = await reader.send_headers("GET", "/down", end_stream=True)
        head = asyncio.create_task(reader.read_headers())
        await peer.next_request(complete=True)
        await idle()
        assert not upload.done() and not head.done()
        # One delivery carries both: the reader's response and the uploader's window.
        peer.respond(read_id, body=b"x")
        peer.window_update(upload_id, 1000)
        assert (await head).status == 200
        await upload
        await upload_request.wait_complete()
        assert len(upload_request.body) == 2000


async def test_upload_waits_while_the_transport_pushes_back() -> None:
    server = MockServer(settings={MCS: 100, IWS: 1 << 20})
    async with make_pool(server) as pool, pool.acquire(ORIGIN) as handle:
        peer = await server.next_peer()
        await peer.wait_settings_acked()
        await handle.send_headers("POST", "/")
        peer.pause_client_writing()
        upload = asyncio.create_task(handle.send_data(bytes(600_000), end_stream=True))
        request = await peer.next_request()
        await idle()
        assert not upload.done() and len(request.body) < 600_000
        peer.resume_client_writing()
        await upload
        await request.wait_complete()
        assert len(request.body) == 600_000


async def test_pool_upload_larger_than_every_window_completes() -> None:
    server = MockServer(echo_length, settings={MCS: 100, IWS: 1000})
    async with make_pool(server) as pool:
        response = await pool.request("POST", URL, content=bytes(300_000))
        assert response.content == b"300000"
        await assert_settled(server, pool)


async def test_write_timeout_when_the_peer_never_opens_its_window() -> None:
    server = MockServer(settings={MCS: 100, IWS: 10}, ack_data=False)
    async with make_pool(server, write_timeout=0.2) as pool:
        async with pool.acquire(ORIGIN) as handle:
            peer = await server.next_peer()
            await peer.wait_settings_acked()
            await handle.send_headers("POST", "/")
            with pytest.raises(WriteTimeout):
                await handle.send_data(bytes(100), end_stream=True)
            # The timeout ends the stream, as a read timeout does.
            with pytest.raises(WriteTimeout):
                await handle.read_headers()
        await assert_settled(server, pool)
        assert pool.stats().origins[ORIGIN].stream_errors == {"WriteTimeout": 1}


# MAX_CONCURRENT_STREAMS.


async def test_request_over_the_peer_stream_limit_waits_until_a_stream_finishes() -> None:
    server = MockServer(settings={MCS: 2})
    async with make_pool(server, max_connections_per_origin=1) as pool:
        first = [spawn(pool, f"/{i}") for i in range(2)]
        peer = await server.next_peer()
        requests = [await peer.next_request(complete=True) for _ in range(2)]
        third = spawn(pool, "/2")
        await idle()
        assert pool.stats().waiting == 1
        assert pool.stats().streams_open == 2
        assert len(peer.requests) == 2
        requests[0].respond()
        late = await peer.next_request(complete=True)
        assert late.path == "/2"
        assert pool.stats().waiting == 0
        requests[1].respond()
        late.respond()
        responses = await asyncio.gather(*first, third)
        assert [response.status for response in responses] == [200, 200, 200]
        await assert_settled(server, pool)


async def test_raising_the_peer_limit_lets_waiters_proceed_at_once() -> None:
    server = MockServer(settings={MCS: 1})
    async with make_pool(server, max_connections_per_origin=1) as pool:
        peer = await settled_connection(server, pool)
        tasks = [spawn(pool, f"/{i}") for i in range(3)]
        await idle()
        assert len(peer.requests) == 1 and pool.stats().waiting == 2
        peer.update_settings({MCS: 3})
        await peer.wait_for(lambda: len(peer.requests) == 3)
        assert pool.stats().waiting == 0
        peer.auto_respond(ok)
        assert [response.status for response in await asyncio.gather(*tasks)] == [200, 200, 200]
        await assert_settled(server, pool)


async def test_lowered_limit_holds_new_headers_until_open_streams_drop_below_it() -> None:
    server = MockServer(settings={MCS: 4})
    async with make_pool(server, max_connections_per_origin=1) as pool, contextlib.AsyncExitStack() as stack:
        handles = [await acquire(stack, pool) for _ in range(4)]
        peer = await server.next_peer()
        await peer.wait_settings_acked()
        open_ids = [await handle.send_headers("GET", f"/{i}", end_stream=True) for i, handle in enumerate(handles[:3])]
        await peer.wait_for(lambda: len(peer.requests) == 3)
        peer.update_settings({MCS: 1})
        await peer.wait_settings_acked()
        late = asyncio.create_task(handles[3].send_headers("GET", "/late", end_stream=True))
        for stream_id in open_ids:
            await idle()
            assert len(peer.requests) == 3 and not late.done(), "HEADERS sent over the peer's lowered limit"
            peer.respond(stream_id)
        late_id = await late
        await peer.wait_for(lambda: late_id in peer.requests)
        assert server.connections[0].slots.open == 1
        peer.respond(late_id)
        for handle in handles:
            assert (await handle.read_headers()).status == 200
        server.assert_slots_consistent()
        assert server.errors == []


async def test_peer_limit_zero_holds_requests_until_it_is_raised() -> None:
    server = MockServer(ok, settings={MCS: 2})
    async with make_pool(server, max_connections_per_origin=1) as pool:
        await pool.request("GET", URL)
        peer = server.peers[0]
        peer.update_settings({MCS: 0})
        await peer.wait_settings_acked()
        waiting = spawn(pool, "/later")
        await idle()
        assert not waiting.done() and pool.stats().waiting == 1
        assert len(peer.requests) == 1
        peer.update_settings({MCS: 2})
        assert (await waiting).status == 200
        assert len(server.peers) == 1
        await assert_settled(server, pool)


async def test_peer_limit_zero_dials_no_further_connections() -> None:
    server = MockServer(ok, settings={MCS: 0})
    async with make_pool(server) as pool:
        peer = await settled_connection(server, pool)
        waiting = spawn(pool)
        await idle()
        assert not waiting.done() and pool.stats().waiting == 1
        assert len(server.peers) == 1, "a server taking no streams on one connection takes none on another"
        peer.update_settings({MCS: 1})
        assert (await waiting).status == 200
        await assert_settled(server, pool)


@pytest.mark.parametrize("peer_limit", [100, 250])
async def test_cold_thundering_herd_opens_only_the_connections_the_peer_limit_needs(peer_limit: int) -> None:
    server = MockServer(ok, settings={MCS: peer_limit})
    # A per-origin cap well above the need, so only the dialling policy bounds it.
    async with make_pool(server, max_connections_per_origin=50) as pool:
        responses = await asyncio.gather(*(spawn(pool, f"/{i}") for i in range(1000)))
        assert all(response.status == 200 for response in responses)
        needed = math.ceil(1000 / peer_limit)
        if peer_limit <= 100:
            assert len(server.peers) == needed
        else:
            # The first connection assumes 100 streams until SETTINGS arrive.
            assert len(server.peers) <= needed
        await assert_settled(server, pool)


async def test_requests_before_the_server_settings_stay_within_the_assumed_limit() -> None:
    server = MockServer(settings={MCS: 200}, send_preface=False)
    async with make_pool(server) as pool:
        tasks = [spawn(pool, f"/{i}") for i in range(150)]
        peer = await server.next_peer()
        await peer.wait_for(lambda: len(peer.requests) == 100)
        await idle()
        # Go, hyper and h2pool assume 100 streams until SETTINGS say otherwise.
        assert len(peer.requests) == 100 and len(server.peers) == 1
        peer.send_preface()
        await peer.wait_for(lambda: len(peer.requests) == 150)
        peer.auto_respond(ok)
        responses = await asyncio.gather(*tasks)
        assert all(response.status == 200 for response in responses)
        assert len(peer.requests) == 150 and len(server.peers) == 1
        await assert_settled(server, pool)


# RST_STREAM.


async def test_peer_reset_fails_only_that_stream_with_its_error_code() -> None:
    server = MockServer()
    async with make_pool(server) as pool:
        tasks = [spawn(pool, f"/{i}") for i in range(3)]
        peer = await server.next_peer()
        requests = [await peer.next_request(complete=True) for _ in range(3)]
        requests[1].reset(ErrorCodes.ENHANCE_YOUR_CALM)
        requests[0].respond(body=b"a")
        requests[2].respond(body=b"c")
        results = await asyncio.gather(*tasks, return_exceptions=True)
        error = results[1]
        assert isinstance(error, StreamReset)
        assert error.error_code == ErrorCodes.ENHANCE_YOUR_CALM
        assert error.stream_id == requests[1].stream_id
        assert [r.content for r in (results[0], results[2]) if isinstance(r, Response)] == [b"a", b"c"]
        # RFC 9113 §5.4.2: never answer RST_STREAM with RST_STREAM.
        assert peer.resets(requests[1].stream_id) == []
        await assert_settled(server, pool)


async def test_refused_stream_is_replayed() -> None:
    server = MockServer()
    async with make_pool(server) as pool:
        task = spawn(pool, "/again")
        peer = await server.next_peer()
        request = await peer.next_request(complete=True)
        request.reset(ErrorCodes.REFUSED_STREAM)
        retried = await peer.next_request(complete=True)
        assert retried.path == "/again" and retried.stream_id > request.stream_id
        retried.respond(body=b"done")
        assert (await task).content == b"done"
        assert pool.stats().origins[ORIGIN].replays == 1
        await assert_settled(server, pool)


# GOAWAY.


async def test_goaway_sends_new_requests_to_a_new_connection() -> None:
    server = MockServer()
    async with make_pool(server) as pool:
        in_flight = spawn(pool, "/1")
        first = await server.next_peer()
        request = await first.next_request(complete=True)
        first.goaway(last_stream_id=request.stream_id)
        await idle()
        server.handler = ok
        response = await pool.request("GET", f"{ORIGIN}/2")
        assert response.status == 200
        assert len(server.peers) == 2 and server.peers[1].requests[1].path == "/2"
        assert len(first.requests) == 1
        request.respond()
        assert (await in_flight).status == 200
        await assert_settled(server, pool)


async def test_goaway_lets_streams_up_to_last_stream_id_complete() -> None:
    server = MockServer()
    # A small window: finishing needs WINDOW_UPDATEs sent after the GOAWAY.
    async with make_pool(server, initial_stream_window=1000) as pool:
        tasks = [spawn(pool, f"/{i}") for i in range(2)]
        peer = await server.next_peer()
        requests = [await peer.next_request(complete=True) for _ in range(2)]
        peer.goaway(last_stream_id=requests[1].stream_id)
        await idle()
        for request in requests:
            request.respond(body=bytes(5000), trailers=[("x-done", "1")])
        responses = await asyncio.gather(*tasks)
        assert [len(response.content) for response in responses] == [5000, 5000]
        assert [response.trailers.get("x-done") for response in responses] == ["1", "1"]
        await assert_settled(server, pool)


async def test_goaway_fails_streams_above_last_stream_id_with_connection_terminated() -> None:
    server = MockServer()
    # No replays, so the error the pool would otherwise retry on is seen.
    async with make_pool(server, max_retries=0) as pool:
        tasks = [spawn(pool, f"/{i}") for i in range(3)]
        peer = await server.next_peer()
        requests = [await peer.next_request(complete=True) for _ in range(3)]
        peer.goaway(last_stream_id=requests[0].stream_id)
        await idle()
        for task, request in zip(tasks[1:], requests[1:], strict=True):
            assert task.done()
            error = task.exception()
            assert isinstance(error, ConnectionTerminated)
            assert error.last_stream_id == requests[0].stream_id
            assert error.error_code == ErrorCodes.NO_ERROR
            assert error.stream_id == request.stream_id
            assert not error.may_have_been_processed
        assert not tasks[0].done()
        requests[0].respond()
        assert (await tasks[0]).status == 200
        await assert_settled(server, pool)


async def test_requests_a_goaway_refused_are_replayed_on_a_new_connection() -> None:
    server = MockServer()
    async with make_pool(server) as pool:
        tasks = [spawn(pool, f"/{i}") for i in range(3)]
        first = await server.next_peer()
        requests = [await first.next_request(complete=True) for _ in range(3)]
        server.handler = ok
        first.goaway(last_stream_id=requests[0].stream_id)
        requests[0].respond(body=b"first")
        responses = await asyncio.gather(*tasks)
        assert [response.content for response in responses] == [b"first", b"ok /1", b"ok /2"]
        assert [request.path for request in server.peers[1].requests.values()] == ["/1", "/2"]
        assert pool.stats().origins[ORIGIN].replays == 2
        await assert_settled(server, pool)


async def test_goaway_connection_closes_once_its_streams_drain() -> None:
    server = MockServer()
    async with make_pool(server) as pool:
        task = spawn(pool)
        peer = await server.next_peer()
        request = await peer.next_request(complete=True)
        peer.goaway(last_stream_id=request.stream_id)
        await idle()
        assert not peer.client_closed, "closed with a stream still running"
        request.respond()
        await task
        await peer.wait_closed()
        assert pool.stats().connections == 0
        await assert_settled(server, pool)


async def test_informational_responses_are_skipped() -> None:
    server = MockServer()
    async with make_pool(server) as pool:
        task = spawn(pool)
        peer = await server.next_peer()
        request = await peer.next_request(complete=True)
        peer.send_headers(request.stream_id, [(":status", "103"), ("link", "</style.css>; rel=preload")])
        request.respond(201, headers=[("x-final", "1")], body=b"done")
        response = await task
        assert (response.status, response.headers.get("x-final"), response.content) == (201, "1", b"done")
        await assert_settled(server, pool)


# Trailers.


async def test_response_trailers_are_exposed_on_the_response() -> None:
    server = MockServer(lambda request: Reply(body=b"abc", trailers=[("grpc-status", "0"), ("x-sum", "7")]))
    async with make_pool(server) as pool:
        response = await pool.request("GET", URL)
        assert response.content == b"abc"
        assert response.trailers.items() == [("grpc-status", "0"), ("x-sum", "7")]


async def test_request_trailers_reach_the_peer() -> None:
    server = MockServer()
    async with make_pool(server) as pool:
        async with pool.acquire(ORIGIN) as handle:
            await handle.send_headers("POST", "/", {"te": "trailers"})
            await handle.send_data(b"body")
            await handle.send_trailers({"x-checksum": "abc"})
            peer = await server.next_peer()
            request = await peer.next_request(complete=True)
            assert request.body == b"body"
            assert request.trailers == [(b"x-checksum", b"abc")]
            request.respond()
            await handle.read_headers()
            assert await handle.read_data() == b""
        await assert_settled(server, pool)


# Broken connections and peers.


@pytest.mark.parametrize("alpn", ["http/1.1", None])
async def test_wrong_alpn_raises_alpn_error(alpn: str | None) -> None:
    server = MockServer(ok, alpn=alpn)
    async with make_pool(server) as pool:
        with pytest.raises(ALPNError):
            await pool.request("GET", URL)
        assert server.peers[0].client_closed
        assert server.peers[0].frames == [], "an h2 preface was sent to a server that does not speak h2"
        stats = pool.stats()
        assert (stats.connections, stats.connecting) == (0, 0)
        await assert_settled(server, pool)


async def test_h2c_origin_needs_no_alpn() -> None:
    server = MockServer(ok, tls=False)
    async with make_pool(server) as pool:
        response = await pool.request("GET", "http://example.test/")
        assert response.status == 200
        assert server.peers[0].requests[1].header(":scheme") == "http"


async def test_refused_dial_raises_connect_error() -> None:
    server = MockServer(ok)
    server.connect_error = ConnectionRefusedError("connection refused")
    async with make_pool(server) as pool:
        with pytest.raises(ConnectError):
            await pool.request("GET", URL)
        stats = pool.stats()
        assert (stats.connections, stats.connecting) == (0, 0)
        server.connect_error = None
        assert (await pool.request("GET", URL)).status == 200
        await assert_settled(server, pool)


async def test_frames_split_across_many_reads_are_reassembled() -> None:
    server = MockServer(lambda request: Reply(body=bytes(3000), trailers=[("x-end", "1")]), max_read_size=7)
    async with make_pool(server) as pool:
        response = await pool.request("GET", URL)
        assert len(response.content) == 3000 and response.trailers.get("x-end") == "1"
        await assert_settled(server, pool)


async def test_connection_lost_mid_response_fails_every_in_flight_stream() -> None:
    server = MockServer()
    async with make_pool(server) as pool:
        tasks = [spawn(pool, f"/{i}") for i in range(2)]
        peer = await server.next_peer()
        requests = [await peer.next_request(complete=True) for _ in range(2)]
        peer.send_headers(requests[0].stream_id, [(":status", "200")])
        peer.send_data(requests[0].stream_id, b"partial")
        await idle()
        peer.vanish(ConnectionResetError("reset by peer"))
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(result, ConnectionLost) for result in results), results
        stats = pool.stats()
        assert (stats.connections, stats.streams_open) == (0, 0)
        await assert_settled(server, pool)


async def test_connection_lost_while_streaming_the_body_raises_connection_lost() -> None:
    server = MockServer()
    async with make_pool(server) as pool:
        peer_task = asyncio.create_task(server.next_peer())
        respond_task = asyncio.create_task(_respond_partially(peer_task))
        async with pool.stream("GET", URL) as response:
            chunks = response.aiter_bytes()
            assert await anext(chunks) == b"partial"
            (await peer_task).vanish()
            with pytest.raises(ConnectionLost):
                await anext(chunks)
        await respond_task
        await assert_settled(server, pool)


async def _respond_partially(peer_task: asyncio.Task[ScriptedPeer]) -> None:
    peer = await peer_task
    request = await peer.next_request(complete=True)
    peer.send_headers(request.stream_id, [(":status", "200")])
    peer.send_data(request.stream_id, b"partial")


async def expect_connection_error(
    misbehave: Callable[[ScriptedPeer, int], None], code: ErrorCodes, **options: Any
) -> None:
    """The peer misbehaves on an open request: ProtocolError for it, GOAWAY(code) to the peer."""
    server = MockServer()
    async with make_pool(server, **options) as pool:
        task = spawn(pool)
        peer = await server.next_peer()
        request = await peer.next_request(complete=True)
        misbehave(peer, request.stream_id)
        with pytest.raises(ProtocolError):
            await task
        await peer.wait_closed()
        assert [frame.error_code for frame in peer.frames_of(GoAwayFrame)] == [code]
        await assert_settled(server, pool)


def _headers_then_data(size: int) -> Callable[[ScriptedPeer, int], None]:
    def misbehave(peer: ScriptedPeer, stream_id: int) -> None:
        peer.send_headers(stream_id, [(":status", "200")])
        peer.send_frame(DataFrame(stream_id, data=bytes(size)))

    return misbehave


async def test_frame_larger_than_our_max_frame_size_is_a_protocol_error() -> None:
    await expect_connection_error(_headers_then_data(16_385), ErrorCodes.FRAME_SIZE_ERROR)


async def test_data_beyond_the_stream_window_is_a_protocol_error() -> None:
    await expect_connection_error(
        _headers_then_data(1001), ErrorCodes.FLOW_CONTROL_ERROR, initial_stream_window=1000, adaptive_window=False
    )


async def test_push_promise_despite_enable_push_0_is_a_protocol_error() -> None:
    def push(peer: ScriptedPeer, stream_id: int) -> None:
        peer.send_frame(PushPromiseFrame(stream_id, promised_stream_id=2, data=b"", flags=["END_HEADERS"]))

    await expect_connection_error(push, ErrorCodes.PROTOCOL_ERROR)


async def test_invalid_peer_settings_value_is_a_protocol_error() -> None:
    server = MockServer()
    async with make_pool(server) as pool:
        task = spawn(pool)
        peer = await server.next_peer()
        await peer.next_request(complete=True)
        peer.send_frame(SettingsFrame(0, settings={IWS: 2**31}))
        with pytest.raises(ProtocolError):
            await task
        await assert_settled(server, pool)


async def test_response_headers_over_max_header_list_size_raise_protocol_error() -> None:
    server = MockServer()
    async with make_pool(server, max_header_list_size=1000, read_timeout=1.0) as pool:
        task = spawn(pool)
        peer = await server.next_peer()
        request = await peer.next_request(complete=True)
        request.respond(headers=[("x-big", "v" * 2000)], body=b"x")
        with pytest.raises(ProtocolError):
            await task
        await assert_settled(server, pool)


async def test_pool_serves_a_new_connection_after_a_protocol_error() -> None:
    server = MockServer()
    async with make_pool(server) as pool:
        task = spawn(pool)
        broken = await server.next_peer()
        await broken.next_request(complete=True)
        broken.send_raw(b"\x00\x00\x04\x08\x00\x00\x00\x00\x00\x00\x00\x00\x00")  # WINDOW_UPDATE of 0
        with pytest.raises(ProtocolError):
            await task
        server.handler = ok
        response = await pool.request("GET", URL)
        assert response.status == 200 and len(server.peers) == 2
        await assert_settled(server, pool)


async def test_malformed_response_headers_fail_only_that_stream() -> None:
    server = MockServer()
    async with make_pool(server) as pool:
        tasks = [spawn(pool, f"/{i}") for i in range(2)]
        peer = await server.next_peer()
        bad, good = [await peer.next_request(complete=True) for _ in range(2)]
        peer.send_headers(bad.stream_id, [(":status", "200"), ("Upper-Case", "x")])
        good.respond(body=b"fine")
        with pytest.raises(ProtocolError):
            await tasks[0]
        assert (await tasks[1]).content == b"fine"
        # RFC 9113 §8.1.1: a malformed response is a stream error.
        assert peer.resets(bad.stream_id) == [(bad.stream_id, ErrorCodes.PROTOCOL_ERROR)]
        assert len(server.peers) == 1 and peer.connected
        await assert_settled(server, pool)


async def test_malformed_response_headers_ending_the_stream_raise_protocol_error() -> None:
    server = MockServer()
    # A short read timeout: a lost error shows up as ReadTimeout, not a hang.
    async with make_pool(server, read_timeout=1.0) as pool:
        task = spawn(pool)
        peer = await server.next_peer()
        request = await peer.next_request(complete=True)
        peer.send_headers(request.stream_id, [(":status", "200"), ("Upper-Case", "x")], end_stream=True)
        with pytest.raises(ProtocolError):
            await task
        await assert_settled(server, pool)


async def test_malformed_response_trailers_raise_protocol_error() -> None:
    server = MockServer()
    async with make_pool(server, read_timeout=1.0) as pool:
        task = spawn(pool)
        peer = await server.next_peer()
        request = await peer.next_request(complete=True)
        request.respond(body=b"abc", trailers=[(":status", "200")])
        with pytest.raises(ProtocolError):
            await task
        await assert_settled(server, pool)


# Cancellation.


async def test_cancelled_request_sends_rst_stream_cancel_exactly_once() -> None:
    server = MockServer()
    async with make_pool(server) as pool:
        task = spawn(pool)
        peer = await server.next_peer()
        request = await peer.next_request(complete=True)
        peer.send_headers(request.stream_id, [(":status", "200")])
        peer.send_data(request.stream_id, b"partial")
        await idle()
        assert pool.stats().streams_open == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await idle()
        assert peer.resets(request.stream_id) == [(request.stream_id, ErrorCodes.CANCEL)]
        assert request.reset_code == ErrorCodes.CANCEL
        await assert_settled(server, pool)


async def test_unread_data_of_a_cancelled_stream_returns_to_the_connection_window() -> None:
    server = MockServer()
    async with make_pool(server, connection_window=65_535) as pool:
        task = spawn(pool, "/abandoned")
        peer = await server.next_peer()
        request = await peer.next_request(complete=True)
        peer.send_headers(request.stream_id, [(":status", "200")])
        peer.send_data(request.stream_id, bytes(60_000))
        await peer.wait_for(lambda: peer.pending_body(request.stream_id) == 0)
        await idle()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # Had the 60,000 unread bytes leaked, this body could never arrive.
        peer.auto_respond(lambda request: Reply(body=bytes(60_000)))
        response = await pool.request("GET", f"{ORIGIN}/next")
        assert len(response.content) == 60_000 and len(server.peers) == 1
        await assert_settled(server, pool)


async def test_cancel_while_waiting_for_a_slot_leaks_no_slot() -> None:
    server = MockServer(settings={MCS: 1})
    async with make_pool(server, max_connections_per_origin=1) as pool:
        first = spawn(pool, "/first")
        peer = await server.next_peer()
        request = await peer.next_request(complete=True)
        queued = spawn(pool, "/queued")
        await idle()
        assert pool.stats().waiting == 1
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        assert pool.stats().waiting == 0 and pool.stats().slots_reserved == 0
        request.respond()
        await first
        peer.auto_respond(ok)
        assert (await pool.request("GET", f"{ORIGIN}/after")).status == 200
        assert [r.path for r in peer.requests.values()] == ["/first", "/after"]
        await assert_settled(server, pool)


async def test_cancel_right_after_a_slot_was_granted_gives_the_slot_back() -> None:
    server = MockServer(ok, settings={MCS: 1})
    async with make_pool(server, max_connections_per_origin=1) as pool:
        holder = pool.acquire(ORIGIN)
        await holder.__aenter__()
        peer = await server.next_peer()
        await peer.wait_settings_acked()
        queued = asyncio.create_task(pool.acquire(ORIGIN).__aenter__())
        await idle()
        assert pool.stats().waiting == 1
        # Releasing hands the slot to the queued task; it is cancelled before it runs.
        await holder.__aexit__(None, None, None)
        assert pool.stats().slots_reserved == 1 and pool.stats().waiting == 0
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        assert pool.stats().slots_reserved == 0
        assert (await pool.request("GET", URL)).status == 200
        await assert_settled(server, pool)


# Timeouts.


async def test_stalled_peer_gives_read_timeout_within_the_configured_timeout() -> None:
    server = MockServer(setup=ScriptedPeer.stall)
    async with make_pool(server, read_timeout=0.2) as pool:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(ReadTimeout):
            await pool.request("GET", URL)
        elapsed = loop.time() - started
        assert 0.15 <= elapsed < 2.0
        await assert_settled(server, pool)


async def test_a_read_timeout_fails_the_silent_stream_and_not_one_answered_in_time() -> None:
    server = MockServer()
    async with make_pool(server, read_timeout=0.3) as pool:
        silent, answered = spawn(pool), spawn(pool)
        peer = await server.next_peer()
        first = await peer.next_request(complete=True)
        second = await peer.next_request(complete=True)
        await asyncio.sleep(0.1)
        peer.send_headers(second.stream_id, [(":status", "204")], end_stream=True)
        with pytest.raises(ReadTimeout) as caught:
            await silent
        assert caught.value.stream_id == first.stream_id
        assert (await answered).status == 204
        await assert_settled(server, pool)


async def test_acquire_timeout_when_no_slot_frees() -> None:
    server = MockServer(settings={MCS: 1})
    async with make_pool(server, max_connections_per_origin=1, acquire_timeout=0.2) as pool:
        async with pool.acquire(ORIGIN):
            peer = await server.next_peer()
            await peer.wait_settings_acked()
            # A tight outer bound: a timer that never fires fails fast instead of at TEST_BOUND.
            with pytest.raises(AcquireTimeout):
                async with asyncio.timeout(2.0):
                    await pool.request("GET", URL)
            assert pool.stats().waiting == 0 and pool.stats().slots_reserved == 1
        await assert_settled(server, pool)
