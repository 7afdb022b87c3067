"""h2pool.httpx.H2PoolTransport: httpx.AsyncClient over an h2pool Pool, against real servers."""

from __future__ import annotations

import hashlib
import importlib
import json
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

import h2pool
from h2pool.httpx import H2PoolTransport
from tests.servers import ServerProcess, deterministic_bytes, expected_bytes, expected_sha256, free_port

pytestmark = pytest.mark.timeout(30)


@asynccontextmanager
async def _client(ssl_context: ssl.SSLContext, **options: Any) -> AsyncIterator[tuple[httpx.AsyncClient, h2pool.Pool]]:
    pool = h2pool.Pool(ssl_context, **options)
    async with httpx.AsyncClient(transport=H2PoolTransport(pool)) as client:
        yield client, pool


def _assert_idle(pool: h2pool.Pool) -> None:
    stats = pool.stats()
    assert (stats.streams_open, stats.slots_reserved, stats.waiting) == (0, 0, 0)


# Requests and responses.


@pytest.mark.parametrize("server_name", ["nginx", "nghttpd"])
async def test_get_returns_exact_body(
    server_name: str, request: pytest.FixtureRequest, client_ssl_context: ssl.SSLContext
) -> None:
    server: ServerProcess = request.getfixturevalue(server_name)
    async with _client(client_ssl_context) as (client, pool):
        response = await client.get(server.url("/1m"))
        assert response.status_code == 200
        assert response.content == expected_bytes("1m")
        _assert_idle(pool)


async def test_response_reports_http2_and_stream_id(nginx: ServerProcess, client_ssl_context: ssl.SSLContext) -> None:
    async with _client(client_ssl_context) as (client, _):
        response = await client.get(nginx.url("/small"))
    assert response.http_version == "HTTP/2"
    stream_id = response.extensions["stream_id"]
    assert isinstance(stream_id, int)
    assert stream_id % 2 == 1


async def test_response_headers_and_status_pass_through(
    hypercorn_server: ServerProcess, client_ssl_context: ssl.SSLContext
) -> None:
    async with _client(client_ssl_context) as (client, _):
        response = await client.get(hypercorn_server.url("/status/418"))
    assert response.status_code == 418
    assert response.headers["content-type"] == "text/plain"
    assert response.text == "status 418\n"


async def test_streamed_8m_download_is_exact(nginx: ServerProcess, client_ssl_context: ssl.SSLContext) -> None:
    digest = hashlib.sha256()
    chunks = 0
    async with (
        _client(client_ssl_context) as (client, pool),
        client.stream("GET", nginx.url("/8m")) as response,
    ):
        assert response.status_code == 200
        async for chunk in response.aiter_bytes():
            digest.update(chunk)
            chunks += 1
        assert chunks > 1
        assert digest.hexdigest() == expected_sha256("8m")
    _assert_idle(pool)


async def test_upload_bytes_body(hypercorn_server: ServerProcess, client_ssl_context: ssl.SSLContext) -> None:
    body = deterministic_bytes(300_000, seed="httpx-upload")
    async with _client(client_ssl_context) as (client, _):
        response = await client.post(hypercorn_server.url("/sha256"), content=body)
    assert response.json() == {"sha256": hashlib.sha256(body).hexdigest(), "length": len(body)}


async def test_upload_async_iterable_body(hypercorn_server: ServerProcess, client_ssl_context: ssl.SSLContext) -> None:
    parts = [deterministic_bytes(50_000, seed=f"part{i}") for i in range(6)]

    async def body() -> AsyncIterator[bytes]:
        for part in parts:
            yield part

    async with _client(client_ssl_context) as (client, _):
        # httpx marks this body `transfer-encoding: chunked`: the transport must drop it.
        response = await client.post(hypercorn_server.url("/sha256"), content=body())
    whole = b"".join(parts)
    assert response.json() == {"sha256": hashlib.sha256(whole).hexdigest(), "length": len(whole)}


async def test_request_headers_reach_server_without_hop_by_hop_ones(
    hypercorn_server: ServerProcess, client_ssl_context: ssl.SSLContext
) -> None:
    headers = {
        "x-custom": "kept",
        "connection": "keep-alive, x-hop",
        "keep-alive": "timeout=5",
        "proxy-connection": "keep-alive",
        "upgrade": "h2c",
        "x-hop": "named by connection",
    }
    async with _client(client_ssl_context) as (client, _):
        response = await client.get(hypercorn_server.url("/headers"), headers=headers)
    assert response.status_code == 200
    received: dict[str, list[str]] = {}
    for name, value in json.loads(response.content):
        received.setdefault(name, []).append(value)
    assert received["x-custom"] == ["kept"]
    assert not {"connection", "keep-alive", "proxy-connection", "upgrade", "transfer-encoding", "x-hop"} & set(received)
    # httpx's Host header became :authority, which hypercorn reports as host.
    assert received["host"] == [hypercorn_server.origin.removeprefix("https://")]


# Releasing streams and closing.


async def test_closing_streamed_response_early_releases_slot(
    nginx: ServerProcess, client_ssl_context: ssl.SSLContext
) -> None:
    async with _client(client_ssl_context) as (client, pool):
        async with client.stream("GET", nginx.url("/8m")) as response:
            async for chunk in response.aiter_bytes():
                assert chunk
                break
            assert pool.stats().streams_open == 1
        _assert_idle(pool)
        # The connection is still good for another request.
        follow_up = await client.get(nginx.url("/small"))
        assert follow_up.content == expected_bytes("small")


async def test_closing_client_closes_pool(nginx: ServerProcess, client_ssl_context: ssl.SSLContext) -> None:
    async with _client(client_ssl_context) as (client, pool):
        await client.get(nginx.url("/small"))
        assert not pool.closed
    assert pool.closed


async def test_a_pool_not_owned_by_its_transport_outlives_two_clients(
    nginx: ServerProcess, client_ssl_context: ssl.SSLContext
) -> None:
    async with h2pool.Pool(client_ssl_context) as pool:
        for _ in range(2):
            async with httpx.AsyncClient(transport=H2PoolTransport(pool, close_pool=False)) as client:
                response = await client.get(nginx.url("/small"))
                assert response.content == expected_bytes("small")
            assert not pool.closed
        # Both clients went over the one connection, still open for direct use.
        assert pool.stats().connections == 1
        assert (await pool.request("GET", nginx.url("/small"))).status == 200


# Errors.


async def test_connection_refused_maps_to_connect_error(client_ssl_context: ssl.SSLContext) -> None:
    async with _client(client_ssl_context, connect_timeout=5) as (client, pool):
        with pytest.raises(httpx.ConnectError) as info:
            await client.get(f"https://127.0.0.1:{free_port()}/")
        assert isinstance(info.value.__cause__, h2pool.ConnectError)
        _assert_idle(pool)


async def test_slow_response_maps_to_read_timeout(
    hypercorn_server: ServerProcess, client_ssl_context: ssl.SSLContext
) -> None:
    async with _client(client_ssl_context, read_timeout=0.3) as (client, pool):
        with pytest.raises(httpx.ReadTimeout) as info:
            await client.get(hypercorn_server.url("/delay/2000"))
        assert isinstance(info.value.__cause__, h2pool.ReadTimeout)
        _assert_idle(pool)


async def test_timeout_while_reading_body_maps_to_read_timeout(
    hypercorn_server: ServerProcess, client_ssl_context: ssl.SSLContext
) -> None:
    # /slow/4/2000: the headers and first chunk at once, then 2 s silences.
    async with _client(client_ssl_context, read_timeout=0.3) as (client, pool):
        async with client.stream("GET", hypercorn_server.url("/slow/4/2000")) as response:
            assert response.status_code == 200
            with pytest.raises(httpx.ReadTimeout) as info:
                async for _ in response.aiter_bytes():
                    pass
            assert isinstance(info.value.__cause__, h2pool.ReadTimeout)
            # Released at the error, before httpx closes the response.
            _assert_idle(pool)
        _assert_idle(pool)


async def test_no_free_slot_maps_to_pool_timeout(nginx: ServerProcess, client_ssl_context: ssl.SSLContext) -> None:
    options = {"max_concurrent_streams": 1, "max_connections_per_origin": 1, "acquire_timeout": 0.1}
    async with _client(client_ssl_context, **options) as (client, pool):
        async with client.stream("GET", nginx.url("/8m")):
            with pytest.raises(httpx.PoolTimeout) as info:
                await client.get(nginx.url("/small"))
            assert isinstance(info.value.__cause__, h2pool.AcquireTimeout)
        _assert_idle(pool)


async def test_closed_pool_maps_to_connect_error(nginx: ServerProcess, client_ssl_context: ssl.SSLContext) -> None:
    async with _client(client_ssl_context) as (client, pool):
        await pool.aclose()
        with pytest.raises(httpx.ConnectError) as info:
            await client.get(nginx.url("/small"))
        assert isinstance(info.value.__cause__, h2pool.PoolClosed)


async def test_invalid_header_maps_to_local_protocol_error(
    nginx: ServerProcess, client_ssl_context: ssl.SSLContext
) -> None:
    async with _client(client_ssl_context) as (client, pool):
        with pytest.raises(httpx.LocalProtocolError) as info:
            await client.get(nginx.url("/small"), headers={"te": "gzip"})
        assert isinstance(info.value.__cause__, h2pool.InvalidRequest)
        _assert_idle(pool)


# The optional dependency.


def test_importing_h2pool_does_not_need_httpx() -> None:
    code = "import sys; sys.modules['httpx'] = None; import h2pool; assert 'httpx' not in dir(h2pool)"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)


def test_h2pool_httpx_without_httpx_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "httpx", None)
    monkeypatch.delitem(sys.modules, "h2pool.httpx")
    with pytest.raises(ImportError, match=r"h2pool\[httpx\]"):
        importlib.import_module("h2pool.httpx")
