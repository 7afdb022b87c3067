"""Address selection through the Pool: the DNS cache and the Happy Eyeballs racer with real servers.

tests/test_happy_eyeballs.py races bare sockets and tests/test_resolver.py
the cache on its own; here requests go through :class:`h2pool.Pool` to nginx
on one loopback family while the other family's side of the same port is
refused (bound, not listening) or black-holed (a full accept queue: SYNs are
dropped and connect() hangs). Names resolve through a table, never through
DNS, and only ever to ::1 and 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from h2pool import ConnectError, Pool, PoolStats
from h2pool.resolver import StaticResolver
from tests.servers import Certs, ServerProcess, free_port
from tests.test_coalescing import issue_certs, opened, start_probed_nginx
from tests.test_happy_eyeballs import V4, V6, _bind, _black_hole, _half_open_connects, loopback
from tests.test_observability import RecordingHooks
from tests.test_resolver import CountingResolver, let_waiters_block

pytestmark = pytest.mark.timeout(60)

DUAL = "dual.test"
#: Upper bound for "it did not hang": far above any delay used here.
NO_HANG = 2.0


@pytest.fixture
def dual_certs(certs: Certs, tmp_path: Path) -> Certs:
    return issue_certs(certs, tmp_path / "certs-dual", DUAL)


@contextlib.contextmanager
def server_beside(
    tmp_path: Path, docroot: Path, certs: Certs, *, live: str, dead: str, black_hole: bool = False
) -> Iterator[ServerProcess]:
    """nginx on ``live``:P while ``dead``:P refuses connections, or with ``black_hole`` drops them."""
    with contextlib.ExitStack() as stack:
        for _ in range(5):
            held = _bind(dead, 0, stack)
            port: int = held.getsockname()[1]
            try:
                server = stack.enter_context(start_probed_nginx(tmp_path, docroot, certs, host=live, port=port))
            except RuntimeError:
                # The port was taken on the other family: try another.
                held.close()
                continue
            break
        else:
            pytest.fail(f"no port free on both {live} and {dead} in 5 tries")
        if black_hole:
            _black_hole(held, dead, stack)
        yield server


def dual_url(server: ServerProcess, path: str = "/small") -> str:
    return f"https://{DUAL}:{server.port}{path}"


async def timed_request(pool: Pool, url: str) -> float:
    """Seconds a successful GET of ``url`` took."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with asyncio.timeout(pool.config.happy_eyeballs_delay + NO_HANG):
        response = await pool.request("GET", url)
    assert response.status == 200
    return loop.time() - started


def assert_clean(stats: PoolStats) -> None:
    """Nothing left connecting, reserved, in flight or waiting."""
    in_use = (stats.connections, stats.connecting, stats.streams_open, stats.slots_reserved, stats.waiting)
    assert in_use == (0, 0, 0, 0, 0)


# Happy Eyeballs through the pool.


@pytest.mark.parametrize(
    ("addresses", "dead", "live"),
    [([V6, V4], V6, V4), ([V4, V6], V4, V6)],
    ids=["ipv6-first", "ipv4-first"],
)
@pytest.mark.parametrize("black_hole", [False, True], ids=["refused", "black-holed"])
async def test_a_dead_first_address_costs_nothing_if_refused_and_the_delay_if_black_holed(
    addresses: list[str],
    dead: str,
    live: str,
    black_hole: bool,
    tmp_path: Path,
    docroot: Path,
    dual_certs: Certs,
    client_ssl_context: ssl.SSLContext,
) -> None:
    hooks = RecordingHooks()
    delay = 0.3 if black_hole else 2.0
    with server_beside(tmp_path, docroot, dual_certs, live=live, dead=dead, black_hole=black_hole) as server:
        resolver = StaticResolver({DUAL: addresses})
        async with Pool(client_ssl_context, hooks=hooks, resolver=resolver, happy_eyeballs_delay=delay) as pool:
            elapsed = await timed_request(pool, dual_url(server))
            # The losing attempt was cancelled and its socket closed.
            assert _half_open_connects() == []
    if black_hole:
        # Nothing answers the first attempt: the second starts after the delay, and wins.
        assert delay - 0.01 <= elapsed < delay + NO_HANG
    else:
        # A refusal starts the next address without waiting out the delay.
        assert elapsed < delay / 2
    assert [info.remote_address for info in opened(hooks)] == [live]


@pytest.mark.parametrize(("addresses", "winner"), [([V6, V4], V6), ([V4, V6], V4)], ids=["ipv6-first", "ipv4-first"])
async def test_the_first_address_wins_when_both_answer(
    addresses: list[str],
    winner: str,
    tmp_path: Path,
    docroot: Path,
    dual_certs: Certs,
    client_ssl_context: ssl.SSLContext,
) -> None:
    hooks = RecordingHooks()
    with start_probed_nginx(tmp_path, docroot, dual_certs, also_on_v6=True) as server:
        resolver = StaticResolver({DUAL: addresses})
        async with Pool(client_ssl_context, hooks=hooks, resolver=resolver, happy_eyeballs_delay=NO_HANG) as pool:
            await timed_request(pool, dual_url(server))
    assert [info.remote_address for info in opened(hooks)] == [winner]


# The DNS cache, with the session nginx on 127.0.0.1 (its certificate lists localhost).


async def test_a_cold_herd_resolves_the_name_once(nginx: ServerProcess, client_ssl_context: ssl.SSLContext) -> None:
    gate = asyncio.Event()
    resolver = CountingResolver({"localhost": [V4]}, gate)
    url = f"https://localhost:{nginx.port}/small"
    # Ten streams a connection: the herd needs ten connections. Until the
    # first one's SETTINGS the pool dials one; the other nine come after.
    async with Pool(client_ssl_context, resolver=resolver, max_concurrent_streams=10) as pool:
        herd = [asyncio.create_task(pool.request("GET", url)) for _ in range(100)]
        await let_waiters_block()
        assert resolver.calls == ["localhost"]
        gate.set()
        async with asyncio.timeout(NO_HANG * 5):
            responses = await asyncio.gather(*herd)
        connections = pool.stats().connections
    assert [response.status for response in responses] == [200] * 100
    assert resolver.calls == ["localhost"]
    assert connections == 10


async def test_connections_dialled_together_share_one_look_up(
    nginx: ServerProcess, client_ssl_context: ssl.SSLContext
) -> None:
    gate = asyncio.Event()
    resolver = CountingResolver({"localhost": [V4]}, gate)
    origin = f"https://localhost:{nginx.port}"
    async with Pool(client_ssl_context, resolver=resolver) as pool:
        prewarm = asyncio.create_task(pool.prewarm(origin, connections=10))
        await let_waiters_block()
        assert pool.stats().connecting == 10
        gate.set()
        async with asyncio.timeout(NO_HANG * 5):
            await prewarm
        connections = pool.stats().connections
    assert resolver.calls == ["localhost"]
    assert connections == 10


async def test_a_new_connection_resolves_again_once_the_ttl_passed(
    nginx: ServerProcess, client_ssl_context: ssl.SSLContext
) -> None:
    ttl = 0.5
    resolver = CountingResolver({"localhost": [V4]})
    origin = f"https://localhost:{nginx.port}"
    async with Pool(client_ssl_context, resolver=resolver, dns_cache_ttl=ttl) as pool:
        assert (await pool.request("GET", f"{origin}/small")).status == 200
        await pool.prewarm(origin, connections=2)
        assert resolver.calls == ["localhost"]
        await asyncio.sleep(ttl + 0.1)
        await pool.prewarm(origin, connections=3)
        assert resolver.calls == ["localhost"] * 2
        assert pool.stats().connections == 3


async def test_an_ip_address_host_never_asks_the_resolver(
    nginx: ServerProcess, client_ssl_context: ssl.SSLContext
) -> None:
    resolver = CountingResolver({})
    async with Pool(client_ssl_context, resolver=resolver) as pool:
        assert (await pool.request("GET", nginx.url("/small"))).status == 200
    assert resolver.calls == []


async def test_every_address_refusing_raises_connect_error_naming_each_and_forgets_them(
    client_ssl_context: ssl.SSLContext,
) -> None:
    resolver = CountingResolver({"localhost": [V6, V4]})
    with loopback(v6="refused", v4="refused") as endpoints:
        url = f"https://localhost:{endpoints.port}/small"
        async with Pool(client_ssl_context, resolver=resolver, happy_eyeballs_delay=NO_HANG) as pool:
            for attempt in (1, 2):
                async with asyncio.timeout(NO_HANG):
                    with pytest.raises(ConnectError) as failed:
                        await pool.request("GET", url)
                message = str(failed.value)
                assert f"[::1]:{endpoints.port}" in message
                assert f"127.0.0.1:{endpoints.port}" in message
                # The failed addresses were forgotten: each dial asked again.
                assert resolver.calls == ["localhost"] * attempt
            stats = pool.stats()
    assert_clean(stats)
    assert stats.origins[f"https://localhost:{endpoints.port}"].connection_errors == {"ConnectError": 2}


async def test_a_host_that_moved_is_reached_at_its_new_address_after_a_failed_dial(
    tmp_path: Path, docroot: Path, dual_certs: Certs, client_ssl_context: ssl.SSLContext
) -> None:
    with server_beside(tmp_path, docroot, dual_certs, live=V4, dead=V6) as server:
        resolver = CountingResolver({DUAL: [V6]})
        # The default ttl would keep ::1 for a minute had the failure not dropped it.
        async with Pool(client_ssl_context, resolver=resolver) as pool:
            async with asyncio.timeout(NO_HANG):
                with pytest.raises(ConnectError):
                    await pool.request("GET", dual_url(server))
            resolver.table[DUAL] = [V4]
            await timed_request(pool, dual_url(server))
    assert resolver.calls == [DUAL, DUAL]


# Resolver failures.


async def test_a_resolver_failure_is_a_connect_error_for_every_waiting_caller(
    client_ssl_context: ssl.SSLContext,
) -> None:
    gate = asyncio.Event()
    resolver = CountingResolver({}, gate)
    resolver.error = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    origin = f"https://nowhere.test:{free_port()}"
    url = f"{origin}/small"
    async with Pool(client_ssl_context, resolver=resolver) as pool:
        callers = [asyncio.create_task(pool.request("GET", url)) for _ in range(20)]
        await let_waiters_block()
        gate.set()
        async with asyncio.timeout(NO_HANG):
            outcomes = await asyncio.gather(*callers, return_exceptions=True)
        stats = pool.stats()
        assert all(isinstance(outcome, ConnectError) for outcome in outcomes), outcomes
        assert "Name or service not known" in str(outcomes[0])
        assert resolver.calls == ["nowhere.test"]
        # A failed look-up is not kept: the next dial asks again.
        async with asyncio.timeout(NO_HANG):
            with pytest.raises(ConnectError):
                await pool.request("GET", url)
        assert resolver.calls == ["nowhere.test"] * 2
    assert_clean(stats)
    assert stats.origins[origin].connection_errors == {"ConnectError": 1}


class BrokenResolver:
    """A custom resolver with a bug of its own: it raises something other than OSError."""

    async def resolve(self, host: str, port: int) -> Sequence[str]:
        raise RuntimeError(f"resolver bug looking up {host}")


async def test_a_resolver_raising_its_own_exception_fails_every_caller_with_connect_error(
    client_ssl_context: ssl.SSLContext,
) -> None:
    origin = f"https://nowhere.test:{free_port()}"
    async with Pool(client_ssl_context, resolver=BrokenResolver()) as pool:
        callers = [asyncio.create_task(pool.request("GET", f"{origin}/small")) for _ in range(5)]
        async with asyncio.timeout(NO_HANG):
            outcomes = await asyncio.gather(*callers, return_exceptions=True)
        stats = pool.stats()
    assert all(isinstance(outcome, ConnectError) for outcome in outcomes), outcomes
    assert "resolver bug looking up nowhere.test" in str(outcomes[0])
    assert_clean(stats)


async def test_a_name_missing_from_the_static_table_says_so(client_ssl_context: ssl.SSLContext) -> None:
    resolver = StaticResolver({DUAL: V4})
    async with Pool(client_ssl_context, resolver=resolver) as pool:
        async with asyncio.timeout(NO_HANG):
            with pytest.raises(ConnectError, match=r"cannot resolve 'missing\.test'.*dual\.test"):
                await pool.request("GET", f"https://missing.test:{free_port()}/")
        assert_clean(pool.stats())
