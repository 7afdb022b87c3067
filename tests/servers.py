"""Real HTTP/2-over-TLS servers on loopback, for tests and benchmarks.

Importable by pytest (``tests/conftest.py``) and by plain scripts
(``from tests.servers import ...`` with the repository root on ``sys.path``).
Nothing in here imports pytest.

Three kinds of servers are supported, each run as a subprocess in its own
process group so that it (and every child it forks) can always be cleaned up:

* ``nginx``     -- static docroot, ``POST|PUT /upload`` (body read fully, then
  discarded, answered ``200 ok``).
* ``nghttpd``   -- static docroot (nghttp2's test server); with
  ``echo_upload=True`` (the default) every POST/PUT is echoed back.
* ``hypercorn`` -- the ASGI app in :mod:`tests.asgi_app` (same docroot paths
  plus dynamic routes).

All servers only ever listen on loopback (127.0.0.1 by default, or ::1).
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import functools
import hashlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Self

if TYPE_CHECKING:
    import trustme

__all__ = [
    "DOCROOT_FILES",
    "KINDS",
    "REPO_ROOT",
    "Certs",
    "RawH2Response",
    "ServerProcess",
    "available",
    "deterministic_bytes",
    "expected_bytes",
    "expected_sha256",
    "free_port",
    "h2_request",
    "iter_deterministic_bytes",
    "make_certs",
    "make_docroot",
    "start_hypercorn",
    "start_nghttpd",
    "start_nginx",
    "start_server",
    "which",
]

REPO_ROOT: Final[Path] = Path(__file__).resolve().parent.parent

KINDS: Final[tuple[str, ...]] = ("nginx", "nghttpd", "hypercorn")

#: Default overall deadline for a server to start accepting connections.
DEFAULT_START_TIMEOUT: Final[float] = 10.0
#: Default deadline for a server to exit after SIGTERM before it is SIGKILLed.
DEFAULT_STOP_TIMEOUT: Final[float] = 5.0

LOOPBACK_HOSTS: Final[frozenset[str]] = frozenset({"127.0.0.1", "::1"})

# --------------------------------------------------------------------------
# Deterministic content
# --------------------------------------------------------------------------

#: Static files served by every server kind: name -> size in bytes.
DOCROOT_FILES: Final[Mapping[str, int]] = {
    "small": 100,
    "1k": 1024,
    "1m": 1024 * 1024,
    "8m": 8 * 1024 * 1024,
}

_BLOCK: Final[int] = 64 * 1024


def iter_deterministic_bytes(n: int, seed: str = "bytes", chunk_size: int = _BLOCK) -> Iterator[bytes]:
    """Yield ``n`` pseudo-random but deterministic bytes, in chunks.

    The stream for a given ``seed`` is made of 64 KiB blocks, block ``i`` being
    ``shake_256(b"h2pool:<seed>:<i>").digest(65536)``; so the output for a
    smaller ``n`` is a prefix of the output for a larger one. Chunks are at
    most ``chunk_size`` bytes.
    """
    if n < 0:
        raise ValueError("n must be >= 0")
    if chunk_size <= 0:
        raise ValueError("chunk_size must be > 0")
    buf = bytearray()
    produced = 0
    block = 0
    while produced < n:
        want = min(_BLOCK, n - produced)
        buf += hashlib.shake_256(f"h2pool:{seed}:{block}".encode()).digest(_BLOCK)[:want]
        block += 1
        produced += want
        while len(buf) >= chunk_size:
            yield bytes(buf[:chunk_size])
            del buf[:chunk_size]
    if buf:
        yield bytes(buf)


def deterministic_bytes(n: int, seed: str = "bytes") -> bytes:
    """All of :func:`iter_deterministic_bytes` joined (``/bytes/{n}`` body)."""
    return b"".join(iter_deterministic_bytes(n, seed))


@functools.cache
def expected_bytes(name: str) -> bytes:
    """Exact content of docroot file ``name`` (one of :data:`DOCROOT_FILES`)."""
    try:
        size = DOCROOT_FILES[name.lstrip("/")]
    except KeyError:
        raise KeyError(f"unknown docroot file {name!r}; known: {sorted(DOCROOT_FILES)}") from None
    return deterministic_bytes(size, seed=f"file:{name.lstrip('/')}")


@functools.cache
def expected_sha256(name: str) -> str:
    """Hex SHA-256 of docroot file ``name``."""
    return hashlib.sha256(expected_bytes(name)).hexdigest()


def make_docroot(directory: Path) -> Path:
    """Create (or refresh) the shared docroot in ``directory``; return it.

    Files are world readable so that nginx workers can read them whatever
    user they run as.
    """
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o755)
    for name, size in DOCROOT_FILES.items():
        path = directory / name
        if not (path.is_file() and path.stat().st_size == size and path.read_bytes() == expected_bytes(name)):
            tmp = path.with_name(f".{name}.tmp")
            tmp.write_bytes(expected_bytes(name))
            os.replace(tmp, path)
        os.chmod(path, 0o644)
    return directory


# --------------------------------------------------------------------------
# Certificates
# --------------------------------------------------------------------------

SERVER_NAMES: Final[tuple[str, ...]] = (
    "localhost",
    "127.0.0.1",
    "::1",
    "alt.localhost",
)


@dataclasses.dataclass(frozen=True)
class Certs:
    """A test CA and one server certificate for :data:`SERVER_NAMES`."""

    directory: Path
    ca_path: Path  #: the CA certificate (PEM) -- what clients trust
    cert_path: Path  #: server certificate chain (leaf first, PEM)
    key_path: Path  #: server private key (PEM)
    ca: trustme.CA = dataclasses.field(repr=False, compare=False)
    server_cert: trustme.LeafCert = dataclasses.field(repr=False, compare=False)

    def client_ssl_context(self, alpn: Sequence[str] = ("h2",)) -> ssl.SSLContext:
        """A fresh ``PROTOCOL_TLS_CLIENT`` context that trusts the CA, ALPN h2."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(cafile=str(self.ca_path))
        if alpn:
            ctx.set_alpn_protocols(list(alpn))
        return ctx

    def server_ssl_context(self, alpn: Sequence[str] = ("h2",)) -> ssl.SSLContext:
        """A ``PROTOCOL_TLS_SERVER`` context with the server cert (for in-process servers)."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(self.cert_path), str(self.key_path))
        if alpn:
            ctx.set_alpn_protocols(list(alpn))
        return ctx


def make_certs(directory: Path) -> Certs:
    """Create a trustme CA and server cert; write ``ca.pem``, ``server-chain.pem``,
    ``server-key.pem`` into ``directory``."""
    import trustme

    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name="h2pool test CA")
    leaf = ca.issue_cert(*SERVER_NAMES)
    ca_path = directory / "ca.pem"
    cert_path = directory / "server-chain.pem"
    key_path = directory / "server-key.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    with open(cert_path, "wb") as f:
        f.writelines(blob.bytes() for blob in leaf.cert_chain_pems)
    leaf.private_key_pem.write_to_path(str(key_path))
    # Readable by nginx workers / other users; it is a throwaway test key.
    for p in (ca_path, cert_path, key_path):
        os.chmod(p, 0o644)
    return Certs(
        directory=directory,
        ca_path=ca_path,
        cert_path=cert_path,
        key_path=key_path,
        ca=ca,
        server_cert=leaf,
    )


# --------------------------------------------------------------------------
# Binaries
# --------------------------------------------------------------------------

_SBIN_FALLBACK: Final[tuple[str, ...]] = (
    "/usr/sbin",
    "/usr/local/sbin",
    "/sbin",
    "/usr/bin",
)


def which(kind: str) -> str | None:
    """Path of the executable that runs server ``kind``, or None if missing.

    For ``hypercorn`` this is :data:`sys.executable` when hypercorn is importable.
    """
    if kind == "hypercorn":
        return sys.executable if importlib.util.find_spec("hypercorn") is not None else None
    if kind not in ("nginx", "nghttpd"):
        raise ValueError(f"unknown server kind {kind!r}; known: {KINDS}")
    found = shutil.which(kind)
    if found is None:
        found = shutil.which(kind, path=os.pathsep.join(_SBIN_FALLBACK))
    return found


def available(kind: str) -> bool:
    """Whether server ``kind`` can be started on this machine."""
    return which(kind) is not None


def _require(kind: str) -> str:
    exe = which(kind)
    if exe is None:
        raise RuntimeError(f"{kind} is not installed (apt-get install -y nginx nghttp2-server)")
    return exe


# --------------------------------------------------------------------------
# Ports
# --------------------------------------------------------------------------


def _check_loopback(host: str) -> None:
    if host not in LOOPBACK_HOSTS:
        raise ValueError(f"test servers only listen on loopback {sorted(LOOPBACK_HOSTS)}, not {host!r}")


def free_port(host: str = "127.0.0.1") -> int:
    """A currently free TCP port on ``host`` (bind to port 0, read it, close)."""
    _check_loopback(host)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


# --------------------------------------------------------------------------
# Process management
# --------------------------------------------------------------------------

#: Started and not yet reaped servers (strong refs, so the atexit hook always finds them).
_RUNNING: set[ServerProcess] = set()


@atexit.register
def _stop_all_at_exit() -> None:  # pragma: no cover - safety net
    for server in list(_RUNNING):
        with contextlib.suppress(Exception):
            server.stop(timeout=2.0)


def _tail(path: Path, lines: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 16 * 1024))
            data = f.read()
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    text = data.decode("utf-8", "replace")
    return "\n".join(text.splitlines()[-lines:])


class ServerProcess:
    """A server subprocess listening on ``host:port`` (TLS, ALPN h2).

    The process runs in its own session / process group; :meth:`stop` sends
    SIGTERM (or the kind's graceful signal), waits up to ``timeout`` seconds,
    then SIGKILLs the whole group. Left-over members of the group (e.g. nginx
    workers after the master died) are always killed too.
    """

    def __init__(
        self,
        kind: str,
        argv: Sequence[str],
        *,
        port: int,
        host: str = "127.0.0.1",
        workdir: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        log_paths: Sequence[Path] = (),
        remove_before_start: Sequence[Path] = (),
        graceful_signal: signal.Signals = signal.SIGTERM,
        start_timeout: float = DEFAULT_START_TIMEOUT,
        options: Mapping[str, Any] | None = None,
        docroot: Path | None = None,
    ) -> None:
        _check_loopback(host)
        self.kind = kind
        self.argv: list[str] = [str(a) for a in argv]
        self.host = host
        self.port = port
        self.workdir = workdir
        self.env: dict[str, str] | None = dict(env) if env is not None else None
        self.cwd = cwd or workdir
        self.output_log = workdir / f"{kind}-output.log"
        self.log_paths: list[Path] = [self.output_log, *log_paths]
        self.remove_before_start = list(remove_before_start)
        self.graceful_signal = graceful_signal
        self.start_timeout = start_timeout
        #: The settings the server was started with (e.g. max_concurrent_streams).
        self.options: dict[str, Any] = dict(options or {})
        self.docroot = docroot
        self.returncode: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    # -- info ---------------------------------------------------------------

    @property
    def origin(self) -> str:
        """``https://127.0.0.1:PORT`` (IPv6 hosts bracketed)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}"

    def url(self, path: str = "/") -> str:
        if not path.startswith("/"):
            path = "/" + path
        return self.origin + path

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and not self._leader_exited()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<ServerProcess {self.kind} {self.origin} pid={self.pid} {state}>"

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of each log file of the server."""
        parts = []
        for path in self.log_paths:
            if path.exists():
                parts.append(f"--- {path.name} ---\n{_tail(path, lines)}")
        return "\n".join(parts) if parts else "<no log output>"

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> None:
        """Start the process and wait until it accepts TCP connections.

        Raises RuntimeError (with the log tails) if the process exits early or
        does not listen within ``start_timeout`` seconds; the process group is
        killed in that case.
        """
        if self._proc is not None:
            if self.running:
                raise RuntimeError(f"{self!r} is already running")
            self._reap()
        for path in self.remove_before_start:
            path.unlink(missing_ok=True)
        self.returncode = None
        env = None
        if self.env is not None:
            env = dict(os.environ)
            env.update(self.env)
        with open(self.output_log, "ab") as out:
            out.write(f"=== {time.strftime('%H:%M:%S')} starting: {' '.join(self.argv)}\n".encode())
            out.flush()
            self._proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=str(self.cwd),
                env=env,
                start_new_session=True,
            )
        _RUNNING.add(self)
        try:
            self._wait_ready()
        except BaseException:
            self.kill()
            raise

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.start_timeout
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        last_error: OSError | None = None
        while True:
            if self._leader_exited():
                self._reap()
                raise RuntimeError(
                    f"{self.kind} exited early with code {self.returncode} while starting on {self.origin}\n"
                    f"command: {' '.join(self.argv)}\n{self.log_tail()}"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(
                    f"{self.kind} did not accept connections on {self.origin} within "
                    f"{self.start_timeout:.1f}s (last error: {last_error})\n"
                    f"command: {' '.join(self.argv)}\n{self.log_tail()}"
                )
            try:
                with socket.socket(family, socket.SOCK_STREAM) as s:
                    s.settimeout(min(0.5, remaining))
                    s.connect((self.host, self.port))
            except OSError as exc:
                last_error = exc
                time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
                continue
            if self._leader_exited() or not self._owns_listener():
                # Something else answered on the port, or the server died.
                last_error = OSError(f"port {self.port} is not (yet) held by our {self.kind}")
                time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
                continue
            return

    def _owns_listener(self) -> bool:
        """True if our process (or its children) holds the listening socket.

        Uses psutil when available; without it, trust the TCP connect.
        """
        try:
            import psutil  # type: ignore[import-untyped, unused-ignore]
        except ImportError:  # pragma: no cover
            return True
        assert self._proc is not None
        try:
            root = psutil.Process(self._proc.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return False
        for proc in procs:
            try:
                conns = proc.net_connections(kind="tcp")
            except psutil.Error:
                continue
            for conn in conns:
                if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr[1] == self.port:
                    return True
        return False

    def _leader_exited(self) -> bool:
        """Whether the main process has exited, WITHOUT reaping it.

        Not reaping keeps its pid (= the process group id) reserved, so that
        a later killpg() can never hit an unrelated process group.
        """
        if self._proc is None:
            return True
        if self._proc.returncode is not None:
            return True
        try:
            res = os.waitid(os.P_PID, self._proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        return res is not None

    def _killpg(self, sig: signal.Signals) -> None:
        if self._proc is None or self._proc.returncode is not None:
            return  # already reaped: the group id may be reused, do not signal it
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, sig)

    def _reap(self) -> None:
        """Kill what is left of the group, then reap the main process."""
        if self._proc is None:
            return
        self._killpg(signal.SIGKILL)
        try:
            self.returncode = self._proc.wait(timeout=DEFAULT_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:  # pragma: no cover - unkillable process
            raise RuntimeError(f"{self.kind} (pid {self._proc.pid}) did not die after SIGKILL") from None
        self._proc = None
        _RUNNING.discard(self)

    def send_signal(self, sig: signal.Signals, *, group: bool = False) -> None:
        """Send ``sig`` to the main process (or its whole process group)."""
        if self._proc is None or self._leader_exited():
            raise RuntimeError(f"{self!r} is not running")
        if group:
            self._killpg(sig)
        else:
            # Not Popen.send_signal(): it polls (and so may reap) first.
            os.kill(self._proc.pid, sig)

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT, *, graceful: bool = False) -> None:
        """Stop the server: SIGTERM (``graceful=True``: the kind's graceful signal,
        SIGQUIT for nginx), wait up to ``timeout`` s, then SIGKILL the group.
        Idempotent."""
        if self._proc is None:
            return
        if not self._leader_exited():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._proc.pid, self.graceful_signal if graceful else signal.SIGTERM)
            self._killpg(signal.SIGCONT)  # in case it was paused
            deadline = time.monotonic() + timeout
            while not self._leader_exited() and time.monotonic() < deadline:
                time.sleep(0.02)
        self._reap()

    def kill(self) -> None:
        """Abrupt crash: SIGKILL the whole process group at once, then reap."""
        self._reap()

    def pause(self) -> None:
        """SIGSTOP the whole process group (the server stops responding)."""
        self.send_signal(signal.SIGSTOP, group=True)

    def resume(self) -> None:
        """SIGCONT the whole process group."""
        self.send_signal(signal.SIGCONT, group=True)

    def restart(self, timeout: float = DEFAULT_STOP_TIMEOUT, *, graceful: bool = False) -> None:
        """Stop, then start again on the same port."""
        self.stop(timeout, graceful=graceful)
        self.start()

    def __enter__(self) -> Self:
        if self._proc is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _instance_dir(workdir: Path, kind: str, port: int) -> Path:
    d = workdir / f"{kind}-{port}"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _q(value: object) -> str:
    """Quote a value for nginx.conf."""
    s = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{s}"'


# --------------------------------------------------------------------------
# nginx
# --------------------------------------------------------------------------

_UNIX_PATH_MAX: Final[int] = 100


def start_nginx(
    workdir: Path,
    certs: Certs,
    *,
    max_concurrent_streams: int = 128,
    keepalive_requests: int | None = None,
    keepalive_timeout: str | None = None,
    tls_protocols: str = "TLSv1.2 TLSv1.3",
    extra_server_config: str = "",
    extra_http_config: str = "",
    docroot: Path | None = None,
    host: str = "127.0.0.1",
    port: int | None = None,
    worker_processes: int = 1,
    start_timeout: float = DEFAULT_START_TIMEOUT,
) -> ServerProcess:
    """Start nginx (foreground, ``daemon off``) serving ``docroot`` over h2+TLS.

    * ``GET /small``, ``/1k``, ``/1m``, ``/8m``: the docroot files.
    * ``POST|PUT /upload``: nginx reads the whole body (up to 64 MiB;
      ``client_max_body_size 64m``, spilled to a temp file in the workdir) and
      answers ``200 ok\\n``. This is done by proxying to an internal plain
      HTTP server of the same nginx with ``proxy_pass_request_body off``:
      a bare ``return 200`` would NOT read the body -- nginx 1.22 with HTTP/2
      answers immediately and then resets the stream with RST_STREAM(NO_ERROR).
    * ``keepalive_requests`` also bounds requests per HTTP/2 connection
      (nginx >= 1.19.7; then GOAWAY); None keeps nginx's default (1000).
    * ``keepalive_timeout`` (e.g. ``"2s"``) is the h2 idle timeout; None = 75s.
    """
    exe = _require("nginx")
    port = port if port is not None else free_port(host)
    inst = _instance_dir(workdir, "nginx", port)
    if docroot is None:
        docroot = make_docroot(inst / "docroot")
    tmp = inst / "tmp"
    for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (tmp / sub).mkdir(parents=True, exist_ok=True)
    error_log = inst / "error.log"
    sock_path = inst / "upstream.sock"
    remove_before_start: list[Path] = []
    if len(str(sock_path)) <= _UNIX_PATH_MAX:
        sink_listen = f"unix:{sock_path}"
        sink_url = f"http://unix:{sock_path}:/"
        remove_before_start.append(sock_path)
    else:  # path too long for a unix socket: use a second loopback port
        sink_port = free_port("127.0.0.1")
        sink_listen = f"127.0.0.1:{sink_port}"
        sink_url = f"http://127.0.0.1:{sink_port}/"
    listen = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    user_line = "user root;" if os.geteuid() == 0 else ""
    keepalive_lines = ""
    if keepalive_requests is not None:
        keepalive_lines += f"keepalive_requests {int(keepalive_requests)};\n"
    if keepalive_timeout is not None:
        keepalive_lines += f"keepalive_timeout {keepalive_timeout};\n"
    conf = f"""\
# generated by tests/servers.py
{user_line}
worker_processes {int(worker_processes)};
daemon off;
master_process on;
pid {_q(inst / "nginx.pid")};
lock_file {_q(inst / "nginx.lock")};
error_log {_q(error_log)} notice;

events {{
    worker_connections 1024;
}}

http {{
    access_log off;
    server_tokens off;
    default_type application/octet-stream;
    sendfile on;
    client_body_temp_path {_q(tmp / "client_body")};
    proxy_temp_path {_q(tmp / "proxy")};
    fastcgi_temp_path {_q(tmp / "fastcgi")};
    uwsgi_temp_path {_q(tmp / "uwsgi")};
    scgi_temp_path {_q(tmp / "scgi")};
{extra_http_config}

    # Internal sink for /upload (plain HTTP, never exposed beyond loopback).
    server {{
        listen {sink_listen};
        access_log off;
        location / {{
            return 200 "ok\\n";
        }}
    }}

    server {{
        listen {listen} ssl http2;
        server_name localhost;
        root {_q(docroot)};

        ssl_certificate {_q(certs.cert_path)};
        ssl_certificate_key {_q(certs.key_path)};
        ssl_protocols {tls_protocols};
        ssl_session_cache shared:SSL:1m;
        ssl_session_timeout 10m;
        ssl_session_tickets on;

        http2_max_concurrent_streams {int(max_concurrent_streams)};
{keepalive_lines}
        client_max_body_size 64m;
        client_body_buffer_size 256k;

        location = /upload {{
            proxy_pass {_q(sink_url)};
            proxy_http_version 1.1;
            proxy_request_buffering on;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header Content-Type "";
            proxy_set_header Connection "";
        }}
{extra_server_config}
    }}
}}
"""
    conf_path = inst / "nginx.conf"
    conf_path.write_text(conf)
    server = ServerProcess(
        "nginx",
        [exe, "-p", f"{inst}/", "-c", str(conf_path), "-e", str(error_log)],
        port=port,
        host=host,
        workdir=inst,
        log_paths=[error_log],
        remove_before_start=remove_before_start,
        graceful_signal=signal.SIGQUIT,
        start_timeout=start_timeout,
        options={
            "max_concurrent_streams": max_concurrent_streams,
            "keepalive_requests": keepalive_requests,
            "keepalive_timeout": keepalive_timeout,
            "tls_protocols": tls_protocols,
            "conf_path": conf_path,
        },
        docroot=docroot,
    )
    server.start()
    return server


# --------------------------------------------------------------------------
# nghttpd
# --------------------------------------------------------------------------


def start_nghttpd(
    workdir: Path,
    certs: Certs,
    *,
    max_concurrent_streams: int = 100,
    docroot: Path | None = None,
    echo_upload: bool = True,
    trailers: Sequence[str] = (),
    extra_args: Sequence[str] = (),
    host: str = "127.0.0.1",
    port: int | None = None,
    start_timeout: float = DEFAULT_START_TIMEOUT,
) -> ServerProcess:
    """Start ``nghttpd`` (nghttp2's test server) serving ``docroot`` over h2+TLS.

    ``echo_upload``: POST/PUT on any path echo the request body back.
    ``trailers``: e.g. ``["x-checksum: abc"]`` -- added to every response with a body.
    """
    exe = _require("nghttpd")
    port = port if port is not None else free_port(host)
    inst = _instance_dir(workdir, "nghttpd", port)
    if docroot is None:
        docroot = make_docroot(inst / "docroot")
    argv = [
        exe,
        "-a",
        host,
        "-d",
        str(docroot),
        f"--max-concurrent-streams={int(max_concurrent_streams)}",
    ]
    if echo_upload:
        argv.append("--echo-upload")
    argv += [f"--trailer={t}" for t in trailers]
    argv += list(extra_args)
    argv += [str(port), str(certs.key_path), str(certs.cert_path)]
    server = ServerProcess(
        "nghttpd",
        argv,
        port=port,
        host=host,
        workdir=inst,
        start_timeout=start_timeout,
        options={
            "max_concurrent_streams": max_concurrent_streams,
            "echo_upload": echo_upload,
            "trailers": list(trailers),
        },
        docroot=docroot,
    )
    server.start()
    return server


# --------------------------------------------------------------------------
# hypercorn
# --------------------------------------------------------------------------


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON string escapes are valid TOML basic strings
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} to TOML")


def start_hypercorn(
    workdir: Path,
    certs: Certs,
    *,
    max_concurrent_streams: int = 100,
    keep_alive_timeout: float = 5.0,
    keep_alive_max_requests: int = 1000,
    graceful_timeout: float = 1.0,
    app: str = "tests.asgi_app:app",
    extra_config: Mapping[str, object] | None = None,
    host: str = "127.0.0.1",
    port: int | None = None,
    start_timeout: float = DEFAULT_START_TIMEOUT,
) -> ServerProcess:
    """Start hypercorn (a subprocess, one in-process worker) with the test ASGI app.

    Settings go through a TOML ``--config`` file (hypercorn has no CLI flag for
    ``h2_max_concurrent_streams``). ``keep_alive_timeout`` is hypercorn's idle
    timeout (default 5 s!), ``keep_alive_max_requests`` the number of requests
    after which hypercorn closes an h2 connection (GOAWAY). ``extra_config``:
    any other :class:`hypercorn.config.Config` attribute (unknown keys are
    silently ignored by hypercorn).
    """
    exe = _require("hypercorn")
    port = port if port is not None else free_port(host)
    inst = _instance_dir(workdir, "hypercorn", port)
    bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    config: dict[str, object] = {
        "bind": [bind],
        "certfile": str(certs.cert_path),
        "keyfile": str(certs.key_path),
        "workers": 0,  # serve in the main process: one pid to manage
        "h2_max_concurrent_streams": int(max_concurrent_streams),
        "keep_alive_timeout": float(keep_alive_timeout),
        "keep_alive_max_requests": int(keep_alive_max_requests),
        "graceful_timeout": float(graceful_timeout),
        "errorlog": "-",
        "loglevel": "INFO",
    }
    if extra_config:
        config.update(extra_config)
    config_path = inst / "hypercorn.toml"
    config_path.write_text("".join(f"{k} = {_toml_value(v)}\n" for k, v in config.items()))
    pythonpath = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    server = ServerProcess(
        "hypercorn",
        [exe, "-m", "hypercorn", "--config", str(config_path), app],
        port=port,
        host=host,
        workdir=inst,
        cwd=REPO_ROOT,
        env={"PYTHONPATH": pythonpath, "PYTHONUNBUFFERED": "1"},
        start_timeout=start_timeout,
        options={
            "max_concurrent_streams": max_concurrent_streams,
            "keep_alive_timeout": keep_alive_timeout,
            "keep_alive_max_requests": keep_alive_max_requests,
            "config_path": config_path,
        },
    )
    server.start()
    return server


def start_server(kind: str, workdir: Path, certs: Certs, **kwargs: Any) -> ServerProcess:
    """Dispatch to :func:`start_nginx` / :func:`start_nghttpd` / :func:`start_hypercorn`."""
    if kind == "nginx":
        return start_nginx(workdir, certs, **kwargs)
    if kind == "nghttpd":
        return start_nghttpd(workdir, certs, **kwargs)
    if kind == "hypercorn":
        return start_hypercorn(workdir, certs, **kwargs)
    raise ValueError(f"unknown server kind {kind!r}; known: {KINDS}")


# --------------------------------------------------------------------------
# A tiny blocking HTTP/2 client (independent of the library under test)
# --------------------------------------------------------------------------


@dataclasses.dataclass
class RawH2Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    trailers: list[tuple[str, str]]
    alpn: str | None
    tls_version: str | None
    #: The server's SETTINGS, by numeric setting code.
    remote_settings: dict[int, int]
    #: Error code if the server reset the stream (e.g. nginx RST_STREAM(NO_ERROR)).
    reset_code: int | None = None

    @property
    def max_concurrent_streams(self) -> int | None:
        return self.remote_settings.get(0x3)

    def header(self, name: str) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k == name:
                return v
        return None


def h2_request(
    host: str,
    port: int,
    path: str,
    *,
    ssl_context: ssl.SSLContext,
    method: str = "GET",
    headers: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
    server_hostname: str = "localhost",
    timeout: float = 5.0,
) -> RawH2Response:
    """One request on a fresh TLS connection with the ``h2`` library (blocking).

    Meant for checking the servers themselves (trailers, SETTINGS, ...), not
    for load. Everything is bounded by ``timeout``.
    """
    import h2.config
    import h2.connection
    import h2.events

    _check_loopback(host)
    authority_host = f"[{server_hostname}]" if ":" in server_hostname else server_hostname
    deadline = time.monotonic() + timeout
    with (
        socket.create_connection((host, port), timeout=timeout) as raw,
        ssl_context.wrap_socket(raw, server_hostname=server_hostname) as sock,
    ):
        alpn = sock.selected_alpn_protocol()
        if alpn != "h2":
            raise RuntimeError(f"server did not negotiate h2 via ALPN (got {alpn!r})")
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        conn.initiate_connection()
        sid = conn.get_next_available_stream_id()
        req_headers = [
            (":method", method),
            (":scheme", "https"),
            (":authority", f"{authority_host}:{port}"),
            (":path", path),
            *headers,
        ]
        conn.send_headers(sid, req_headers, end_stream=not body)
        sock.sendall(conn.data_to_send())
        pending = memoryview(body) if body else memoryview(b"")
        status: int | None = None
        resp_headers: list[tuple[str, str]] = []
        trailers: list[tuple[str, str]] = []
        chunks: list[bytes] = []
        reset_code: int | None = None
        ended = False
        while not ended:
            # Upload as much as flow control allows.
            while len(pending) and conn.local_flow_control_window(sid) > 0:
                n = min(
                    len(pending),
                    conn.local_flow_control_window(sid),
                    conn.max_outbound_frame_size,
                )
                conn.send_data(sid, pending[:n].tobytes(), end_stream=(n == len(pending)))
                pending = pending[n:]
            out = conn.data_to_send()
            if out:
                sock.sendall(out)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"h2_request {method} {path}: no complete response in {timeout}s")
            sock.settimeout(remaining)
            data = sock.recv(65536)
            if not data:
                raise ConnectionError(f"h2_request {method} {path}: connection closed by server")
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == sid:
                    for k, v in ev.headers:
                        ks, vs = str(k), str(v)
                        if ks == ":status":
                            status = int(vs)
                        else:
                            resp_headers.append((ks, vs))
                elif isinstance(ev, h2.events.DataReceived) and ev.stream_id == sid:
                    chunks.append(bytes(ev.data or b""))
                    conn.acknowledge_received_data(ev.flow_controlled_length or 0, sid)
                elif isinstance(ev, h2.events.TrailersReceived) and ev.stream_id == sid:
                    trailers.extend((str(k), str(v)) for k, v in ev.headers)
                elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id == sid:
                    ended = True
                elif isinstance(ev, h2.events.StreamReset) and ev.stream_id == sid:
                    reset_code = int(ev.error_code or 0)
                    ended = True
                elif isinstance(ev, h2.events.ConnectionTerminated) and not ended:
                    raise ConnectionError(f"server sent GOAWAY (error {ev.error_code}) before the response ended")
        remote_settings = {int(k): int(v) for k, v in conn.remote_settings.items()}
        with contextlib.suppress(Exception):
            conn.close_connection()
            sock.sendall(conn.data_to_send())
        tls_version = sock.version()
    if status is None:
        raise ConnectionError(f"h2_request {method} {path}: stream reset ({reset_code}) before a response")
    return RawH2Response(
        status=status,
        headers=resp_headers,
        body=b"".join(chunks),
        trailers=trailers,
        alpn=alpn,
        tls_version=tls_version,
        remote_settings=remote_settings,
        reset_code=reset_code,
    )
