"""The test servers really speak HTTP/2 over TLS (ALPN h2) on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import socket
import ssl
import time

import httpx
import psutil  # type: ignore[import-untyped, unused-ignore]
import pytest

from tests.conftest import ServerFactory
from tests.servers import (
    Certs,
    ServerProcess,
    deterministic_bytes,
    expected_bytes,
    expected_sha256,
    free_port,
    h2_request,
)


def _dead(proc: psutil.Process, timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.02)
    return False


def _client(ctx: ssl.SSLContext) -> httpx.AsyncClient:
    return httpx.AsyncClient(http2=True, verify=ctx, timeout=10.0)


def test_expected_content() -> None:
    assert len(expected_bytes("small")) == 100
    assert len(expected_bytes("1k")) == 1024
    assert len(expected_bytes("8m")) == 8 * 1024 * 1024
    assert expected_bytes("small") != expected_bytes("1k")[:100]
    assert expected_sha256("1m") == hashlib.sha256(expected_bytes("1m")).hexdigest()
    assert deterministic_bytes(70_000)[:1000] == deterministic_bytes(1000)


async def test_static_bodies_over_h2(h2_server: ServerProcess, client_ssl_context: ssl.SSLContext) -> None:
    assert h2_server.origin == f"https://127.0.0.1:{h2_server.port}"
    async with _client(client_ssl_context) as client:
        for name in ("small", "1m"):
            r = await client.get(h2_server.url(name))
            assert r.status_code == 200
            assert r.http_version == "HTTP/2"
            assert r.content == expected_bytes(name)


@pytest.mark.parametrize("server_hostname", ["localhost", "127.0.0.1", "alt.localhost"])
def test_alpn_settings_and_cert_names(h2_server: ServerProcess, certs: Certs, server_hostname: str) -> None:
    r = h2_request(
        h2_server.host,
        h2_server.port,
        "/small",
        ssl_context=certs.client_ssl_context(),
        server_hostname=server_hostname,
    )
    assert r.alpn == "h2"
    assert r.status == 200
    assert r.body == expected_bytes("small")
    assert r.max_concurrent_streams == h2_server.options["max_concurrent_streams"]


def test_untrusted_client_is_rejected(h2_server: ServerProcess) -> None:
    ctx = ssl.create_default_context()  # does not trust the test CA
    with (
        socket.create_connection(h2_server.address, timeout=5) as raw,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        ctx.wrap_socket(raw, server_hostname="localhost")


def test_nginx_upload_reads_whole_body(nginx: ServerProcess, certs: Certs) -> None:
    body = deterministic_bytes(8 * 1024 * 1024)
    r = h2_request(
        nginx.host,
        nginx.port,
        "/upload",
        ssl_context=certs.client_ssl_context(),
        method="POST",
        body=body,
    )
    assert (r.status, r.body, r.reset_code) == (200, b"ok\n", None)
    # nginx checks the body against content-length, which proves it reads it.
    short = h2_request(
        nginx.host,
        nginx.port,
        "/upload",
        ssl_context=certs.client_ssl_context(),
        method="POST",
        body=b"x" * 10,
        headers=[("content-length", "1000")],
    )
    assert short.status == 400


def test_nghttpd_echo_and_trailer_option(server_factory: ServerFactory, certs: Certs) -> None:
    server = server_factory("nghttpd", trailers=["x-checksum: abc"])
    body = deterministic_bytes(200_000, seed="upload")
    r = h2_request(
        server.host,
        server.port,
        "/echo",
        ssl_context=certs.client_ssl_context(),
        method="PUT",
        body=body,
    )
    assert r.status == 200
    assert r.body == body
    assert ("x-checksum", "abc") in r.trailers


async def test_hypercorn_sha256_and_echo(hypercorn_server: ServerProcess, client_ssl_context: ssl.SSLContext) -> None:
    body = deterministic_bytes(1024 * 1024, seed="upload")
    async with _client(client_ssl_context) as client:
        r = await client.post(hypercorn_server.url("/sha256"), content=body)
        assert r.http_version == "HTTP/2"
        assert r.json() == {
            "sha256": hashlib.sha256(body).hexdigest(),
            "length": len(body),
        }

        small = body[: 32 * 1024]
        r = await client.post(hypercorn_server.url("/echo"), content=small)
        assert (r.status_code, r.content) == (200, small)
        r = await client.put(hypercorn_server.url("/echo"), content=b"")
        assert (r.status_code, r.content) == (200, b"")


def test_hypercorn_trailers(hypercorn_server: ServerProcess, certs: Certs) -> None:
    ctx = certs.client_ssl_context()
    r = h2_request(
        hypercorn_server.host,
        hypercorn_server.port,
        "/trailers",
        ssl_context=ctx,
        headers=[("te", "trailers")],
    )
    assert r.status == 200
    assert r.body == b"hello"
    assert r.trailers == [("x-checksum", "abc"), ("x-trailer-2", "two")]
    # Without "te: trailers" hypercorn silently drops the trailers.
    r = h2_request(hypercorn_server.host, hypercorn_server.port, "/trailers", ssl_context=ctx)
    assert (r.body, r.trailers) == (b"hello", [])


async def test_hypercorn_routes(hypercorn_server: ServerProcess, client_ssl_context: ssl.SSLContext) -> None:
    async with _client(client_ssl_context) as client:

        async def get(path: str) -> httpx.Response:
            return await client.get(hypercorn_server.url(path), headers={"x-test": "yes"})

        for name in ("small", "1k"):
            assert (await get(f"/{name}")).content == expected_bytes(name)
        assert (await get("/bytes/100000")).content == deterministic_bytes(100_000)
        assert (await get("/bytes/0")).content == b""
        r = await get("/delay/20")
        assert (r.status_code, r.text) == (200, "done")
        assert (await get("/status/418")).status_code == 418
        r = await get("/status/204")
        assert (r.status_code, r.content) == (204, b"")
        pairs = json.loads((await get("/headers")).content)
        assert ["x-test", "yes"] in pairs
        r = await get("/slow/3/10")
        assert r.content == deterministic_bytes(3 * 16 * 1024)
        assert (await get("/nope")).status_code == 404
        assert (await get("/echo")).status_code == 405
        assert (await get("/bytes/abc")).status_code == 400


@pytest.mark.parametrize("kind", ["nginx", "nghttpd", "hypercorn"])
def test_restart_kill_and_cleanup(server_factory: ServerFactory, certs: Certs, kind: str) -> None:
    server = server_factory(kind, max_concurrent_streams=7)
    ctx = certs.client_ssl_context()
    port = server.port
    assert h2_request(server.host, port, "/small", ssl_context=ctx).max_concurrent_streams == 7

    server.restart()
    assert server.port == port
    assert h2_request(server.host, port, "/small", ssl_context=ctx).body == expected_bytes("small")

    assert server.pid is not None
    group = [
        psutil.Process(server.pid),
        *psutil.Process(server.pid).children(recursive=True),
    ]
    server.kill()  # abrupt: whole process group, e.g. nginx workers too
    assert not server.running
    # Orphans are reparented to pid 1, which may reap them late: zombies count as dead.
    assert all(_dead(proc) for proc in group)
    with pytest.raises(OSError):
        socket.create_connection(server.address, timeout=1).close()

    server.start()
    assert h2_request(server.host, port, "/small", ssl_context=ctx).status == 200


def test_start_failure_is_reported_and_cleaned_up(
    server_factory: ServerFactory,
) -> None:
    port = free_port()
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", port))
        blocker.listen()
        with pytest.raises(RuntimeError, match="nghttpd exited early") as info:
            server_factory("nghttpd", port=port, start_timeout=5.0)
    assert "nghttpd-output.log" in str(info.value)


@pytest.mark.parametrize("ci", ["", "true"])
def test_missing_binary_skips_locally_fails_in_ci(monkeypatch: pytest.MonkeyPatch, ci: str) -> None:
    from tests import conftest

    monkeypatch.setattr(conftest, "available", lambda kind: False)
    monkeypatch.setenv("CI", ci)
    expected = pytest.fail.Exception if ci else pytest.skip.Exception
    with pytest.raises(expected, match="nginx is not installed"):
        conftest.require_server("nginx")
