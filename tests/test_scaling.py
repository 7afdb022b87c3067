"""Scaling the pool: TLS session reuse, pre-warming, a minimum of connections,
predictive dialling and resizing under load.

TLS tests run against real nginx on 127.0.0.1 (they need the pool's own TLS
path, so no ``connector``); the rest use :class:`h2pool.testing.MockServer`,
whose peers announce an exact stream limit and answer only when told to.
Where a test has to see the pool's connections or its session cache it
reaches into ``pool._origins`` / ``pool._sessions``: no public API exposes
them, and the behaviour under test is exactly what happens to them.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import pytest
from h2.settings import SettingCodes

from h2pool import ConnectError, Handle, Pool, Response, TLSError
from h2pool.connection import Connection
from h2pool.origin import parse_origin
from h2pool.testing import MockServer, PeerRequest, Reply, ScriptedPeer, idle
from h2pool.tls import SessionCache
from h2pool.tls_transport import open_tls
from tests.conftest import ServerFactory, require_server
from tests.servers import Certs, ServerProcess, free_port, make_certs, start_nginx

pytestmark = pytest.mark.timeout(30)

ORIGIN = "https://example.test"
PEER_LIMIT = 10
LIMIT_10: dict[int, int] = {SettingCodes.MAX_CONCURRENT_STREAMS: PEER_LIMIT}


# Helpers.


def _connections(pool: Pool, origin: str) -> list[Connection]:
    """The pool's connections of ``origin``, oldest first."""
    state = pool._origins.get(parse_origin(origin))
    return list(state.slots.ledgers) if state is not None else []


def _conn_of(response: Response) -> Connection:
    return response._handle._conn


def _handshakes(pool: Pool, origin: str) -> tuple[int, int]:
    """(full, resumed) TLS handshakes of ``origin`` so far."""
    stats = pool.stats().origins[origin]
    return stats.handshakes_full, stats.handshakes_resumed


def _pinned_context(certs: Certs, version: ssl.TLSVersion) -> ssl.SSLContext:
    context = certs.client_ssl_context()
    context.minimum_version = version
    context.maximum_version = version
    return context


async def _until(predicate: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    """Poll ``predicate`` (for effects of timers and real sockets), bounded in time."""
    try:
        async with asyncio.timeout(timeout):
            # The pool offers no event for these; a short poll is bounded by the timeout.
            while not predicate():  # noqa: ASYNC110
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"not within {timeout} s: {what}") from None


@dataclass
class FakeSession:
    """What SessionCache reads of an ``ssl.SSLSession`` (which cannot be built by hand)."""

    ticket_lifetime_hint: int
    timeout: int


def _fake_session(hint: int, timeout: int = 7200) -> ssl.SSLSession:
    return cast(ssl.SSLSession, FakeSession(hint, timeout))


class ClockAheadCache(SessionCache):
    """A session cache that sees time ``ahead`` seconds later than the loop does.

    Lets a test age the real sessions nginx handed out past their lifetime
    (10 minutes) without waiting for it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.ahead = 0.0

    def get(self, host: str, port: int, now: float) -> ssl.SSLSession | None:
        return super().get(host, port, now + self.ahead)


class HeldReplies:
    """A MockServer handler that answers each request only once the test releases it."""

    def __init__(self) -> None:
        self.pending: list[tuple[PeerRequest, asyncio.Future[None]]] = []
        self.passing = False

    def __call__(self, request: PeerRequest) -> Reply | Awaitable[Reply]:
        if self.passing:
            return Reply(body=b"ok")
        gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pending.append((request, gate))
        return self._answer(gate)

    @staticmethod
    async def _answer(gate: asyncio.Future[None]) -> Reply:
        await gate
        return Reply(body=b"ok")

    def release(self, where: Callable[[PeerRequest], bool] = lambda request: True, count: int | None = None) -> int:
        released = 0
        for request, gate in self.pending:
            if count is not None and released >= count:
                break
            if not gate.done() and where(request):
                gate.set_result(None)
                released += 1
        return released

    def release_all(self) -> None:
        """Answer every held request, and from now on every new one at once."""
        self.passing = True
        self.release()


def _on(peer: ScriptedPeer) -> Callable[[PeerRequest], bool]:
    return lambda request: request.peer is peer


def _requests_at(server: MockServer) -> list[int]:
    return [len(peer.requests) for peer in server.peers]


def _start_requests(pool: Pool, count: int, prefix: str = "r") -> list[asyncio.Task[Response]]:
    return [asyncio.create_task(pool.request("GET", f"{ORIGIN}/{prefix}{i}")) for i in range(count)]


# SessionCache, without any handshake.


def test_session_cache_offers_a_session_only_to_the_exact_host_and_port() -> None:
    cache = SessionCache()
    session = _fake_session(600)
    cache.put("127.0.0.1", 8443, session, now=0.0)
    assert cache.get("127.0.0.1", 8443, now=1.0) is session
    # The same server under another name, or another port of the same host,
    # would skip verification of a name the session never verified.
    assert cache.get("localhost", 8443, now=1.0) is None
    assert cache.get("alt.localhost", 8443, now=1.0) is None
    assert cache.get("127.0.0.1", 443, now=1.0) is None
    assert cache.get("127.0.0.1", 8443, now=1.0) is session


def test_session_cache_expires_an_entry_at_its_ticket_lifetime_hint_and_drops_it() -> None:
    cache = SessionCache()
    session = _fake_session(hint=100, timeout=7200)
    cache.put("localhost", 443, session, now=1000.0)
    assert cache.get("localhost", 443, now=1099.5) is session
    assert cache.get("localhost", 443, now=1100.0) is None
    assert len(cache) == 0


def test_session_cache_bounds_an_entry_without_a_lifetime_hint_by_the_session_timeout() -> None:
    cache = SessionCache()
    session = _fake_session(hint=0, timeout=300)
    cache.put("localhost", 443, session, now=0.0)
    assert cache.get("localhost", 443, now=299.0) is session
    assert cache.get("localhost", 443, now=300.0) is None


# TLS session reuse against nginx.


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["tls1.2", "tls1.3"])
async def test_second_connection_resumes_the_tls_session(
    nginx: ServerProcess, certs: Certs, version: ssl.TLSVersion
) -> None:
    # max_idle 0 closes each connection after its request, so every request dials.
    async with Pool(_pinned_context(certs, version), max_idle_connections_per_origin=0) as pool:
        async with pool.stream("GET", nginx.url("/small")) as first:
            first_conn = _conn_of(first)
            assert first_conn.transport is not None
            negotiated = first_conn.transport.get_extra_info("ssl_object").version()
            await first.aread()
        assert negotiated == {ssl.TLSVersion.TLSv1_2: "TLSv1.2", ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[version]
        assert _handshakes(pool, nginx.origin) == (1, 0)
        second = await pool.request("GET", nginx.url("/small"))
        second_conn = _conn_of(second)
        assert _handshakes(pool, nginx.origin) == (1, 1)
        assert second_conn is not first_conn
    assert first.status == second.status == 200
    assert not first_conn.tls_resumed
    assert second_conn.tls_resumed


async def test_after_a_server_restart_the_stale_session_falls_back_to_a_full_handshake(
    server_factory: ServerFactory, certs: Certs
) -> None:
    server = server_factory("nginx")
    async with Pool(certs.client_ssl_context(), max_idle_connections_per_origin=0) as pool:
        await pool.request("GET", server.url("/small"))
        assert _conn_of(await pool.request("GET", server.url("/small"))).tls_resumed
        # New ticket keys and an empty session cache on the server's side.
        await asyncio.to_thread(server.restart)
        assert pool._sessions is not None and len(pool._sessions) == 1, "the stale session is still cached"
        response = await pool.request("GET", server.url("/small"))
        assert _handshakes(pool, server.origin) == (2, 1)
    assert response.status == 200
    assert not _conn_of(response).tls_resumed


async def test_a_session_declined_after_a_restart_is_replaced_and_the_next_connection_resumes(
    server_factory: ServerFactory, certs: Certs
) -> None:
    server = server_factory("nginx")
    host, port = server.address
    async with Pool(certs.client_ssl_context(), max_idle_connections_per_origin=0) as pool:
        sessions = pool._sessions
        assert sessions is not None
        await pool.request("GET", server.url("/small"))
        stale = sessions.get(host, port, asyncio.get_running_loop().time())
        assert stale is not None
        await asyncio.to_thread(server.restart)
        await pool.request("GET", server.url("/small"))
        fresh = sessions.get(host, port, asyncio.get_running_loop().time())
        response = await pool.request("GET", server.url("/small"))
        assert _handshakes(pool, server.origin) == (2, 1)
    assert fresh is not None and fresh.id != stale.id
    assert _conn_of(response).tls_resumed


async def test_the_fallback_handshake_after_a_restart_verifies_the_certificate(
    tmp_path: Path, certs: Certs, docroot: Path
) -> None:
    """A stale session must not let a new server skip verification: one with an untrusted certificate fails."""
    require_server("nginx")
    port = free_port()
    untrusted = make_certs(tmp_path / "untrusted-certs")
    servers: list[ServerProcess] = []
    try:
        servers.append(start_nginx(tmp_path / "trusted", certs, port=port, docroot=docroot))
        async with Pool(certs.client_ssl_context(), max_idle_connections_per_origin=0) as pool:
            await pool.request("GET", servers[0].url("/small"))
            assert pool._sessions is not None and len(pool._sessions) == 1
            await asyncio.to_thread(servers[0].stop)
            servers.append(start_nginx(tmp_path / "impostor", untrusted, port=port, docroot=docroot))
            with pytest.raises(TLSError, match="certificate verification failed"):
                await pool.request("GET", servers[1].url("/small"))
    finally:
        for server in servers:
            server.stop()


async def test_a_session_for_one_hostname_is_never_offered_to_another(nginx: ServerProcess, certs: Certs) -> None:
    """127.0.0.1 and localhost reach the same nginx; each name gets its own full, verified handshake."""
    context = certs.client_ssl_context()
    by_ip = nginx.url("/small")
    by_name = f"https://localhost:{nginx.port}/small"
    by_name_origin = f"https://localhost:{nginx.port}"
    async with Pool(context, max_idle_connections_per_origin=0) as pool:
        await pool.request("GET", by_ip)
        assert pool._sessions is not None
        session = pool._sessions.get("127.0.0.1", nginx.port, asyncio.get_running_loop().time())
        assert session is not None
        # The premise: nginx itself would resume this session under the other
        # name, so only the client's refusal to offer it makes the handshake full.
        sock = socket.create_connection(("127.0.0.1", nginx.port))
        sock.setblocking(False)
        transport = await open_tls(asyncio.Protocol(), sock, context, "localhost", session)
        try:
            assert transport.get_extra_info("ssl_object").session_reused
        finally:
            # Not a TLS shutdown: nginx's own bytes may cross our close_notify.
            transport.abort()
        first_by_name = await pool.request("GET", by_name)
        second_by_name = await pool.request("GET", by_name)
        assert _handshakes(pool, by_name_origin) == (1, 1)
    assert first_by_name.status == 200
    assert not _conn_of(first_by_name).tls_resumed
    assert _conn_of(second_by_name).tls_resumed


async def test_an_expired_session_is_not_offered(nginx: ServerProcess, certs: Certs) -> None:
    async with Pool(certs.client_ssl_context(), max_idle_connections_per_origin=0) as pool:
        cache = pool._sessions = ClockAheadCache()
        await pool.request("GET", nginx.url("/small"))
        session = cache.get("127.0.0.1", nginx.port, asyncio.get_running_loop().time())
        assert session is not None
        lifetime = session.ticket_lifetime_hint
        # nginx's hint (ssl_session_timeout 10m) is far below the session's own 2 h timeout.
        assert 2 < lifetime < session.timeout
        cache.ahead = lifetime - 1
        just_before = await pool.request("GET", nginx.url("/small"))
        cache.ahead = lifetime + 1
        just_after = await pool.request("GET", nginx.url("/small"))
        assert _handshakes(pool, nginx.origin) == (2, 1)
    assert _conn_of(just_before).tls_resumed
    assert not _conn_of(just_after).tls_resumed


async def test_with_tls_session_reuse_off_no_connection_resumes(nginx: ServerProcess, certs: Certs) -> None:
    async with Pool(certs.client_ssl_context(), max_idle_connections_per_origin=0, tls_session_reuse=False) as pool:
        responses = [await pool.request("GET", nginx.url("/small")) for _ in range(3)]
        assert _handshakes(pool, nginx.origin) == (3, 0)
    assert len({id(_conn_of(response)) for response in responses}) == 3
    assert not any(_conn_of(response).tls_resumed for response in responses)


# Pre-warming.


async def test_prewarm_opens_settled_connections(nginx: ServerProcess, certs: Certs) -> None:
    async with Pool(certs.client_ssl_context()) as pool:
        await pool.prewarm(nginx.origin, connections=2)
        stats = pool.stats().origins[nginx.origin]
        conns = _connections(pool, nginx.origin)
        assert (stats.connections, stats.connecting, stats.streams_open) == (2, 0, 0)
        assert [conn.slots.settled for conn in conns] == [True, True]
        assert [conn.slots.peer_limit for conn in conns] == [nginx.options["max_concurrent_streams"]] * 2


async def test_first_request_after_prewarm_performs_no_handshake_and_no_dial(
    nginx: ServerProcess, certs: Certs
) -> None:
    async with Pool(certs.client_ssl_context()) as pool:
        await pool.prewarm(nginx.origin, connections=2)
        before = _connections(pool, nginx.origin)
        handshakes = _handshakes(pool, nginx.origin)
        response = await pool.request("GET", nginx.url("/small"))
        assert response.status == 200
        assert _conn_of(response) in before
        assert _connections(pool, nginx.origin) == before
        assert _handshakes(pool, nginx.origin) == handshakes == (2, 0)


async def test_prewarm_of_an_unreachable_origin_raises_connect_error(certs: Certs) -> None:
    origin = f"https://127.0.0.1:{free_port()}"
    async with Pool(certs.client_ssl_context(), connect_timeout=5) as pool:
        with pytest.raises(ConnectError) as caught:
            await pool.prewarm(origin, connections=2)
        assert caught.value.origin == origin
        assert pool.stats().connections == 0


async def test_prewarmed_unused_connections_close_after_idle_timeout(nginx: ServerProcess, certs: Certs) -> None:
    idle_timeout = 0.4
    async with Pool(certs.client_ssl_context(), idle_timeout=idle_timeout) as pool:
        await pool.prewarm(nginx.origin, connections=2)
        await asyncio.sleep(idle_timeout / 2)
        assert pool.stats().connections == 2, "closed before idle_timeout"
        conns = _connections(pool, nginx.origin)
        await _until(lambda: pool.stats().connections == 0, "prewarmed connections closed when idle")
    assert all(conn.error is not None for conn in conns)


async def test_prewarmed_unused_connections_of_a_custom_connector_close_after_idle_timeout() -> None:
    server = MockServer(settings=LIMIT_10)
    async with Pool(connector=server.connector, idle_timeout=0.2) as pool:
        await pool.prewarm(ORIGIN, connections=2)
        await _until(lambda: pool.stats().connections == 0, "prewarmed connections closed when idle", timeout=2.0)
    assert all(peer.client_closed for peer in server.peers)


# A minimum of connections per origin.


async def test_min_connections_are_kept_open_through_idle_sweeps(nginx: ServerProcess, certs: Certs) -> None:
    idle_timeout = 0.15
    async with Pool(certs.client_ssl_context(), min_connections_per_origin=2, idle_timeout=idle_timeout) as pool:
        # One connection above the minimum shows that the sweeps do run.
        await pool.prewarm(nginx.origin, connections=3)
        original = _connections(pool, nginx.origin)
        await _until(lambda: pool.stats().connections < 3, "the connection above the minimum closed")
        await asyncio.sleep(idle_timeout * 3)
        kept = _connections(pool, nginx.origin)
        assert pool.stats().origins[nginx.origin].connections == 2
        assert set(kept) <= set(original), "the minimum was kept by closing and redialling"


async def test_idle_sweeps_do_not_spin_while_the_minimum_holds_connections_open(
    nginx: ServerProcess, certs: Certs
) -> None:
    idle_timeout = 0.1
    async with Pool(certs.client_ssl_context(), min_connections_per_origin=2, idle_timeout=idle_timeout) as pool:
        sweep = pool._sweep_idle
        sweeps = 0

        def counting_sweep() -> None:
            nonlocal sweeps
            sweeps += 1
            sweep()

        pool._sweep_idle = counting_sweep  # type: ignore[method-assign]
        await pool.prewarm(nginx.origin, connections=2)
        await asyncio.sleep(idle_timeout * 5)
        assert pool.stats().connections == 2
    # A sweep per idle_timeout or so; a sweep rescheduled at an expiry already
    # past runs on every loop iteration instead (tens of thousands).
    assert 1 <= sweeps <= 20


async def test_a_lost_connection_is_replaced_up_to_the_minimum() -> None:
    server = MockServer(settings=LIMIT_10)
    async with Pool(connector=server.connector, min_connections_per_origin=2) as pool:
        await pool.prewarm(ORIGIN, connections=2)
        server.peers[0].vanish()
        await idle()
        stats = pool.stats().origins[ORIGIN]
        assert (stats.connections, stats.connecting) == (2, 0)
        assert len(server.peers) == 3
        assert _connections(pool, ORIGIN)[0] is server.connections[1]


async def test_replacing_a_lost_connection_of_an_unreachable_origin_does_not_redial_in_a_tight_loop() -> None:
    server = MockServer(settings=LIMIT_10)
    dials = 0

    async def counting_connector(conn: Connection) -> None:
        nonlocal dials
        dials += 1
        await server.connector(conn)

    async with Pool(connector=counting_connector, min_connections_per_origin=2) as pool:
        await pool.prewarm(ORIGIN, connections=2)
        dials = 0
        server.connect_error = ConnectionRefusedError("connection refused")
        server.peers[0].vanish()
        await asyncio.sleep(0.3)
        assert pool.stats().origins[ORIGIN].connections == 1
    # Retrying with any backoff (retry_backoff is 0.05 s) makes a handful of
    # attempts in 0.3 s; redialling as soon as a dial fails makes thousands.
    assert 1 <= dials <= 20


# Predictive pre-warming.


async def test_predictive_prewarm_dials_when_a_reservation_crosses_the_threshold() -> None:
    server = MockServer(settings=LIMIT_10)
    async with (
        Pool(connector=server.connector, prewarm_threshold=0.75) as pool,
        contextlib.AsyncExitStack() as held,
    ):
        await pool.prewarm(ORIGIN)
        for _ in range(7):
            await held.enter_async_context(pool.acquire(ORIGIN))
        assert len(_connections(pool, ORIGIN)) == 1
        await held.enter_async_context(pool.acquire(ORIGIN))
        # The 8th of 10 slots: busy >= 0.75 * 10 and fewer than 2.5 slots spare.
        assert len(_connections(pool, ORIGIN)) == 2
        assert pool.stats().waiting == 0


async def test_predictively_dialled_connection_is_ready_before_any_request_has_to_wait() -> None:
    server = MockServer(settings=LIMIT_10)
    async with (
        Pool(connector=server.connector, prewarm_threshold=0.75) as pool,
        contextlib.AsyncExitStack() as held,
    ):
        await pool.prewarm(ORIGIN)
        handles: list[Handle] = [await held.enter_async_context(pool.acquire(ORIGIN)) for _ in range(10)]
        first, second = _connections(pool, ORIGIN)
        assert all(handle._conn is first for handle in handles)
        await second.wait_settled()
        # The 11th finds a free slot on a set-up connection: nothing to await.
        eleventh = asyncio.create_task(held.enter_async_context(pool.acquire(ORIGIN)))
        await asyncio.sleep(0)
        assert eleventh.done()
        assert eleventh.result()._conn is second
        await held.enter_async_context(pool.acquire(ORIGIN))
        assert len(_connections(pool, ORIGIN)) == 2, "dialled more than the one connection ahead"
        assert len(server.peers) == 2


async def test_without_predictive_prewarm_no_dial_happens_before_the_eleventh_request() -> None:
    server = MockServer(settings=LIMIT_10)
    async with (
        Pool(connector=server.connector, predictive_prewarm=False) as pool,
        contextlib.AsyncExitStack() as held,
    ):
        await pool.prewarm(ORIGIN)
        for _ in range(10):
            await held.enter_async_context(pool.acquire(ORIGIN))
        await idle()
        assert len(_connections(pool, ORIGIN)) == 1
        assert len(server.peers) == 1
        await held.enter_async_context(pool.acquire(ORIGIN))
        assert len(server.peers) == 2


# Resizing under load.


async def test_growing_max_connections_serves_queued_requests_at_once() -> None:
    replies = HeldReplies()
    server = MockServer(replies, settings=LIMIT_10)
    async with Pool(connector=server.connector, max_connections_per_origin=1, predictive_prewarm=False) as pool:
        await pool.prewarm(ORIGIN)
        tasks = _start_requests(pool, 40)
        await server.peers[0].wait_for(lambda: len(server.peers[0].requests) == PEER_LIMIT)
        await idle()
        assert pool.stats().waiting == 30
        pool.resize(max_connections_per_origin=4)
        stats = pool.stats()
        assert stats.waiting == 0
        assert stats.connections + stats.connecting == 4
        # All 40 reach the server before any response: none waited for another to finish.
        async with asyncio.timeout(5):
            while sum(_requests_at(server)) < 40:
                await idle(5)
        assert _requests_at(server) == [10, 10, 10, 10]
        replies.release_all()
        responses = await asyncio.gather(*tasks)
    assert [response.status for response in responses] == [200] * 40
    server.assert_slots_consistent()


async def _load_four_connections(pool: Pool, server: MockServer) -> list[asyncio.Task[Response]]:
    """40 requests held by the server, 10 on each of 4 connections."""
    await pool.prewarm(ORIGIN)
    tasks = _start_requests(pool, 40)
    async with asyncio.timeout(5):
        while _requests_at(server) != [PEER_LIMIT] * 4:
            await idle(5)
    return tasks


async def test_shrinking_max_connections_fails_no_request_in_flight_and_ends_at_one_connection() -> None:
    replies = HeldReplies()
    server = MockServer(replies, settings=LIMIT_10)
    async with Pool(connector=server.connector, max_connections_per_origin=4, predictive_prewarm=False) as pool:
        tasks = await _load_four_connections(pool, server)
        pool.resize(max_connections_per_origin=1)
        await idle()
        # Surplus connections are drained, not cut: their streams still run.
        assert not any(task.done() for task in tasks)
        assert all(peer.connected for peer in server.peers)
        surplus = server.peers[1:]
        for peer in surplus:
            replies.release(_on(peer))
        async with asyncio.timeout(5):
            while not all(peer.client_closed for peer in surplus):
                await idle(5)
        assert server.peers[0].connected
        replies.release_all()
        responses = await asyncio.gather(*tasks)
        stats = pool.stats().origins[ORIGIN]
    assert [response.status for response in responses] == [200] * 40
    assert (stats.connections, stats.connecting) == (1, 0)
    assert len(server.peers) == 4
    server.assert_slots_consistent()


async def test_shrinking_max_connections_gives_surplus_connections_no_new_streams() -> None:
    replies = HeldReplies()
    server = MockServer(replies, settings=LIMIT_10)
    async with Pool(connector=server.connector, max_connections_per_origin=4, predictive_prewarm=False) as pool:
        tasks = await _load_four_connections(pool, server)
        pool.resize(max_connections_per_origin=1)
        # Free a slot on every connection: the surplus ones must not take the new requests.
        for peer in server.peers:
            replies.release(_on(peer), count=1)
        late = _start_requests(pool, 5, prefix="late")
        async with asyncio.timeout(5):
            while sum(_requests_at(server)) < 41:
                await idle(5)
        await idle()
        assert _requests_at(server) == [11, 10, 10, 10]
        assert pool.stats().waiting == 4
        replies.release_all()
        responses = await asyncio.gather(*tasks, *late)
    assert [response.status for response in responses] == [200] * 45
    assert _requests_at(server)[1:] == [10, 10, 10]


async def test_lowering_max_concurrent_streams_below_the_streams_in_flight_only_limits_new_streams() -> None:
    replies = HeldReplies()
    server = MockServer(replies)
    async with Pool(connector=server.connector, max_connections_per_origin=1, predictive_prewarm=False) as pool:
        await pool.prewarm(ORIGIN)
        in_flight = _start_requests(pool, 8)
        peer = server.peers[0]
        await peer.wait_for(lambda: len(peer.requests) == 8)
        pool.resize(max_concurrent_streams=3)
        late = _start_requests(pool, 1, prefix="late")[0]
        await idle()
        assert pool.stats().waiting == 1
        first_five = {f"/r{i}" for i in range(5)}
        assert replies.release(lambda request: request.path in first_five) == 5
        await asyncio.gather(*in_flight[:5])
        await idle()
        # Three streams still open: the cap of 3 leaves no room yet.
        assert pool.stats().waiting == 1
        assert len(peer.requests) == 8
        replies.release(count=1)
        await peer.wait_for(lambda: len(peer.requests) == 9)
        replies.release_all()
        responses = await asyncio.gather(*in_flight, late)
    assert [response.status for response in responses] == [200] * 9
    server.assert_slots_consistent()
