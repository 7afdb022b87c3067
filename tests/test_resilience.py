"""Resilience: replays, health checks, stalls, lifetimes and cancellation, against scripted peers.

Each test plays one server misbehaviour with :mod:`h2pool.testing` (no
sockets, deterministic delivery) and checks both what the caller sees and
that nothing is left behind: slots, waiters, streams, tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from h2.errors import ErrorCodes
from hyperframe.frame import GoAwayFrame, HeadersFrame, PingFrame

from h2pool import (
    ConnectionLost,
    ConnectionTerminated,
    ConnectTimeout,
    Pool,
    PoolClosed,
    ReadTimeout,
    RequestTimeout,
    Response,
    StreamReset,
    WriteTimeout,
)
from h2pool.testing import MockServer, PeerRequest, Reply, ScriptedPeer, idle
from tests.test_protocol import IWS, MCS, ORIGIN, URL, assert_settled, make_pool, ok, settled_connection, spawn


def client_pings(peer: ScriptedPeer) -> list[PingFrame]:
    """PINGs the client sent (not its ACKs of the peer's)."""
    return [frame for frame in peer.frames_of(PingFrame) if "ACK" not in frame.flags]


async def wait_until(predicate: Callable[[], bool], timeout: float = 2.0) -> None:
    """Poll for a state that a timer of the client changes (nothing the peer is told about)."""
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise TimeoutError(f"not true within {timeout} s")


def request_paths(peer: ScriptedPeer) -> list[str | None]:
    return [request.path for request in peer.requests.values()]


def replays(pool: Pool) -> int:
    return pool.stats().origins[ORIGIN].replays


# GOAWAY: requests above last_stream_id were never processed.


async def test_request_above_goaway_last_stream_id_is_replayed_on_a_new_connection() -> None:
    server = MockServer()
    async with make_pool(server) as pool:
        task = spawn(pool, "/only")
        first = await server.next_peer()
        request = await first.next_request(complete=True)
        server.handler = ok
        first.goaway(last_stream_id=0)
        assert (await task).content == b"ok /only"
        assert list(first.requests) == [request.stream_id]
        assert request_paths(server.peers[1]) == ["/only"]
        assert replays(pool) == 1
        # Nothing was left to drain on the old connection.
        await first.wait_closed()
        await assert_settled(server, pool)


async def test_goaway_on_every_attempt_raises_connection_terminated_after_max_retries() -> None:
    def go_away(request: PeerRequest) -> None:
        request.peer.goaway(last_stream_id=0)

    server = MockServer(go_away)
    async with make_pool(server, max_retries=2) as pool:
        with pytest.raises(ConnectionTerminated) as caught:
            await pool.request("GET", URL)
        assert not caught.value.may_have_been_processed
        assert caught.value.last_stream_id == 0
        assert [len(peer.requests) for peer in server.peers] == [1, 1, 1]
        assert replays(pool) == 2
        await assert_settled(server, pool)


async def test_stream_context_replays_a_request_goaway_refused() -> None:
    server = MockServer()
    async with make_pool(server) as pool:
        first_peer = asyncio.create_task(server.next_peer())

        async def refuse_on_first() -> None:
            peer = await first_peer
            await peer.next_request(complete=True)
            server.handler = lambda request: Reply(body=b"streamed")
            peer.goaway(last_stream_id=0)

        refuser = asyncio.create_task(refuse_on_first())
        async with pool.stream("GET", URL) as response:
            assert [chunk async for chunk in response.aiter_bytes()] == [b"streamed"]
        await refuser
        assert len(server.peers) == 2 and replays(pool) == 1
        await assert_settled(server, pool)


# REFUSED_STREAM: replayed after a capped, jittered backoff.


async def test_refused_twice_then_served_succeeds_on_the_third_attempt_after_capped_backoff(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caps: list[float] = []
    delays: list[float] = []
    seeded = random.Random(1)

    def recording_uniform(low: float, high: float) -> float:
        caps.append(high)
        delays.append(seeded.uniform(low, high))
        return delays[-1]

    monkeypatch.setattr("h2pool.pool.random.uniform", recording_uniform)
    attempts: list[int] = []

    def refuse_twice(request: PeerRequest) -> Reply:
        attempts.append(request.stream_id)
        return Reply(reset=ErrorCodes.REFUSED_STREAM) if len(attempts) <= 2 else Reply(body=b"served")

    server = MockServer(refuse_twice)
    async with make_pool(server, retry_backoff=0.05, retry_backoff_max=0.08) as pool:
        loop = asyncio.get_running_loop()
        started = loop.time()
        response = await pool.request("GET", URL)
        elapsed = loop.time() - started
        assert response.content == b"served"
        assert attempts == [1, 3, 5] and len(server.peers) == 1
        # Doubling from retry_backoff, capped at retry_backoff_max.
        assert caps == [0.05, 0.08]
        assert all(0 <= delay <= cap for delay, cap in zip(delays, caps, strict=True))
        assert sum(delays) - 0.01 <= elapsed < sum(caps) + 1.0
        assert replays(pool) == 2
        await assert_settled(server, pool)


async def test_refused_forever_raises_stream_reset_after_max_retries_plus_one_attempts() -> None:
    server = MockServer(lambda request: Reply(reset=ErrorCodes.REFUSED_STREAM))
    async with make_pool(server, max_retries=3, retry_backoff=0.01, retry_backoff_max=0.02) as pool:
        with pytest.raises(StreamReset) as caught:
            await pool.request("GET", URL)
        assert caught.value.error_code == ErrorCodes.REFUSED_STREAM
        assert not caught.value.may_have_been_processed
        assert len(server.peers) == 1 and len(server.peers[0].requests) == 4
        assert replays(pool) == 3
        await assert_settled(server, pool)


# Whether the server may have seen the request decides the replay.


async def test_request_whose_connection_dies_before_its_headers_are_flushed_is_replayed() -> None:
    server = MockServer()
    async with make_pool(server) as pool:
        first = await settled_connection(server, pool)
        server.handler = ok
        # With a body, HEADERS wait for the flush of this iteration (a lone
        # GET is written at once). The loss is queued behind the request's
        # first step and ahead of that flush: its HEADERS never reach a transport.
        task = spawn(pool, "/unsent", content=b"body")
        first.vanish()
        assert (await task).content == b"ok /unsent"
        assert first.requests == {} and first.frames_of(HeadersFrame) == []
        assert request_paths(server.peers[1]) == ["/unsent"]
        assert replays(pool) == 1
        await assert_settled(server, pool)


async def test_request_whose_headers_were_written_is_not_replayed_and_may_have_been_processed() -> None:
    server = MockServer()
    async with make_pool(server) as pool:
        task = spawn(pool, "/sent")
        peer = await server.next_peer()
        await peer.next_request(complete=True)
        server.handler = ok
        peer.vanish()
        with pytest.raises(ConnectionLost) as caught:
            await task
        assert caught.value.may_have_been_processed
        assert len(server.peers) == 1 and replays(pool) == 0
        await assert_settled(server, pool)


async def _streamed_body() -> AsyncIterator[bytes]:
    yield b"part one"
    yield b"part two"


@pytest.mark.parametrize("refusal", ["goaway", "refused_stream"])
async def test_streamed_body_is_never_replayed(refusal: str) -> None:
    server = MockServer()
    async with make_pool(server) as pool:
        task = asyncio.create_task(pool.request("POST", URL, content=_streamed_body()))
        peer = await server.next_peer()
        request = await peer.next_request(complete=True)
        assert request.body == b"part onepart two"
        server.handler = ok
        if refusal == "goaway":
            peer.goaway(last_stream_id=0)
        else:
            request.reset(ErrorCodes.REFUSED_STREAM)
        with pytest.raises((ConnectionTerminated, StreamReset)) as caught:
            await task
        # The error is honest about the server; the body just cannot be sent again.
        assert not caught.value.may_have_been_processed
        assert len(server.peers) == 1 and len(peer.requests) == 1
        assert replays(pool) == 0
        await assert_settled(server, pool)


# PING health checks.


async def test_unanswered_ping_closes_the_connection_and_fails_its_streams_with_connection_lost() -> None:
    server = MockServer()
    async with make_pool(server, ping_interval=0.1, ping_timeout=0.1) as pool:
        task = spawn(pool, "/in-flight")
        peer = await server.next_peer()
        await peer.next_request(complete=True)
        # A black hole: the peer still reads but nothing reaches the client, PING ACKs included.
        peer.stall()
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(ConnectionLost) as caught:
            await task
        elapsed = loop.time() - started
        assert "PING" in str(caught.value)
        assert caught.value.may_have_been_processed
        # Bounded by ping_interval + ping_timeout; the slack only absorbs a slow machine.
        assert 0.09 <= elapsed <= 0.1 + 0.1 + 0.5
        assert client_pings(peer)
        assert peer.client_closed and isinstance(server.connections[0].error, ConnectionLost)
        assert pool.stats().connections == 0
        await assert_settled(server, pool)


async def test_request_waiting_on_a_connection_whose_ping_is_lost_is_served_by_a_new_one() -> None:
    server = MockServer(settings={MCS: 1})
    async with make_pool(server, max_connections_per_origin=1, ping_interval=0.1, ping_timeout=0.1) as pool:
        peer = await settled_connection(server, pool)
        in_flight = spawn(pool, "/stuck")
        await peer.next_request(complete=True)
        waiting = spawn(pool, "/waiting")
        await idle()
        assert pool.stats().waiting == 1
        server.handler = ok
        peer.stall()
        assert (await waiting).content == b"ok /waiting"
        assert len(server.peers) == 2 and request_paths(server.peers[1]) == ["/waiting"]
        with pytest.raises(ConnectionLost):
            await in_flight
        await assert_settled(server, pool)


async def test_answered_pings_keep_a_quiet_connection_open_and_measure_its_rtt() -> None:
    server = MockServer(ok)
    async with make_pool(server, ping_interval=0.05, ping_timeout=0.5) as pool:
        await pool.request("GET", URL)
        peer, conn = server.peers[0], server.connections[0]
        assert conn.ping_rtt is None
        # Eight intervals of silence from the caller's side.
        await asyncio.sleep(0.4)
        assert len(client_pings(peer)) >= 3
        assert peer.connected and not peer.client_closed and conn.error is None
        assert conn.ping_rtt is not None and 0 <= conn.ping_rtt < 0.5
        await pool.request("GET", URL)
        assert len(server.peers) == 1
        await assert_settled(server, pool)


async def _time_out_a_request(server: MockServer, pool: Pool) -> ScriptedPeer:
    """A request that gets ReadTimeout on the first connection, whose PING ACK is then withheld."""
    stuck = spawn(pool, "/stuck")
    first = await server.next_peer()
    await first.next_request(complete=True)
    # Held, so the degraded state lasts until the test releases the ACK.
    first.stall()
    with pytest.raises(ReadTimeout):
        await stuck
    return first


async def test_read_timeout_pings_at_once_and_degrades_the_connection() -> None:
    server = MockServer()
    # ping_interval far away: any PING seen was sent because of the timeout.
    async with make_pool(server, read_timeout=0.2, ping_interval=30.0) as pool:
        first = await _time_out_a_request(server, pool)
        conn = server.connections[0]
        assert len(client_pings(first)) == 1
        assert conn.slots.degraded and conn.error is None
        first.unstall()
        await idle()
        assert not conn.slots.degraded
        assert conn.ping_rtt is not None
        await assert_settled(server, pool)


async def test_new_request_avoids_a_degraded_connection_and_reuses_it_once_the_ping_is_answered() -> None:
    server = MockServer()
    async with make_pool(server, read_timeout=0.2, ping_interval=30.0) as pool:
        first = await _time_out_a_request(server, pool)
        server.handler = ok
        assert (await pool.request("GET", f"{ORIGIN}/meanwhile")).content == b"ok /meanwhile"
        assert len(server.peers) == 2 and request_paths(first) == ["/stuck"]
        first.auto_respond(ok)
        first.unstall()
        await idle()
        assert (await pool.request("GET", f"{ORIGIN}/after")).content == b"ok /after"
        # The oldest connection with room is preferred again.
        assert request_paths(first) == ["/stuck", "/after"]
        await assert_settled(server, pool)


async def test_request_waits_for_a_degraded_connection_when_no_other_may_be_dialled() -> None:
    server = MockServer()
    async with make_pool(server, read_timeout=0.2, ping_interval=30.0, max_connections_per_origin=1) as pool:
        first = await _time_out_a_request(server, pool)
        waiter = spawn(pool, "/after")
        await idle()
        assert pool.stats().waiting == 1 and request_paths(first) == ["/stuck"]
        first.auto_respond(ok)
        first.unstall()
        assert (await waiter).content == b"ok /after"
        assert len(server.peers) == 1
        await assert_settled(server, pool)


# Write stalls.


async def test_transport_paused_past_write_timeout_aborts_the_connection_and_the_next_request_dials_anew() -> None:
    server = MockServer()
    # A PING every 50 ms that could never be answered (the peer is stalled)
    # must not be what ends the connection: that would take ping_timeout.
    options = {"write_timeout": 0.2, "ping_interval": 0.05, "ping_timeout": 5.0}
    async with make_pool(server, **options) as pool:
        in_flight = spawn(pool, "/in-flight")
        first = await server.next_peer()
        await first.next_request(complete=True)
        first.stall()
        first.pause_client_writing()
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(WriteTimeout):
            await in_flight
        assert loop.time() - started < 2.0
        assert first.client_closed and isinstance(server.connections[0].error, WriteTimeout)
        server.handler = ok
        assert (await pool.request("GET", f"{ORIGIN}/next")).content == b"ok /next"
        assert len(server.peers) == 2
        await assert_settled(server, pool)


async def test_transport_resumed_within_write_timeout_keeps_the_connection() -> None:
    server = MockServer(ok)
    async with make_pool(server, write_timeout=0.2) as pool:
        await pool.request("GET", URL)
        peer = server.peers[0]
        peer.pause_client_writing()
        await asyncio.sleep(0.1)
        peer.resume_client_writing()
        await asyncio.sleep(0.25)
        assert peer.connected and server.connections[0].error is None
        await pool.request("GET", URL)
        assert len(server.peers) == 1
        await assert_settled(server, pool)


# SETTINGS changing under running streams.


async def test_max_concurrent_streams_shrunk_below_the_slots_in_use_and_raised_again_completes_everything() -> None:
    server = MockServer(settings={MCS: 10})
    async with make_pool(server, max_connections_per_origin=1) as pool:
        async with contextlib.AsyncExitStack() as stack:
            peer = await settled_connection(server, pool)
            open_tasks = [spawn(pool, f"/open{i}") for i in range(6)]
            await peer.wait_for(lambda: len(peer.requests) == 6)
            handles = [await stack.enter_async_context(pool.acquire(ORIGIN)) for _ in range(4)]
            stats = pool.stats()
            assert (stats.streams_open, stats.slots_reserved) == (6, 4)
            peer.update_settings({MCS: 2})
            await peer.wait_settings_acked()
            sends = [
                asyncio.create_task(handle.send_headers("GET", f"/reserved{i}", end_stream=True))
                for i, handle in enumerate(handles)
            ]
            queued = [spawn(pool, f"/queued{i}") for i in range(2)]
            for request in list(peer.requests.values())[:4]:
                request.respond()
            await asyncio.gather(*open_tasks[:4])
            await idle()
            # Two streams still open: exactly the new limit, so nothing more may start.
            assert len(peer.requests) == 6
            assert not any(send.done() for send in sends)
            assert pool.stats().waiting == 2
            peer.update_settings({MCS: 10})
            await peer.wait_for(lambda: len(peer.requests) == 12)
            peer.auto_respond(ok)
            await asyncio.gather(*sends)
            for i, handle in enumerate(handles):
                assert (await handle.read_headers()).status == 200
                assert await handle.read_data() == f"ok /reserved{i}".encode()
                assert await handle.read_data() == b""
            responses = await asyncio.gather(*open_tasks[4:], *queued)
            assert [response.status for response in responses] == [200] * 4
            assert len(server.peers) == 1
        await assert_settled(server, pool)


async def test_initial_window_size_changes_during_uploads_follow_rfc_9113_window_arithmetic() -> None:
    # No automatic WINDOW_UPDATEs: the windows move only as the test says.
    server = MockServer(settings={MCS: 100, IWS: 1000}, ack_data=False)
    async with make_pool(server) as pool:
        peer = await settled_connection(server, pool)
        conn = server.connections[0]
        uploads = [asyncio.create_task(pool.request("POST", f"{ORIGIN}/up{i}", content=bytes(5000))) for i in range(3)]
        await peer.wait_for(
            lambda: len(peer.requests) == 3 and all(len(r.body) == 1000 for r in peer.requests.values())
        )
        await idle()
        stream_ids = list(peer.requests)

        def windows() -> list[int]:
            """The client's send windows, checked against the peer's own accounting."""
            ours = [conn._h2.streams[stream_id].outbound_flow_control_window for stream_id in stream_ids]
            theirs = [peer.h2.streams[stream_id].inbound_flow_control_window for stream_id in stream_ids]
            assert ours == theirs
            return ours

        def bodies() -> list[int]:
            return [len(peer.requests[stream_id].body) for stream_id in stream_ids]

        assert windows() == [0, 0, 0]
        # RFC 9113 §6.9.2: a smaller INITIAL_WINDOW_SIZE can make windows negative.
        peer.update_settings({IWS: 0})
        await peer.wait_settings_acked()
        await idle()
        assert windows() == [-1000, -1000, -1000]
        peer.window_update(stream_ids[0], 500)
        await idle()
        assert windows() == [-500, -1000, -1000]
        assert bodies() == [1000, 1000, 1000] and not any(upload.done() for upload in uploads)
        # Raised again: each window moves by the difference, and only a positive window sends.
        peer.update_settings({IWS: 1600})
        await peer.wait_for(lambda: bodies() == [2100, 1600, 1600])
        await idle()
        assert windows() == [0, 0, 0]
        peer.update_settings({IWS: 100_000})
        await peer.wait_for(lambda: all(request.complete for request in peer.requests.values()))
        assert bodies() == [5000, 5000, 5000]
        peer.auto_respond(lambda request: Reply(body=str(len(request.body)).encode()))
        responses = await asyncio.gather(*uploads)
        assert [response.content for response in responses] == [b"5000"] * 3
        await assert_settled(server, pool)


# max_lifetime.


async def test_connection_past_max_lifetime_takes_no_new_streams_and_closes_once_drained() -> None:
    server = MockServer()
    async with make_pool(server, max_lifetime=0.2) as pool:
        old_task = spawn(pool, "/old")
        first = await server.next_peer()
        old = await first.next_request(complete=True)
        conn = server.connections[0]
        await wait_until(lambda: not conn.slots.accepting)
        server.handler = ok
        assert (await pool.request("GET", f"{ORIGIN}/new")).content == b"ok /new"
        assert request_paths(server.peers[1]) == ["/new"]
        assert not first.client_closed, "closed with a stream still running"
        old.respond(body=b"old done")
        assert (await old_task).content == b"old done"
        await first.wait_closed()
        assert [frame.error_code for frame in first.frames_of(GoAwayFrame)] == [ErrorCodes.NO_ERROR]
        await assert_settled(server, pool)


# Cancellation at every await point of a request.


@dataclass
class Staged:
    """A victim request parked at one await point, beside a neighbour on the same connection."""

    victim: asyncio.Task[Response]
    neighbour: asyncio.Task[Response]
    #: Lets the neighbour complete once the victim is cancelled.
    finish_neighbour: Callable[[], None]
    #: The victim's stream as the peer saw it, if its HEADERS went out.
    victim_request: PeerRequest | None = None
    peers: list[ScriptedPeer] = field(default_factory=list)


def _noop() -> None:
    pass


async def _while_connecting(pool: Pool, server: MockServer) -> Staged:
    server.handler = ok
    server.connect_delay = 0.1
    neighbour = spawn(pool, "/neighbour")
    victim = spawn(pool, "/victim")
    await idle()
    stats = pool.stats()
    assert (stats.connecting, stats.slots_reserved) == (1, 2)
    return Staged(victim, neighbour, _noop)


async def _while_queued(pool: Pool, server: MockServer) -> Staged:
    peer = await settled_connection(server, pool)
    neighbour = spawn(pool, "/neighbour")
    request = await peer.next_request(complete=True)
    victim = spawn(pool, "/victim")
    await idle()
    assert pool.stats().waiting == 1
    return Staged(victim, neighbour, request.respond)


async def _after_the_slot_is_granted(pool: Pool, server: MockServer) -> Staged:
    peer = await settled_connection(server, pool)
    neighbour = spawn(pool, "/neighbour")
    request = await peer.next_request(complete=True)
    holder = pool.acquire(ORIGIN)
    await holder.__aenter__()
    victim = spawn(pool, "/victim")
    await idle()
    assert pool.stats().waiting == 1
    # Hands the slot to the victim's waiter; the victim has not run since.
    await holder.__aexit__(None, None, None)
    stats = pool.stats()
    assert (stats.waiting, stats.slots_reserved) == (0, 1)
    return Staged(victim, neighbour, request.respond)


async def _after_headers(pool: Pool, server: MockServer) -> Staged:
    neighbour = spawn(pool, "/neighbour")
    victim = spawn(pool, "/victim")
    peer = await server.next_peer()
    first = await peer.next_request(complete=True)
    second = await peer.next_request(complete=True)
    await idle()
    return Staged(victim, neighbour, first.respond, victim_request=second)


async def _mid_upload(pool: Pool, server: MockServer, size: int) -> Staged:
    peer = await settled_connection(server, pool)
    neighbour = spawn(pool, "/neighbour")
    first = await peer.next_request(complete=True)
    victim = asyncio.create_task(pool.request("POST", f"{ORIGIN}/victim", content=bytes(size)))
    upload = await peer.next_request()
    await peer.wait_for(lambda: len(upload.body) == 1000)
    await idle()
    assert not victim.done() and not upload.complete
    return Staged(victim, neighbour, first.respond, victim_request=upload)


async def _mid_inline_upload(pool: Pool, server: MockServer) -> Staged:
    return await _mid_upload(pool, server, 5000)


async def _mid_background_upload(pool: Pool, server: MockServer) -> Staged:
    # Over INLINE_BODY_LIMIT: the body is sent by a task of its own.
    return await _mid_upload(pool, server, 100_000)


async def _mid_download(pool: Pool, server: MockServer) -> Staged:
    neighbour = spawn(pool, "/neighbour")
    victim = spawn(pool, "/victim")
    peer = await server.next_peer()
    first = await peer.next_request(complete=True)
    second = await peer.next_request(complete=True)
    peer.send_headers(second.stream_id, [(":status", "200")])
    peer.send_data(second.stream_id, b"partial")
    await idle()
    assert pool.stats().streams_open == 2
    return Staged(victim, neighbour, first.respond, victim_request=second)


Stage = Callable[[Pool, MockServer], Awaitable[Staged]]

CANCEL_POINTS: dict[str, tuple[dict[str, Any], dict[str, Any], Stage]] = {
    "while_connecting": ({}, {}, _while_connecting),
    "while_queued_for_a_slot": ({"settings": {MCS: 1}}, {"max_connections_per_origin": 1}, _while_queued),
    "after_the_slot_is_granted": (
        {"settings": {MCS: 2}},
        {"max_connections_per_origin": 1},
        _after_the_slot_is_granted,
    ),
    "after_headers_before_the_response": ({}, {}, _after_headers),
    "mid_upload_waiting_for_window": ({"settings": {MCS: 100, IWS: 1000}, "ack_data": False}, {}, _mid_inline_upload),
    "mid_upload_in_the_body_task": ({"settings": {MCS: 100, IWS: 1000}, "ack_data": False}, {}, _mid_background_upload),
    "mid_download": ({}, {}, _mid_download),
}


@pytest.mark.parametrize("point", list(CANCEL_POINTS))
async def test_cancelling_a_request_leaks_nothing_and_spares_its_neighbour(point: str) -> None:
    server_options, pool_options, stage = CANCEL_POINTS[point]
    server = MockServer(**server_options)
    async with make_pool(server, **pool_options) as pool:
        baseline = asyncio.all_tasks()
        staged = await stage(pool, server)
        staged.victim.cancel()
        with pytest.raises(asyncio.CancelledError):
            await staged.victim
        staged.finish_neighbour()
        assert (await staged.neighbour).status == 200
        await idle()
        stats = pool.stats()
        assert (stats.streams_open, stats.slots_reserved, stats.waiting) == (0, 0, 0), stats
        # The connection outlives the cancellation: set up and pooled, not half-made.
        assert (stats.connections, stats.connecting) == (1, 0), stats
        assert len(server.peers) == 1
        peer = server.peers[0]
        victim = staged.victim_request
        if victim is None:
            assert peer.resets() == [] and "/victim" not in request_paths(peer)
        else:
            assert peer.resets() == [(victim.stream_id, ErrorCodes.CANCEL)]
            assert victim.reset_code == ErrorCodes.CANCEL
        assert all(conn.buffered == 0 for conn in server.connections)
        assert asyncio.all_tasks() <= baseline, "a task of the cancelled request outlived it"
        # The connection still serves.
        peer.auto_respond(ok)
        assert (await pool.request("GET", f"{ORIGIN}/after")).status == 200
        assert len(server.peers) == 1
        await assert_settled(server, pool)


async def test_dial_whose_only_waiter_was_cancelled_is_finished_and_pooled() -> None:
    server = MockServer(ok)
    server.connect_delay = 0.1
    async with make_pool(server) as pool:
        baseline = asyncio.all_tasks()
        victim = spawn(pool, "/victim")
        await idle()
        assert pool.stats().connecting == 1
        victim.cancel()
        with pytest.raises(asyncio.CancelledError):
            await victim
        stats = pool.stats()
        assert (stats.connecting, stats.slots_reserved, stats.waiting) == (1, 0, 0), stats
        peer = await server.next_peer()
        await peer.wait_settings_acked()
        await idle()
        stats = pool.stats()
        assert (stats.connections, stats.connecting, stats.slots_reserved) == (1, 0, 0), stats
        assert peer.requests == {}
        assert asyncio.all_tasks() <= baseline, "the dial task outlived its connection's set-up"
        assert (await pool.request("GET", URL)).status == 200
        assert len(server.peers) == 1
        await assert_settled(server, pool)


# Set-up that never finishes, and local resets.


async def test_server_that_never_sends_settings_fails_prewarm_with_connect_timeout_within_connect_timeout() -> None:
    server = MockServer(send_preface=False)
    async with Pool(connector=server.connector, connect_timeout=0.2) as pool:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(ConnectTimeout, match="no SETTINGS"):
            await pool.prewarm(ORIGIN)
        assert loop.time() - started < 1.0
        assert pool.stats().origins[ORIGIN].connection_errors == {"ConnectTimeout": 1}


async def test_reset_wakes_a_waiting_reader_which_raises_at_once() -> None:
    server = MockServer()
    async with make_pool(server, read_timeout=5.0) as pool, pool.acquire(ORIGIN) as handle:
        await handle.send_headers("GET", "/", end_stream=True)
        reader = asyncio.get_running_loop().create_task(handle.read_headers())
        await idle()
        handle.reset()
        async with asyncio.timeout(1.0):
            with pytest.raises(RuntimeError, match="was reset"):
                await reader
        with pytest.raises(RuntimeError, match="was reset"):
            await handle.send_data(b"more")
        peer = server.peers[0]
        await idle()
        assert peer.resets(1) == [(1, ErrorCodes.CANCEL)]


async def test_callers_queued_when_the_pool_closes_learn_their_request_was_not_processed() -> None:
    server = MockServer()
    pool = Pool(connector=server.connector, max_concurrent_streams=1, max_connections_per_origin=1)
    async with pool.acquire(ORIGIN):
        queued = spawn(pool)
        await idle()
        assert pool.stats().waiting == 1
        await pool.aclose()
        with pytest.raises(PoolClosed) as raised:
            await queued
    assert raised.value.may_have_been_processed is False


async def test_request_timeout_while_waiting_for_a_slot_was_not_processed() -> None:
    server = MockServer()
    async with make_pool(server, max_concurrent_streams=1, max_connections_per_origin=1) as pool, pool.acquire(ORIGIN):
        with pytest.raises(RequestTimeout) as raised:
            await pool.request("GET", URL, timeout=0.05)
        assert raised.value.may_have_been_processed is False
        assert pool.stats().origins[ORIGIN].stream_errors == {"RequestTimeout": 1}


async def test_a_second_task_reading_the_same_stream_is_refused_and_the_first_still_gets_the_body() -> None:
    server = MockServer()
    async with make_pool(server) as pool, pool.acquire(ORIGIN) as handle:
        await handle.send_headers("GET", "/", end_stream=True)
        first = asyncio.get_running_loop().create_task(handle.read_headers())
        await idle()
        with pytest.raises(RuntimeError, match="already reading"):
            await handle.read_headers()
        peer = server.peers[0]
        request = await peer.next_request(complete=True)
        request.respond(body=b"whole")
        assert (await first).status == 200
        assert await handle.read_data() == b"whole"
