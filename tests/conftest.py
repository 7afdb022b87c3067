"""Pytest fixtures: real HTTP/2 TLS servers on loopback (see tests/servers.py).

Session-scoped servers are shared by many tests: do not stop, pause or kill
them in a test -- use ``server_factory`` for that (function-scoped, cleaned up
after the test).

A missing server binary skips the test locally, but FAILS it when the ``CI``
environment variable is set: in CI a test that needs nginx must never be
silently skipped.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.servers import (
    KINDS,
    Certs,
    ServerProcess,
    available,
    make_certs,
    make_docroot,
    start_hypercorn,
    start_nghttpd,
    start_nginx,
    start_server,
)

_FIXTURE_FOR_KIND = {
    "nginx": "nginx",
    "nghttpd": "nghttpd",
    "hypercorn": "hypercorn_server",
}
_INSTALL_HINT = {
    "nginx": "apt-get install -y nginx",
    "nghttpd": "apt-get install -y nghttp2-server",
    "hypercorn": "pip install hypercorn",
}


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require_server(kind: str) -> None:
    """Skip (locally) or fail (in CI) when server ``kind`` is not installed."""
    if available(kind):
        return
    msg = f"{kind} is not installed ({_INSTALL_HINT[kind]})"
    if in_ci():
        pytest.fail(f"{msg}; CI must run every server test", pytrace=False)
    pytest.skip(msg)


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="session")
def docroot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_docroot(tmp_path_factory.mktemp("docroot"))


@pytest.fixture
def client_ssl_context(certs: Certs) -> ssl.SSLContext:
    """A fresh client context per test (trusts the test CA, ALPN ["h2"])."""
    return certs.client_ssl_context()


@pytest.fixture(scope="session")
def nginx(tmp_path_factory: pytest.TempPathFactory, certs: Certs, docroot: Path) -> Iterator[ServerProcess]:
    require_server("nginx")
    server = start_nginx(tmp_path_factory.mktemp("nginx"), certs, docroot=docroot)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def nghttpd(tmp_path_factory: pytest.TempPathFactory, certs: Certs, docroot: Path) -> Iterator[ServerProcess]:
    require_server("nghttpd")
    server = start_nghttpd(tmp_path_factory.mktemp("nghttpd"), certs, docroot=docroot)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def hypercorn_server(tmp_path_factory: pytest.TempPathFactory, certs: Certs) -> Iterator[ServerProcess]:
    require_server("hypercorn")
    server = start_hypercorn(tmp_path_factory.mktemp("hypercorn"), certs)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=KINDS, ids=KINDS)
def h2_server(request: pytest.FixtureRequest) -> ServerProcess:
    """Each of the session servers in turn: nginx, nghttpd, hypercorn."""
    server: ServerProcess = request.getfixturevalue(_FIXTURE_FOR_KIND[request.param])
    return server


ServerFactory = Callable[..., ServerProcess]


@pytest.fixture
def server_factory(tmp_path: Path, certs: Certs, docroot: Path) -> Iterator[ServerFactory]:
    """``server_factory(kind, **kwargs)`` starts a private server for this test
    (kwargs as for start_nginx / start_nghttpd / start_hypercorn); all of them
    are stopped when the test ends. Use it for restarts, kills and pauses."""
    started: list[ServerProcess] = []

    def factory(kind: str, **kwargs: Any) -> ServerProcess:
        require_server(kind)
        if kind != "hypercorn":
            kwargs.setdefault("docroot", docroot)
        server = start_server(kind, tmp_path, certs, **kwargs)
        started.append(server)
        return server

    try:
        yield factory
    finally:
        for server in reversed(started):
            server.stop()
