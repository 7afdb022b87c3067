"""Where the benchmark sends its requests: a local server it starts, or the user's URL.

Local servers listen on 127.0.0.1 only, with certificates made for the run,
and are configured so that the criteria can be met at all: one connection
carries a whole throughput run (``keepalive_requests``) and 256 concurrent
streams (the 150-stream criterion, and ~40 connections for 10,000 streams).

Memory criteria need requests that stay in flight with no response bytes
(otherwise they would measure buffered bodies, not the pool): a *hold*
path, per server:

* nginx: ``GET /hold``, delayed by ``limit_req`` at one request a minute
  with a huge burst; resetting the stream ends the delay. The first request
  after a quiet minute passes at once: :func:`bench.held.prime_hold` spends it;
* nghttpd: ``GET /small`` whose request never ends: nghttpd answers at END_STREAM;
* hypercorn: ``GET /delay/60000`` of the test ASGI app.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from urllib.parse import urlsplit

from tests.servers import (
    DOCROOT_FILES,
    Certs,
    ServerProcess,
    available,
    make_certs,
    make_docroot,
    start_hypercorn,
    start_nghttpd,
    start_nginx,
    which,
)

SERVER_KINDS = ("nginx", "nghttpd", "hypercorn")
#: The servers' MAX_CONCURRENT_STREAMS: at least 150 for criterion 4.
SERVER_STREAMS = 256
#: Requests one connection may carry before the server sends GOAWAY.
SERVER_REQUESTS_PER_CONNECTION = 1_000_000

_NGINX_HOLD_HTTP = """
    limit_req_zone "h2pool-bench" zone=h2pool_hold:1m rate=1r/m;
    limit_req_log_level notice;
"""
_NGINX_HOLD_SERVER = """
        location = /hold {{
            limit_req zone=h2pool_hold burst=10000000;
            alias "{docroot}/small";
        }}
"""


@dataclass(frozen=True)
class Target:
    """The URLs the criteria use and what is known about the server behind them."""

    kind: str
    version: str
    small_url: str
    download_url: str
    hold_url: str
    #: False when the hold works by never ending the request (only h2pool's handles can do that).
    hold_request_ends: bool
    #: True when the hold path answers the first request after a quiet spell (nginx's limit_req).
    hold_needs_priming: bool = False
    #: Expected body sizes, when the server is ours.
    small_size: int | None = None
    download_size: int | None = None
    #: The CA that signed a local server's certificate; None: the system's CAs.
    ca_path: str | None = None
    #: Where a local server's files are (criteria may add files); None for ``--url``.
    #: A string, not a Path: targets travel as JSON to the fresh-process rounds.
    docroot: str | None = None
    #: The TLS cipher suite h2pool negotiates with the server (OpenSSL's name),
    #: once known: h2load is held to the same, so that its figures are a
    #: ceiling for the same work.
    tls_cipher: str | None = None

    @property
    def description(self) -> str:
        if self.kind == "url":
            return f"your server at {self.small_url}"
        return f"{self.version} at {self.origin}, started for this run"

    @property
    def origin(self) -> str:
        parts = urlsplit(self.small_url)
        return f"{parts.scheme}://{parts.netloc}"

    @property
    def hold_path(self) -> str:
        return _path_of(self.hold_url)

    @property
    def small_path(self) -> str:
        return _path_of(self.small_url)

    def ssl_context(self, alpn: tuple[str, ...] = ("h2",)) -> ssl.SSLContext:
        """A fresh client context: trusting the run's CA, or the system's for ``--url``."""
        if self.ca_path is None:
            context = ssl.create_default_context()
        else:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.load_verify_locations(cafile=self.ca_path)
        if alpn:
            context.set_alpn_protocols(list(alpn))
        return context


def _path_of(url: str) -> str:
    parts = urlsplit(url)
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def default_kind() -> str:
    for kind in SERVER_KINDS:
        if available(kind):
            return kind
    raise RuntimeError("no server to benchmark against: install nginx or nghttp2-server, or pip install hypercorn")


@contextmanager
def local_target(kind: str, workdir: Path) -> Iterator[Target]:
    """Start server ``kind`` on 127.0.0.1 for the duration of the block; always stop it."""
    certs = make_certs(workdir / "certs")
    docroot = make_docroot(workdir / "docroot")
    server = _start(kind, workdir, certs, docroot)
    try:
        hold_url, hold_request_ends = _hold_of(kind, server)
        target = Target(
            kind=kind,
            version=server_version(kind),
            small_url=server.url("/small"),
            download_url=server.url("/1m"),
            hold_url=hold_url,
            hold_request_ends=hold_request_ends,
            hold_needs_priming=kind == "nginx",
            small_size=DOCROOT_FILES["small"],
            download_size=DOCROOT_FILES["1m"],
            ca_path=str(certs.ca_path),
            docroot=str(docroot),
        )
        yield target
    finally:
        server.stop()


def url_target(url: str, download_url: str | None, hold_url: str | None) -> Target:
    """The user's server: small requests to ``url``, downloads and holds to their own URLs or ``url``."""
    for candidate in (url, download_url, hold_url):
        if candidate is not None and urlsplit(candidate).scheme != "https":
            raise SystemExit(f"{candidate}: only https:// URLs (HTTP/2 over TLS, verified) are benchmarked")
    return Target(
        kind="url",
        version="unknown (see server_header)",
        small_url=url,
        download_url=download_url or url,
        hold_url=hold_url or url,
        hold_request_ends=True,
    )


def _start(kind: str, workdir: Path, certs: Certs, docroot: Path) -> ServerProcess:
    if kind == "nginx":
        return start_nginx(
            workdir,
            certs,
            docroot=docroot,
            max_concurrent_streams=SERVER_STREAMS,
            keepalive_requests=SERVER_REQUESTS_PER_CONNECTION,
            extra_http_config=_NGINX_HOLD_HTTP,
            extra_server_config=_NGINX_HOLD_SERVER.format(docroot=docroot),
        )
    if kind == "nghttpd":
        return start_nghttpd(workdir, certs, docroot=docroot, max_concurrent_streams=SERVER_STREAMS)
    if kind == "hypercorn":
        return start_hypercorn(
            workdir,
            certs,
            max_concurrent_streams=SERVER_STREAMS,
            keep_alive_max_requests=SERVER_REQUESTS_PER_CONNECTION,
            keep_alive_timeout=300.0,
        )
    raise ValueError(f"unknown server kind {kind!r}")


def _hold_of(kind: str, server: ServerProcess) -> tuple[str, bool]:
    if kind == "nginx":
        return server.url("/hold"), True
    if kind == "nghttpd":
        return server.url("/small"), False
    return server.url("/delay/60000"), True


def server_version(kind: str) -> str:
    """``nginx/1.22.1``, ``nghttpd nghttp2/1.52.0``, ``hypercorn 0.18.0``."""
    if kind == "hypercorn":
        return f"hypercorn {metadata.version('hypercorn')}"
    exe = which(kind) or shutil.which(kind) or kind
    result = subprocess.run([exe, "-v" if kind == "nginx" else "--version"], capture_output=True, text=True, timeout=10)
    text = (result.stdout + result.stderr).strip()
    return text.removeprefix("nginx version: ")
