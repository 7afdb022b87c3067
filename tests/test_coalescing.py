"""Connection coalescing (RFC 9113 §9.1.1) against real servers on 127.0.0.1 and ::1.

Each test starts its own nginx (or nghttpd) with a certificate from the
session CA for made-up names, a.test and b.test, which a StaticResolver
points at loopback. The nginx config answers ``/host`` with
``"$host $ssl_server_name"``: the :authority a request carried and the SNI
of the connection it went over. Its ``stub_status`` at ``/status`` counts
the connections the server accepted, so sharing is checked from the
server's side as well as from the pool's hooks and stats.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import ssl
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path

import pytest
import trustme

from h2pool import ConnectionInfo, ConnectTimeout, H2PoolError, Pool, PoolClosed, PoolHooks
from h2pool.resolver import StaticResolver
from tests.conftest import require_server
from tests.hostile import HostileServer, serve_ok
from tests.servers import Certs, ServerProcess, expected_bytes, free_port, start_nghttpd, start_nginx
from tests.test_happy_eyeballs import V4, V6, _bind
from tests.test_observability import RecordingHooks
from tests.test_resolver import CountingResolver, let_waiters_block

pytestmark = pytest.mark.timeout(60)

A = "a.test"
B = "b.test"
#: Bounds every wait in these tests: far above what a loopback request needs.
NO_HANG = 5.0

#: Locations of every nginx server block here: what the request said and where it went.
PROBES = """
        location = /host { return 200 "$host $ssl_server_name"; }
        location = /status { stub_status; }
"""

#: Refuse a request whose :authority is not the connection's SNI, as a
#: server does whose virtual hosts must not share connections.
MISDIRECT_OTHER_HOSTS = """
        if ($host != $ssl_server_name) { return 421; }
"""


class SignallingResolver(CountingResolver):
    """A :class:`CountingResolver` that also lets a test wait until a look-up has begun."""

    def __init__(self, table: dict[str, Sequence[str]], gate: asyncio.Event) -> None:
        super().__init__(table, gate)
        self.asked = asyncio.Event()

    async def resolve(self, host: str, port: int) -> Sequence[str]:
        self.asked.set()
        return await super().resolve(host, port)

    async def wait_asked(self) -> None:
        async with asyncio.timeout(NO_HANG):
            await self.asked.wait()


def issue_certs(certs: Certs, directory: Path, *names: str) -> Certs:
    """A server certificate for ``names`` from the session CA, written out as ``make_certs`` writes its own."""
    leaf = certs.ca.issue_cert(*names)
    directory.mkdir(parents=True)
    cert_path = directory / "server-chain.pem"
    key_path = directory / "server-key.pem"
    cert_path.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(key_path))
    for path in (cert_path, key_path):
        os.chmod(path, 0o644)  # Readable by nginx workers: a throwaway test key.
    return Certs(directory, certs.ca_path, cert_path, key_path, certs.ca, leaf)


def dual_stack_port() -> int:
    """A port free right now on both ::1 and 127.0.0.1."""
    for _ in range(20):
        with contextlib.ExitStack() as stack:
            port: int = _bind(V6, 0, stack).getsockname()[1]
            try:
                _bind(V4, port, stack)
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
                continue
            return port
    pytest.fail("no port free on both ::1 and 127.0.0.1 in 20 tries")


def start_probed_nginx(
    workdir: Path,
    docroot: Path,
    certs: Certs,
    *,
    server_config: str = "",
    host: str = V4,
    port: int | None = None,
    also_on_v6: bool = False,
    by_sni: Mapping[str, Certs] | None = None,
) -> ServerProcess:
    """nginx with ``certs`` and the probe locations; ``by_sni`` names get a server block and certificate each.

    With ``also_on_v6`` the same server also listens on ::1 at the same port.
    nginx picks a server block, and so a certificate, by SNI; a name that no
    ``server_name`` lists gets the first block, so the main block should name
    its hosts in ``server_config`` when ``by_sni`` is given.
    """
    require_server("nginx")
    if port is None:
        port = dual_stack_port() if also_on_v6 else free_port(host)
    listen = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    blocks = "".join(
        f"""
    server {{
        listen {listen} ssl http2;
        server_name {name};
        root "{docroot}";
        ssl_certificate "{own.cert_path}";
        ssl_certificate_key "{own.key_path}";
{PROBES}
    }}
"""
        for name, own in (by_sni or {}).items()
    )
    v6_listen = f"listen [{V6}]:{port} ssl http2;\n" if also_on_v6 else ""
    return start_nginx(
        workdir,
        certs,
        docroot=docroot,
        host=host,
        port=port,
        extra_server_config=v6_listen + PROBES + server_config,
        extra_http_config=blocks,
    )


def url(host: str, server: ServerProcess, path: str = "/small") -> str:
    return f"https://{host}:{server.port}{path}"


def origin(host: str, server: ServerProcess) -> str:
    return f"https://{host}:{server.port}"


def resolve_to(address: str = V4) -> StaticResolver:
    """a.test and b.test, both at ``address``."""
    return StaticResolver({A: address, B: address})


def opened(hooks: RecordingHooks) -> list[ConnectionInfo]:
    return [info for info, _ in hooks.of("connection_opened")]


async def text(pool: Pool, target: str) -> str:
    response = await pool.request("GET", target)
    assert response.status == 200, (target, response.status, response.content)
    return response.content.decode()


async def accepted(pool: Pool, server: ServerProcess) -> int:
    """Connections nginx has accepted since it started, asked over a.test's connection."""
    # "Active connections: 1 \nserver accepts handled requests\n 3 3 5 \n..."
    return int((await text(pool, url(A, server, "/status"))).split("\n")[2].split()[0])


async def small(pool: Pool, host: str, server: ServerProcess) -> None:
    response = await pool.request("GET", url(host, server))
    assert response.status == 200
    assert response.content == expected_bytes("small")


@pytest.fixture
def certs_ab(certs: Certs, tmp_path: Path) -> Certs:
    return issue_certs(certs, tmp_path / "certs-ab", A, B)


@pytest.fixture
def nginx_ab(tmp_path: Path, docroot: Path, certs_ab: Certs) -> Iterator[ServerProcess]:
    """A private nginx whose one certificate covers a.test and b.test."""
    with start_probed_nginx(tmp_path, docroot, certs_ab) as server:
        yield server


# A certificate covering both names: one connection.


@pytest.mark.parametrize("kind", ["nginx", "nghttpd"])
async def test_a_host_the_certificate_covers_shares_the_open_connection(
    kind: str, tmp_path: Path, docroot: Path, certs_ab: Certs, client_ssl_context: ssl.SSLContext
) -> None:
    if kind == "nginx":
        server = start_probed_nginx(tmp_path, docroot, certs_ab)
    else:
        require_server(kind)
        server = start_nghttpd(tmp_path, certs_ab, docroot=docroot)
    hooks = RecordingHooks()
    with server:
        async with Pool(client_ssl_context, hooks=hooks, resolver=resolve_to()) as pool:
            await small(pool, A, server)
            await small(pool, B, server)
            await small(pool, A, server)
            stats = pool.stats()
    assert stats.connections == 1
    assert stats.origins[origin(B, server)].coalesced_into == origin(A, server)
    assert stats.origins[origin(B, server)].connections == 0
    assert stats.origins[origin(A, server)].coalesced_into is None
    assert [info.origin for info in opened(hooks)] == [origin(A, server)]


async def test_the_shared_connection_carries_the_other_hosts_authority(
    nginx_ab: ServerProcess, client_ssl_context: ssl.SSLContext
) -> None:
    async with Pool(client_ssl_context, resolver=resolve_to()) as pool:
        assert await text(pool, url(A, nginx_ab, "/host")) == f"{A} {A}"
        before = await accepted(pool, nginx_ab)
        # b.test's request goes over a.test's TLS connection (SNI a.test).
        assert await text(pool, url(B, nginx_ab, "/host")) == f"{B} {A}"
        assert await accepted(pool, nginx_ab) == before
        assert pool.stats().connections == 1


async def test_coalescing_works_between_a_name_and_an_ip_address_the_certificate_lists(
    nginx: ServerProcess, client_ssl_context: ssl.SSLContext
) -> None:
    # The session certificate lists localhost and 127.0.0.1 (and ::1).
    hooks = RecordingHooks()
    resolver = StaticResolver({"localhost": V4})
    async with Pool(client_ssl_context, hooks=hooks, resolver=resolver) as pool:
        await small(pool, "localhost", nginx)
        await small(pool, V4, nginx)
        stats = pool.stats()
    assert stats.connections == 1
    assert stats.origins[nginx.origin].coalesced_into == origin("localhost", nginx)
    assert len(opened(hooks)) == 1


# No coalescing: two connections.


async def test_a_host_the_certificate_does_not_cover_gets_its_own_connection(
    tmp_path: Path, docroot: Path, certs: Certs, client_ssl_context: ssl.SSLContext
) -> None:
    only_a = issue_certs(certs, tmp_path / "certs-a", A)
    only_b = issue_certs(certs, tmp_path / "certs-b", B)
    hooks = RecordingHooks()
    with start_probed_nginx(tmp_path, docroot, only_a, server_config=f"server_name {A};", by_sni={B: only_b}) as server:
        async with Pool(client_ssl_context, hooks=hooks, resolver=resolve_to()) as pool:
            assert await text(pool, url(A, server, "/host")) == f"{A} {A}"
            before = await accepted(pool, server)
            assert await text(pool, url(B, server, "/host")) == f"{B} {B}"
            assert await accepted(pool, server) == before + 1
            stats = pool.stats()
    assert stats.connections == 2
    assert stats.origins[origin(B, server)].coalesced_into is None
    assert [info.origin for info in opened(hooks)] == [origin(A, server), origin(B, server)]


async def test_coalesce_connections_false_dials_each_host(
    nginx_ab: ServerProcess, client_ssl_context: ssl.SSLContext
) -> None:
    hooks = RecordingHooks()
    async with Pool(client_ssl_context, hooks=hooks, resolver=resolve_to(), coalesce_connections=False) as pool:
        assert await text(pool, url(A, nginx_ab, "/host")) == f"{A} {A}"
        assert await text(pool, url(B, nginx_ab, "/host")) == f"{B} {B}"
        stats = pool.stats()
    assert stats.connections == 2
    assert stats.origins[origin(B, nginx_ab)].coalesced_into is None
    assert [info.origin for info in opened(hooks)] == [origin(A, nginx_ab), origin(B, nginx_ab)]


async def test_a_host_resolving_elsewhere_does_not_share_the_connection(
    tmp_path: Path, docroot: Path, certs: Certs, client_ssl_context: ssl.SSLContext
) -> None:
    hooks = RecordingHooks()
    # c.test resolves to both: the open connection's 127.0.0.1 is one of its addresses.
    resolver = StaticResolver({A: V4, B: V6, "c.test": [V6, V4]})
    certs_abc = issue_certs(certs, tmp_path / "certs-abc", A, B, "c.test")
    with start_probed_nginx(tmp_path, docroot, certs_abc, also_on_v6=True) as server:
        async with Pool(client_ssl_context, hooks=hooks, resolver=resolver) as pool:
            await small(pool, A, server)
            await small(pool, B, server)
            await small(pool, "c.test", server)
            stats = pool.stats()
    assert stats.connections == 2
    assert stats.origins[origin(B, server)].coalesced_into is None
    assert stats.origins[origin("c.test", server)].coalesced_into in (origin(A, server), origin(B, server))
    assert [(info.origin, info.remote_address) for info in opened(hooks)] == [
        (origin(A, server), V4),
        (origin(B, server), V6),
    ]


async def test_the_same_address_written_differently_by_the_resolver_is_still_the_connections_address(
    tmp_path: Path, docroot: Path, certs_ab: Certs, client_ssl_context: ssl.SSLContext
) -> None:
    # The socket reports ::1; a resolver may spell it out in full.
    resolver = StaticResolver({A: V6, B: "0:0:0:0:0:0:0:1"})
    hooks = RecordingHooks()
    with start_probed_nginx(tmp_path, docroot, certs_ab, host=V6) as server:
        async with Pool(client_ssl_context, hooks=hooks, resolver=resolver) as pool:
            await small(pool, A, server)
            await small(pool, B, server)
            stats = pool.stats()
    assert stats.origins[origin(B, server)].coalesced_into == origin(A, server)
    assert len(opened(hooks)) == 1


async def test_a_pool_that_does_not_verify_certificates_never_coalesces(
    nginx_ab: ServerProcess,
) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    hooks = RecordingHooks()
    async with Pool(context, hooks=hooks, resolver=resolve_to()) as pool:
        await small(pool, A, nginx_ab)
        await small(pool, B, nginx_ab)
        stats = pool.stats()
    assert stats.connections == 2
    assert stats.origins[origin(B, nginx_ab)].coalesced_into is None
    assert len(opened(hooks)) == 2


# Concurrency and the shared connection's life.


async def test_a_cold_herd_for_the_other_host_shares_the_one_open_connection(
    nginx_ab: ServerProcess, client_ssl_context: ssl.SSLContext
) -> None:
    gate = asyncio.Event()
    resolver = SignallingResolver({A: [V4], B: [V4]}, gate)
    hooks = RecordingHooks()
    async with Pool(client_ssl_context, hooks=hooks, resolver=resolver) as pool:
        gate.set()
        await small(pool, A, nginx_ab)
        gate.clear()
        resolver.asked.clear()
        herd = [asyncio.create_task(small(pool, B, nginx_ab)) for _ in range(50)]
        # Every caller of the herd waits on one look-up of b.test.
        await resolver.wait_asked()
        await let_waiters_block()
        gate.set()
        async with asyncio.timeout(NO_HANG):
            await asyncio.gather(*herd)
        stats = pool.stats()
    assert resolver.calls == [A, B]
    assert stats.connections == 1
    assert stats.origins[origin(B, nginx_ab)].coalesced_into == origin(A, nginx_ab)
    assert len(opened(hooks)) == 1


async def test_a_host_dials_its_own_connection_once_the_shared_one_is_gone(
    nginx_ab: ServerProcess, client_ssl_context: ssl.SSLContext
) -> None:
    hooks = RecordingHooks()
    # b.test first had a connection of its own: coalescing starts once it has none.
    async with Pool(client_ssl_context, hooks=hooks, resolver=resolve_to(), idle_timeout=1.0) as pool:
        assert await text(pool, url(B, nginx_ab, "/host")) == f"{B} {B}"
        await hooks.wait_for("connection_closed")
        assert await text(pool, url(A, nginx_ab, "/host")) == f"{A} {A}"
        assert await text(pool, url(B, nginx_ab, "/host")) == f"{B} {A}"
        # a.test's connection closes when idle: b.test must not be left pointing at it.
        await hooks.wait_for("connection_closed", 2)
        assert await text(pool, url(B, nginx_ab, "/host")) == f"{B} {B}"
        stats = pool.stats()
    assert stats.origins[origin(B, nginx_ab)].coalesced_into is None
    assert [info.origin for info in opened(hooks)] == [origin(B, nginx_ab), origin(A, nginx_ab), origin(B, nginx_ab)]


async def test_coalescing_onto_a_resumed_tls_connection(
    nginx_ab: ServerProcess, client_ssl_context: ssl.SSLContext
) -> None:
    # A resumed handshake carries no certificate message: the names must still be known.
    client_ssl_context.minimum_version = ssl.TLSVersion.TLSv1_3
    hooks = RecordingHooks()
    async with Pool(client_ssl_context, hooks=hooks, resolver=resolve_to(), idle_timeout=0.3) as pool:
        await small(pool, A, nginx_ab)
        await hooks.wait_for("connection_closed")
        async with pool.acquire(origin(A, nginx_ab)):
            # The slot held keeps a.test's resumed connection open and in use.
            assert await text(pool, url(B, nginx_ab, "/host")) == f"{B} {A}"
        stats = pool.stats()
    resumed = [resumed for _, resumed, _ in hooks.of("tls_handshake")]
    assert resumed == [False, True]
    assert stats.origins[origin(B, nginx_ab)].coalesced_into == origin(A, nginx_ab)
    assert [info.origin for info in opened(hooks)] == [origin(A, nginx_ab)] * 2


# 421 Misdirected Request.


@pytest.mark.parametrize(
    ("method", "path", "content", "body"),
    [
        ("GET", "/host", None, f"{B} {B}".encode()),
        ("POST", "/upload", b"payload", b"ok\n"),
    ],
    ids=["no-body", "bytes-body"],
)
async def test_a_421_on_the_shared_connection_replays_on_the_hosts_own_connection(
    method: str,
    path: str,
    content: bytes | None,
    body: bytes,
    tmp_path: Path,
    docroot: Path,
    certs_ab: Certs,
    client_ssl_context: ssl.SSLContext,
) -> None:
    hooks = RecordingHooks()
    with start_probed_nginx(tmp_path, docroot, certs_ab, server_config=MISDIRECT_OTHER_HOSTS) as server:
        async with Pool(client_ssl_context, hooks=hooks, resolver=resolve_to()) as pool:
            assert await text(pool, url(A, server, "/host")) == f"{A} {A}"
            response = await pool.request(method, url(B, server, path), content=content)
            assert (response.status, response.content) == (200, body)
            after_421 = pool.stats()
            # From now on b.test goes straight to its own connection.
            assert await text(pool, url(B, server, "/host")) == f"{B} {B}"
            stats = pool.stats()
    b_stats = stats.origins[origin(B, server)]
    assert after_421.origins[origin(B, server)].replays == 1
    assert (b_stats.coalesced_into, b_stats.replays, b_stats.connections) == (None, 1, 1)
    assert stats.connections == 2
    assert [info.origin for info in opened(hooks)] == [origin(A, server), origin(B, server)]


async def upload() -> AsyncIterator[bytes]:
    """A streamed request body: it cannot be sent a second time."""
    for chunk in (b"sent ", b"once"):
        yield chunk


async def test_a_421_for_a_streamed_body_is_the_callers_response(
    tmp_path: Path, docroot: Path, certs_ab: Certs, client_ssl_context: ssl.SSLContext
) -> None:
    hooks = RecordingHooks()
    with start_probed_nginx(tmp_path, docroot, certs_ab, server_config=MISDIRECT_OTHER_HOSTS) as server:
        async with Pool(client_ssl_context, hooks=hooks, resolver=resolve_to()) as pool:
            await small(pool, A, server)
            async with asyncio.timeout(NO_HANG):
                response = await pool.request("POST", url(B, server, "/upload"), content=upload())
            stats = pool.stats()
    # A body that cannot be sent again is not replayed: the caller decides.
    assert response.status == 421
    assert stats.origins[origin(B, server)].replays == 0
    assert len(opened(hooks)) == 1


async def test_after_a_421_for_a_streamed_body_the_host_stops_sharing_the_connection(
    tmp_path: Path, docroot: Path, certs_ab: Certs, client_ssl_context: ssl.SSLContext
) -> None:
    # The 421 says this connection will not serve b.test: were sharing kept
    # on, every streamed request for b.test would get a 421.
    with start_probed_nginx(tmp_path, docroot, certs_ab, server_config=MISDIRECT_OTHER_HOSTS) as server:
        async with Pool(client_ssl_context, resolver=resolve_to()) as pool:
            await small(pool, A, server)
            statuses = []
            for _ in range(2):
                async with asyncio.timeout(NO_HANG):
                    response = await pool.request("POST", url(B, server, "/upload"), content=upload())
                statuses.append(response.status)
            stats = pool.stats()
    assert statuses == [421, 200]
    assert stats.origins[origin(B, server)].coalesced_into is None


# A look-up that never answers.


async def test_a_coalescing_look_up_that_hangs_ends_in_connect_timeout(
    nginx_ab: ServerProcess, client_ssl_context: ssl.SSLContext
) -> None:
    never = asyncio.Event()
    resolver = SignallingResolver({A: [V4], B: [V4]}, never)
    connect_timeout = 0.3
    async with Pool(client_ssl_context, resolver=resolver, connect_timeout=connect_timeout) as pool:
        never.set()
        await small(pool, A, nginx_ab)
        never.clear()
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            async with asyncio.timeout(NO_HANG):
                with pytest.raises(ConnectTimeout):
                    await pool.request("GET", url(B, nginx_ab))
        finally:
            never.set()  # Lets the abandoned look-up end with the test.
        elapsed = loop.time() - started
        # The coalescing look-up and then the dial each get connect_timeout.
        assert connect_timeout <= elapsed < 2 * connect_timeout + NO_HANG / 2
        # a.test's connection is untouched.
        await small(pool, A, nginx_ab)
        assert pool.stats().origins[origin(B, nginx_ab)].coalesced_into is None


# Closing the pool.


async def test_closing_the_pool_while_a_coalescing_look_up_runs_opens_no_connection(
    nginx_ab: ServerProcess, client_ssl_context: ssl.SSLContext
) -> None:
    # _coalesced awaits the look-up after _acquire found the pool open: it may close meanwhile.
    gate = asyncio.Event()
    resolver = SignallingResolver({A: [V4], B: [V4]}, gate)
    hooks = RecordingHooks()
    pool = Pool(client_ssl_context, hooks=hooks, resolver=resolver)
    gate.set()
    await small(pool, A, nginx_ab)
    gate.clear()
    resolver.asked.clear()
    request = asyncio.create_task(pool.request("GET", url(B, nginx_ab)))
    await resolver.wait_asked()
    await pool.aclose()
    gate.set()
    async with asyncio.timeout(NO_HANG):
        (outcome,) = await asyncio.gather(request, return_exceptions=True)
    # Give a wrongly started dial the time to finish its handshake.
    await asyncio.sleep(0.3)
    assert isinstance(outcome, PoolClosed), outcome
    assert [info.origin for info in opened(hooks)] == [origin(A, nginx_ab)]


# The certificate is checked on the connection each request actually takes.


def _sni_switching_contexts(ca: trustme.CA) -> tuple[ssl.SSLContext, ssl.SSLContext, list[str | None]]:
    """A server context that shows a certificate for a.test and b.test on its first handshake only.

    Later handshakes get one for their SNI alone, as after a certificate
    rotation or behind a load balancer: each connection of one origin may
    cover different names. Returns it, a client context trusting ``ca``,
    and the SNI of each handshake in order.
    """

    def context(*names: str) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ca.issue_cert(*names).configure_cert(ctx)
        ctx.set_alpn_protocols(["h2"])
        return ctx

    both, only_a, only_b = context(A, B), context(A), context(B)
    handshakes: list[str | None] = []

    def pick(sslobj: ssl.SSLObject, name: str | None, _: ssl.SSLContext) -> None:
        handshakes.append(name)
        if len(handshakes) > 1:
            sslobj.context = only_b if name == B else only_a

    both.sni_callback = pick
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(client)
    client.set_alpn_protocols(["h2"])
    return both, client, handshakes


LOOPBACK_NAMES = StaticResolver({A: V4, B: V4})


class ClosingHooks(PoolHooks):
    def __init__(self) -> None:
        self.closed = asyncio.Event()

    def connection_closed(self, conn: ConnectionInfo, reason: H2PoolError) -> None:
        self.closed.set()


async def test_b_never_rides_a_later_connection_of_a_whose_certificate_does_not_cover_it() -> None:
    server_context, client, handshakes = _sni_switching_contexts(trustme.CA())
    async with HostileServer(server_context, serve_ok) as server:
        port = server.port
        hooks = ClosingHooks()
        async with Pool(client, resolver=LOOPBACK_NAMES, tls_session_reuse=False, hooks=hooks) as pool:
            assert (await pool.request("GET", f"https://{A}:{port}/1")).status == 200
            assert (await pool.request("GET", f"https://{B}:{port}/2")).status == 200
            assert server.attempts[-1].peer.index == 0  # Shared: that certificate covers b.test.
            server.peers[0].abort()
            async with asyncio.timeout(NO_HANG):
                await hooks.closed.wait()
            assert (await pool.request("GET", f"https://{A}:{port}/3")).status == 200
            assert (await pool.request("GET", f"https://{B}:{port}/4")).status == 200
            # a.test's new connection covers a.test only: b.test dialled its own.
            last = server.attempts[-1]
            assert handshakes[last.peer.index] == B, handshakes


async def test_b_dials_its_own_connection_rather_than_one_for_a_when_the_shared_one_is_full() -> None:
    server_context, client, handshakes = _sni_switching_contexts(trustme.CA())
    async with HostileServer(server_context, serve_ok) as server:
        port = server.port
        options = {"max_concurrent_streams": 1, "predictive_prewarm": False, "tls_session_reuse": False}
        async with Pool(client, resolver=LOOPBACK_NAMES, **options) as pool, pool.acquire(f"https://{A}:{port}"):
            assert (await pool.request("GET", f"https://{B}:{port}/b")).status == 200
            last = server.attempts[-1]
            assert handshakes[last.peer.index] == B, handshakes
            assert pool.stats().origins[f"https://{A}:{port}"].connections == 1
