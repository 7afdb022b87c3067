"""Connection set-up failures against real sockets on 127.0.0.1: each gives its typed error, quickly.

Untrusted certificate -> TLSError; no h2 in ALPN -> ALPNError; nothing
listening -> ConnectError; a server that never answers the handshake ->
ConnectTimeout. None of them may hang a caller or leave a slot behind.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trustme

from h2pool import (
    ALPNError,
    ConnectError,
    ConnectTimeout,
    H2PoolTimeout,
    Pool,
    TLSError,
)
from tests.conftest import ServerFactory
from tests.servers import Certs, ServerProcess, expected_bytes, free_port

pytestmark = pytest.mark.timeout(30)


def _assert_no_leftovers(pool: Pool) -> None:
    stats = pool.stats()
    assert (stats.connections, stats.connecting, stats.streams_open, stats.slots_reserved, stats.waiting) == (
        0,
        0,
        0,
        0,
        0,
    )


@asynccontextmanager
async def tcp_server(tls: ssl.SSLContext | None) -> AsyncIterator[str]:
    """A server on 127.0.0.1 that accepts (and completes TLS if ``tls``) but never sends a byte.

    Yields its ``https://`` origin.
    """
    done = asyncio.Event()
    writers: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await done.wait()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=tls)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"https://127.0.0.1:{port}"
    finally:
        done.set()
        server.close()
        for writer in writers:
            writer.transport.abort()
        await server.wait_closed()


async def test_untrusted_certificate_fails_with_tls_error_naming_the_origin(nginx: ServerProcess) -> None:
    other_ca = trustme.CA(organization_name="not the server's CA")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    other_ca.configure_trust(context)
    async with asyncio.timeout(10), Pool(context) as pool:
        with pytest.raises(TLSError) as caught:
            await pool.request("GET", nginx.url("/small"))
        _assert_no_leftovers(pool)
    assert not isinstance(caught.value, ALPNError)
    assert caught.value.origin == nginx.origin
    assert nginx.origin in str(caught.value)
    assert "certificate" in str(caught.value)


async def test_server_completing_tls_without_selecting_h2_fails_with_alpn_error(certs: Certs) -> None:
    # The server knows only http/1.1: OpenSSL completes the handshake with no protocol selected.
    async with (
        asyncio.timeout(10),
        tcp_server(certs.server_ssl_context(alpn=("http/1.1",))) as origin,
        Pool(certs.client_ssl_context()) as pool,
    ):
        with pytest.raises(ALPNError) as caught:
            await pool.request("GET", f"{origin}/")
        _assert_no_leftovers(pool)
    assert caught.value.origin == origin
    assert origin in str(caught.value)


async def test_nginx_without_http2_fails_with_alpn_error(
    server_factory: ServerFactory, certs: Certs, client_ssl_context: ssl.SSLContext
) -> None:
    # A second listener of the same nginx without ``http2``: it offers only
    # http/1.1, and nginx answers a client offering only h2 with the
    # no_application_protocol alert (RFC 7301 §3.2).
    port = free_port()
    server_factory(
        "nginx",
        extra_http_config=f"""
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate "{certs.cert_path}";
        ssl_certificate_key "{certs.key_path}";
        location / {{ return 200 "http/1.1 only\\n"; }}
    }}
""",
    )
    origin = f"https://127.0.0.1:{port}"
    async with asyncio.timeout(10), Pool(client_ssl_context) as pool:
        with pytest.raises(ALPNError) as caught:
            await pool.request("GET", f"{origin}/")
        _assert_no_leftovers(pool)
    assert caught.value.origin == origin


async def test_connection_refused_fails_every_caller_quickly_and_the_pool_stays_usable(
    nginx: ServerProcess, client_ssl_context: ssl.SSLContext
) -> None:
    refused = f"https://127.0.0.1:{free_port()}"
    loop = asyncio.get_running_loop()
    # Two slots on the one connection allowed: three of the five callers queue as waiters.
    pool = Pool(client_ssl_context, max_connections_per_origin=1, max_concurrent_streams=2, acquire_timeout=20)
    async with asyncio.timeout(15), pool:
        started = loop.time()
        tasks = [asyncio.create_task(pool.request("GET", f"{refused}/small")) for _ in range(5)]
        await asyncio.sleep(0)
        queued = pool.stats().waiting
        results = await asyncio.gather(*tasks, return_exceptions=True)
        elapsed = loop.time() - started
        assert queued == 3
        for result in results:
            assert isinstance(result, ConnectError), repr(result)
            # Refused is not a timeout: the waiters must not sit out acquire_timeout.
            assert not isinstance(result, H2PoolTimeout), repr(result)
            assert result.origin == refused
        assert elapsed < 3.0
        _assert_no_leftovers(pool)

        good = await pool.request("GET", nginx.url("/small"))
        assert good.content == expected_bytes("small")
        # The failed origin holds no stale state: the next try fails the same way.
        with pytest.raises(ConnectError):
            await pool.request("GET", f"{refused}/small")


async def test_handshake_that_never_completes_fails_with_connect_timeout(
    client_ssl_context: ssl.SSLContext,
) -> None:
    connect_timeout = 0.5
    loop = asyncio.get_running_loop()
    async with (
        asyncio.timeout(10),
        tcp_server(None) as origin,
        Pool(client_ssl_context, connect_timeout=connect_timeout) as pool,
    ):
        started = loop.time()
        with pytest.raises(ConnectTimeout) as caught:
            await pool.request("GET", f"{origin}/")
        elapsed = loop.time() - started
        _assert_no_leftovers(pool)
    assert isinstance(caught.value, ConnectError)
    assert caught.value.origin == origin
    assert connect_timeout * 0.9 <= elapsed < connect_timeout + 2.0
