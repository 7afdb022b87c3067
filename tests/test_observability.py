"""Observability: tracing hooks, debug logging and per-origin error counts.

What the wire decides (TLS versions, resumption, peer addresses, PING round
trips, idle closes) is checked against real nginx on 127.0.0.1; what needs an
exact server move (a reset, a GOAWAY with a given code, a vanishing peer,
garbage bytes) is played with :mod:`h2pool.testing`. Hooks are recorded by
:class:`RecordingHooks`, which also lets a test wait, bounded in time, for a
hook to fire instead of sleeping.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from collections import defaultdict
from typing import Any

import pytest
from h2.errors import ErrorCodes

from h2pool import (
    ConnectError,
    ConnectionClosed,
    ConnectionInfo,
    ConnectionLost,
    ConnectionTerminated,
    H2PoolError,
    Pool,
    PoolHooks,
    ProtocolError,
    ReadTimeout,
    RequestTimeout,
    StreamReset,
)
from h2pool.testing import MemoryTransport, MockServer, PeerRequest, Reply
from tests.conftest import ServerFactory
from tests.servers import Certs, ServerProcess, expected_bytes, free_port
from tests.test_protocol import ORIGIN, URL, make_pool, ok, spawn

pytestmark = pytest.mark.timeout(30)

#: Bounds every wait for a hook: far above what any of them needs.
WAIT = 5.0

#: How long a test holds a stream slot so that another caller has to wait.
HOLD = 0.2


class RecordingHooks(PoolHooks):
    """Records every hook call, in order, and lets a test await one."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self._fired: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)

    def _record(self, name: str, *args: Any) -> None:
        self.calls.append((name, args))
        self._fired[name].set()

    def of(self, name: str) -> list[tuple[Any, ...]]:
        """The arguments of each call of hook ``name``, in order."""
        return [args for called, args in self.calls if called == name]

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    async def wait_for(self, name: str, count: int = 1) -> list[tuple[Any, ...]]:
        """Wait until hook ``name`` has fired ``count`` times; return its calls."""
        try:
            async with asyncio.timeout(WAIT):
                while len(self.of(name)) < count:
                    event = self._fired[name]
                    event.clear()
                    await event.wait()
        except TimeoutError:
            raise AssertionError(
                f"hook {name} fired {len(self.of(name))} times, not {count}, within {WAIT} s"
            ) from None
        return self.of(name)

    def connection_opened(self, conn: ConnectionInfo, seconds: float) -> None:
        self._record("connection_opened", conn, seconds)

    def connection_closed(self, conn: ConnectionInfo, reason: H2PoolError) -> None:
        self._record("connection_closed", conn, reason)

    def tls_handshake(self, conn: ConnectionInfo, resumed: bool, seconds: float) -> None:
        self._record("tls_handshake", conn, resumed, seconds)

    def stream_opened(self, conn: ConnectionInfo, stream_id: int) -> None:
        self._record("stream_opened", conn, stream_id)

    def stream_closed(self, conn: ConnectionInfo, stream_id: int, error: H2PoolError | None) -> None:
        self._record("stream_closed", conn, stream_id, error)

    def goaway(self, conn: ConnectionInfo, error: ConnectionTerminated) -> None:
        self._record("goaway", conn, error)

    def ping_rtt(self, conn: ConnectionInfo, seconds: float) -> None:
        self._record("ping_rtt", conn, seconds)

    def slot_acquired(self, origin: str, waited: float) -> None:
        self._record("slot_acquired", origin, waited)


class RaisingHooks(PoolHooks):
    """A broken tracer: every hook raises."""

    def _fail(self, name: str) -> None:
        raise RuntimeError(f"tracer bug in {name}")

    def connection_opened(self, conn: ConnectionInfo, seconds: float) -> None:
        self._fail("connection_opened")

    def connection_closed(self, conn: ConnectionInfo, reason: H2PoolError) -> None:
        self._fail("connection_closed")

    def tls_handshake(self, conn: ConnectionInfo, resumed: bool, seconds: float) -> None:
        self._fail("tls_handshake")

    def stream_opened(self, conn: ConnectionInfo, stream_id: int) -> None:
        self._fail("stream_opened")

    def stream_closed(self, conn: ConnectionInfo, stream_id: int, error: H2PoolError | None) -> None:
        self._fail("stream_closed")

    def slot_acquired(self, origin: str, waited: float) -> None:
        self._fail("slot_acquired")


class CountingAddress(tuple[str, int]):
    """A peer address that counts how often it is turned into text."""

    formatted = 0

    def __str__(self) -> str:
        type(self).formatted += 1
        return super().__str__()

    def __repr__(self) -> str:
        type(self).formatted += 1
        return super().__repr__()

    def __format__(self, spec: str) -> str:
        type(self).formatted += 1
        return super().__format__(spec)


def h2pool_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == "h2pool"]


def debug_messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in h2pool_records(caplog) if record.levelno == logging.DEBUG]


def pinned_context(certs: Certs, version: ssl.TLSVersion) -> ssl.SSLContext:
    context = certs.client_ssl_context()
    context.minimum_version = version
    context.maximum_version = version
    return context


def never_answer(request: PeerRequest) -> None:
    """A handler that leaves every request unanswered."""


async def acquire_and_release(pool: Pool) -> None:
    async with pool.acquire(ORIGIN):
        pass


def origin_stats(pool: Pool, origin: str = ORIGIN) -> tuple[dict[str, int], dict[str, int]]:
    """(stream_errors, connection_errors) of ``origin``."""
    stats = pool.stats().origins[origin]
    return stats.stream_errors, stats.connection_errors


# Hooks against nginx: what the wire reports.


async def test_connection_opened_reports_origin_peer_address_tls_version_and_a_unique_id(
    nginx: ServerProcess, certs: Certs
) -> None:
    hooks = RecordingHooks()
    context = pinned_context(certs, ssl.TLSVersion.TLSv1_3)
    # max_idle 0 closes each connection after its request, so each request dials.
    async with Pool(context, hooks=hooks, max_idle_connections_per_origin=0) as pool:
        for _ in range(2):
            assert (await pool.request("GET", nginx.url("/small"))).status == 200
        opened = await hooks.wait_for("connection_opened", 2)
    infos = [info for info, _ in opened]
    assert [info.origin for info in infos] == [nginx.origin] * 2
    assert [info.remote_address for info in infos] == ["127.0.0.1"] * 2
    assert [info.tls_version for info in infos] == ["TLSv1.3"] * 2
    assert all(info.tls_cipher is not None and info.tls_cipher.startswith("TLS_") for info in infos)
    assert infos[0].id != infos[1].id
    assert all(seconds > 0 for _, seconds in opened)


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["tls1.2", "tls1.3"])
async def test_tls_handshake_is_full_first_and_resumed_on_the_next_connection(
    nginx: ServerProcess, certs: Certs, version: ssl.TLSVersion
) -> None:
    hooks = RecordingHooks()
    async with Pool(pinned_context(certs, version), hooks=hooks, max_idle_connections_per_origin=0) as pool:
        await pool.request("GET", nginx.url("/small"))
        # The first connection is closed once idle, before the second dials.
        await hooks.wait_for("connection_closed")
        await pool.request("GET", nginx.url("/small"))
        handshakes = await hooks.wait_for("tls_handshake", 2)
        stats = pool.stats().origins[nginx.origin]
        assert (stats.handshakes_full, stats.handshakes_resumed) == (1, 1)
    assert [resumed for _, resumed, _ in handshakes] == [False, True]
    first, second = (info for info, _, _ in handshakes)
    assert first is not second
    assert (first.tls_resumed, second.tls_resumed) == (False, True)
    expected_version = {ssl.TLSVersion.TLSv1_2: "TLSv1.2", ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[version]
    assert first.tls_version == second.tls_version == expected_version
    assert all(seconds > 0 for _, _, seconds in handshakes)


async def test_stream_opened_and_closed_without_error_for_a_normal_request(
    nginx: ServerProcess, client_ssl_context: ssl.SSLContext
) -> None:
    hooks = RecordingHooks()
    async with Pool(client_ssl_context, hooks=hooks) as pool:
        response = await pool.request("GET", nginx.url("/small"))
        ((opened_on, stream_id),) = hooks.of("stream_opened")
        ((closed_on, closed_id, error),) = hooks.of("stream_closed")
        ((conn, _),) = hooks.of("connection_opened")
        stream_names = [name for name in hooks.names() if name.startswith("stream_")]
    assert response.content == expected_bytes("small")
    assert stream_names == ["stream_opened", "stream_closed"]
    assert opened_on is closed_on is conn
    assert stream_id == closed_id == 1
    assert error is None


async def test_ping_rtt_is_reported_after_a_health_ping(
    nginx: ServerProcess, client_ssl_context: ssl.SSLContext
) -> None:
    hooks = RecordingHooks()
    async with Pool(client_ssl_context, hooks=hooks, ping_interval=0.05) as pool:
        await pool.request("GET", nginx.url("/small"))
        # Quiet for ping_interval: the keepalive timer sends a PING, nginx answers.
        (info, seconds), *_ = await hooks.wait_for("ping_rtt")
        ((conn, _),) = hooks.of("connection_opened")
    assert info is conn
    assert 0 < seconds < pool.config.ping_timeout


async def test_connection_closed_after_idle_timeout_reports_connection_closed(
    nginx: ServerProcess, client_ssl_context: ssl.SSLContext
) -> None:
    hooks = RecordingHooks()
    async with Pool(client_ssl_context, hooks=hooks, idle_timeout=0.1) as pool:
        await pool.request("GET", nginx.url("/small"))
        ((info, reason),) = await hooks.wait_for("connection_closed")
        ((conn, _),) = hooks.of("connection_opened")
    assert info is conn
    assert type(reason) is ConnectionClosed
    assert "idle" in str(reason)


# Hooks against a scripted peer: exact server moves.


async def test_stream_closed_carries_the_stream_reset_when_the_server_resets() -> None:
    hooks = RecordingHooks()
    server = MockServer(lambda request: Reply(reset=ErrorCodes.INTERNAL_ERROR))
    async with make_pool(server, hooks=hooks) as pool:
        with pytest.raises(StreamReset):
            await pool.request("GET", URL)
    ((_, stream_id, error),) = hooks.of("stream_closed")
    assert stream_id == 1
    assert isinstance(error, StreamReset)
    assert error.error_code == ErrorCodes.INTERNAL_ERROR


async def test_stream_closed_carries_the_read_timeout() -> None:
    hooks = RecordingHooks()
    async with make_pool(MockServer(never_answer), hooks=hooks, read_timeout=0.1) as pool:
        with pytest.raises(ReadTimeout):
            await pool.request("GET", URL)
        # The same failure is counted as a stream error: a tracer must not see success.
        assert origin_stats(pool)[0] == {"ReadTimeout": 1}
    ((_, stream_id, error),) = hooks.of("stream_closed")
    assert stream_id == 1
    assert isinstance(error, ReadTimeout)


async def test_goaway_hook_reports_last_stream_id_and_error_code() -> None:
    hooks = RecordingHooks()
    server = MockServer(ok)
    async with make_pool(server, hooks=hooks) as pool:
        await pool.request("GET", URL)
        server.peers[0].goaway(last_stream_id=1, error_code=ErrorCodes.ENHANCE_YOUR_CALM, debug=b"slow down")
        ((info, error),) = await hooks.wait_for("goaway")
        ((conn, _),) = hooks.of("connection_opened")
    assert info is conn
    assert isinstance(error, ConnectionTerminated)
    assert error.last_stream_id == 1
    assert error.error_code == ErrorCodes.ENHANCE_YOUR_CALM
    assert "slow down" in str(error)


async def test_connection_closed_reports_connection_lost_when_the_server_vanishes() -> None:
    hooks = RecordingHooks()
    server = MockServer()
    async with make_pool(server, hooks=hooks) as pool:
        task = spawn(pool)
        peer = await server.next_peer()
        await peer.next_request(complete=True)
        peer.vanish()
        with pytest.raises(ConnectionLost):
            await task
        ((_, reason),) = await hooks.wait_for("connection_closed")
    assert type(reason) is ConnectionLost


async def test_slot_acquired_reports_almost_no_wait_for_a_free_slot() -> None:
    hooks = RecordingHooks()
    async with make_pool(MockServer(), hooks=hooks) as pool:
        # The first acquire waits for the connection's set-up; the second finds it ready.
        for _ in range(2):
            async with pool.acquire(ORIGIN):
                pass
    (_, _), (origin, waited) = hooks.of("slot_acquired")
    assert origin == ORIGIN
    # No await between the two clock reads: only a preempted process waits at all.
    assert 0 <= waited < HOLD / 2


async def test_slot_acquired_reports_the_time_a_caller_waited_for_a_busy_slot() -> None:
    hooks = RecordingHooks()
    async with make_pool(MockServer(), hooks=hooks, max_concurrent_streams=1, max_connections_per_origin=1) as pool:
        async with pool.acquire(ORIGIN):
            waiter = asyncio.create_task(acquire_and_release(pool))
            await asyncio.sleep(HOLD)
            assert not waiter.done(), "the only slot is held: the second caller must wait"
        await asyncio.wait_for(waiter, WAIT)
    (_, _), (origin, waited) = hooks.of("slot_acquired")
    assert origin == ORIGIN
    assert HOLD <= waited < WAIT


async def test_a_raising_hook_is_logged_and_the_request_still_succeeds(
    nginx: ServerProcess, client_ssl_context: ssl.SSLContext, caplog: pytest.LogCaptureFixture
) -> None:
    async with Pool(client_ssl_context, hooks=RaisingHooks()) as pool:
        response = await pool.request("GET", nginx.url("/small"))
    assert response.status == 200
    assert response.content == expected_bytes("small")
    failed: dict[str, str] = {}
    for record in h2pool_records(caplog):
        match = re.fullmatch(r"h2pool hook (\w+) raised", record.getMessage())
        if match is not None:
            assert record.levelno == logging.ERROR
            assert record.exc_info is not None and isinstance(record.exc_info[1], RuntimeError)
            failed[match.group(1)] = str(record.exc_info[1])
    expected = {"connection_opened", "tls_handshake", "slot_acquired", "stream_opened", "stream_closed"}
    # connection_closed ran as the pool closed.
    assert expected | {"connection_closed"} <= set(failed)
    assert all(message == f"tracer bug in {name}" for name, message in failed.items())


async def test_without_hooks_requests_and_counters_work_as_before(
    nginx: ServerProcess, client_ssl_context: ssl.SSLContext
) -> None:
    async with Pool(client_ssl_context, hooks=None) as pool:
        responses = [await pool.request("GET", nginx.url("/small")) for _ in range(3)]
        stats = pool.stats().origins[nginx.origin]
    assert [response.content for response in responses] == [expected_bytes("small")] * 3
    assert (stats.connections, stats.handshakes_full) == (1, 1)
    assert stats.stream_errors == stats.connection_errors == {}


# Logging on the "h2pool" logger.


async def test_debug_log_reports_connection_open_and_close(
    nginx: ServerProcess, client_ssl_context: ssl.SSLContext, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="h2pool")
    hooks = RecordingHooks()
    async with Pool(client_ssl_context, hooks=hooks) as pool:
        await pool.request("GET", nginx.url("/small"))
    ((info, _),) = hooks.of("connection_opened")
    messages = debug_messages(caplog)
    prefix = f"connection #{info.id} to {nginx.origin}"
    assert any(re.fullmatch(rf"{re.escape(prefix)} \(.*127\.0\.0\.1.*\) open after [\d.]+ ms", m) for m in messages)
    assert any(m.startswith(f"{prefix} closed: ") and "the pool was closed" in m for m in messages)


async def test_debug_log_reports_a_goaway(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="h2pool")
    hooks = RecordingHooks()
    server = MockServer(ok)
    async with make_pool(server, hooks=hooks) as pool:
        await pool.request("GET", URL)
        server.peers[0].goaway(last_stream_id=1, error_code=ErrorCodes.NO_ERROR)
        ((info, _),) = await hooks.wait_for("goaway")
    expected = f"connection #{info.id} to {ORIGIN}: {ORIGIN}: connection terminated by GOAWAY (NO_ERROR, last stream 1)"
    assert expected in debug_messages(caplog)


async def test_debug_log_reports_a_replay(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="h2pool")
    server = MockServer()
    async with make_pool(server) as pool:
        task = spawn(pool, "/replayed")
        first = await server.next_peer()
        await first.next_request(complete=True)
        server.handler = ok
        # Stream 1 was never processed: the request is replayed on a new connection.
        first.goaway(last_stream_id=0)
        assert (await task).content == b"ok /replayed"
    replays = [m for m in debug_messages(caplog) if m.startswith("replaying ")]
    assert len(replays) == 1
    assert replays[0].startswith(f"replaying GET {ORIGIN}/replayed after ConnectionTerminated(")


@pytest.mark.parametrize(("level", "logged"), [(logging.DEBUG, True), (logging.WARNING, False)], ids=["debug", "off"])
async def test_debug_messages_are_formatted_only_when_debug_is_enabled(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, level: int, logged: bool
) -> None:
    """The peer address goes into the "open" message: it is turned into text only if that message is emitted.

    With DEBUG on, the same run formats it (the control that shows the probe
    works); with the logger at WARNING nothing may touch it, as an eagerly
    formatted message (an f-string) would.
    """
    caplog.set_level(level, logger="h2pool")
    original = MemoryTransport.get_extra_info

    def counting_peername(transport: MemoryTransport, name: str, default: Any = None) -> Any:
        return CountingAddress(("127.0.0.1", 443)) if name == "peername" else original(transport, name, default)

    monkeypatch.setattr(MemoryTransport, "get_extra_info", counting_peername)
    monkeypatch.setattr(CountingAddress, "formatted", 0)
    hooks = RecordingHooks()
    async with make_pool(MockServer(ok), hooks=hooks) as pool:
        await pool.request("GET", URL)
    ((info, _),) = hooks.of("connection_opened")
    assert info.remote_address == "127.0.0.1"
    assert logging.getLogger("h2pool").isEnabledFor(logging.DEBUG) is logged
    assert (CountingAddress.formatted > 0) is logged
    assert bool(debug_messages(caplog)) is logged


# Per-origin error counts: stream errors.


async def test_stream_errors_count_a_server_reset_as_stream_reset() -> None:
    server = MockServer(lambda request: Reply(reset=ErrorCodes.INTERNAL_ERROR))
    async with make_pool(server) as pool:
        with pytest.raises(StreamReset):
            await pool.request("GET", URL)
        assert origin_stats(pool) == ({"StreamReset": 1}, {})


async def test_stream_errors_count_a_read_timeout() -> None:
    async with make_pool(MockServer(never_answer), read_timeout=0.1) as pool:
        with pytest.raises(ReadTimeout):
            await pool.request("GET", URL)
        assert origin_stats(pool) == ({"ReadTimeout": 1}, {})


async def test_stream_errors_count_a_request_timeout_while_waiting_for_the_response_head() -> None:
    async with make_pool(MockServer(never_answer)) as pool:
        with pytest.raises(RequestTimeout):
            await pool.request("GET", URL, timeout=0.1)
        assert origin_stats(pool) == ({"RequestTimeout": 1}, {})


async def test_stream_errors_count_a_request_timeout_while_reading_the_body() -> None:
    def head_only(request: PeerRequest) -> None:
        request.peer.send_headers(request.stream_id, [(":status", "200")])

    async with make_pool(MockServer(head_only)) as pool:
        with pytest.raises(RequestTimeout):
            await pool.request("GET", URL, timeout=0.1)
        assert origin_stats(pool) == ({"RequestTimeout": 1}, {})


async def test_stream_errors_count_connection_lost_once_per_stream_of_a_vanished_peer() -> None:
    server = MockServer()
    async with make_pool(server) as pool:
        tasks = [spawn(pool, f"/{n}") for n in range(2)]
        peer = await server.next_peer()
        for _ in tasks:
            await peer.next_request(complete=True)
        peer.vanish()
        for outcome in await asyncio.gather(*tasks, return_exceptions=True):
            assert isinstance(outcome, ConnectionLost)
        assert origin_stats(pool)[0] == {"ConnectionLost": 2}


# Per-origin error counts: connection errors.


async def test_connection_errors_count_a_refused_port_as_connect_error(client_ssl_context: ssl.SSLContext) -> None:
    # Nothing listens there: bound and released at once.
    origin = f"https://127.0.0.1:{free_port('127.0.0.1')}"
    async with Pool(client_ssl_context) as pool:
        with pytest.raises(ConnectError):
            await asyncio.wait_for(pool.request("GET", f"{origin}/"), WAIT)
        assert origin_stats(pool, origin) == ({}, {"ConnectError": 1})


async def test_connection_errors_count_a_peer_sending_garbage_as_protocol_error() -> None:
    server = MockServer(send_preface=False)
    async with make_pool(server) as pool:
        task = spawn(pool)
        peer = await server.next_peer()
        await peer.next_request(complete=True)
        # An HTTP/1.1 answer to an HTTP/2 preface: no valid frame header.
        peer.send_raw(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        with pytest.raises(ProtocolError):
            await task
        assert origin_stats(pool)[1] == {"ProtocolError": 1}


async def test_connection_errors_count_a_vanished_peer_as_connection_lost() -> None:
    hooks = RecordingHooks()
    server = MockServer(ok)
    async with make_pool(server, hooks=hooks) as pool:
        await pool.request("GET", URL)
        server.peers[0].vanish()
        await hooks.wait_for("connection_closed")
        assert origin_stats(pool) == ({}, {"ConnectionLost": 1})


async def test_connection_errors_do_not_count_an_idle_close(
    nginx: ServerProcess, client_ssl_context: ssl.SSLContext
) -> None:
    hooks = RecordingHooks()
    # The minimum keeps one of the two connections, and with it the origin's statistics.
    async with Pool(client_ssl_context, hooks=hooks, idle_timeout=0.1, min_connections_per_origin=1) as pool:
        await pool.prewarm(nginx.origin, connections=2)
        ((_, reason),) = await hooks.wait_for("connection_closed")
        assert "idle" in str(reason)
        assert origin_stats(pool, nginx.origin) == ({}, {})


async def test_connection_errors_do_not_count_a_graceful_goaway_from_nginx(
    server_factory: ServerFactory, client_ssl_context: ssl.SSLContext
) -> None:
    # nginx ends each connection with GOAWAY(NO_ERROR) after one request.
    server = server_factory("nginx", keepalive_requests=1)
    hooks = RecordingHooks()
    async with Pool(client_ssl_context, hooks=hooks) as pool:
        assert (await pool.request("GET", server.url("/small"))).status == 200
        ((_, goaway),) = await hooks.wait_for("goaway")
        await hooks.wait_for("connection_closed")
        assert goaway.error_code == ErrorCodes.NO_ERROR
        assert origin_stats(pool, server.origin) == ({}, {})


async def test_connection_errors_count_a_goaway_with_an_error_code() -> None:
    hooks = RecordingHooks()
    server = MockServer(ok)
    async with make_pool(server, hooks=hooks) as pool:
        await pool.request("GET", URL)
        server.peers[0].goaway(last_stream_id=1, error_code=ErrorCodes.ENHANCE_YOUR_CALM)
        await hooks.wait_for("connection_closed")
        assert origin_stats(pool)[1] == {"ConnectionTerminated": 1}


async def test_error_counts_survive_the_idle_close_of_the_origins_last_connection() -> None:
    hooks = RecordingHooks()
    server = MockServer(lambda request: Reply(reset=ErrorCodes.INTERNAL_ERROR))
    async with make_pool(server, hooks=hooks, idle_timeout=0.1) as pool:
        with pytest.raises(StreamReset):
            await pool.request("GET", URL)
        assert origin_stats(pool)[0] == {"StreamReset": 1}
        ((_, reason),) = await hooks.wait_for("connection_closed")
        assert "idle" in str(reason)
        # A monitor polling stats() must not see the origin's error count drop back to nothing.
        assert ORIGIN in pool.stats().origins, "the origin's statistics were dropped with its last connection"
        assert origin_stats(pool)[0] == {"StreamReset": 1}
