"""A TCP proxy on 127.0.0.1 that delays every byte by a fixed time in each direction.

Loopback has no latency, so flow-control windows never limit a transfer
there; behind this proxy a connection has a round trip of ``2 * delay`` (plus
loopback's own) and a window smaller than the bandwidth-delay product shows
up as it does across a continent.

Each accepted connection gets its own connection to ``upstream_host:
upstream_port``. Bytes read from one side are queued with the time they
were read and written to the other side ``delay`` seconds later, in order.
Each direction's queue is bounded (``max_buffered``): beyond it the proxy
stops reading from the sender, whose TCP window then closes as on a real
link. EOF is forwarded after the data before it, so TLS close and half-close
behave as without the proxy.

Two ways to run it:

* :class:`DelayProxy` in the caller's event loop (``async with``);
* :class:`DelayProxyProcess`, the same proxy in a subprocess
  (``python -m tests.delay_proxy``), for measurements: there the delay does
  not stretch while the test's own loop is busy decrypting, and the proxy's
  work does not slow the client under test.

Only loopback addresses are accepted, for listening and upstream alike.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from types import TracebackType
from typing import Final, Self

LOOPBACK: Final = frozenset({"127.0.0.1", "::1"})

#: Per direction and connection: comfortably above what 16 MiB windows put in
#: flight, so the proxy's own buffer is not what limits a transfer.
DEFAULT_MAX_BUFFERED: Final = 64 * 1024 * 1024

#: A chunk whose time is this close is delivered with the ones already due:
#: timers may fire a hair early, and re-arming for microseconds would spin.
_SLACK: Final = 0.0005

_CONNECT_TIMEOUT: Final = 5.0
_CLOSE_TIMEOUT: Final = 5.0
_REPO_ROOT: Final = Path(__file__).resolve().parent.parent


def _check_loopback(host: str) -> None:
    if host not in LOOPBACK:
        raise ValueError(f"the delay proxy only uses loopback {sorted(LOOPBACK)}, not {host!r}")


class _Direction:
    """One direction of one connection: a queue of ``(due, bytes)`` and the transport it drains into."""

    __slots__ = (
        "_loop",
        "_timer",
        "buffered",
        "delay",
        "eof",
        "finished",
        "forwarded",
        "link",
        "max_buffered",
        "queue",
        "sink",
        "sink_paused",
        "source",
        "source_paused",
    )

    def __init__(self, link: _Link, delay: float, max_buffered: int) -> None:
        self.link = link
        self.delay = delay
        self.max_buffered = max_buffered
        self._loop = link.loop
        self.queue: deque[tuple[float, bytes]] = deque()
        self.buffered = 0
        self.forwarded = 0
        self.source: asyncio.Transport | None = None
        self.sink: asyncio.Transport | None = None
        self.source_paused = False
        self.sink_paused = False
        #: The source sent EOF (or went away): forward it after the queue.
        self.eof = False
        #: EOF was forwarded, or the sink is gone: nothing more goes this way.
        self.finished = False
        self._timer: asyncio.TimerHandle | None = None

    def feed(self, data: bytes) -> None:
        if self.finished:
            return
        self.queue.append((self._loop.time() + self.delay, data))
        self.buffered += len(data)
        if self.buffered >= self.max_buffered and self.source is not None and not self.source_paused:
            self.source_paused = True
            self.source.pause_reading()
        self._arm()

    def feed_eof(self) -> None:
        if self.eof or self.finished:
            return
        self.eof = True
        # The EOF travels like data: it leaves ``delay`` after it was seen.
        self.queue.append((self._loop.time() + self.delay, b""))
        self._arm()

    def attach_sink(self, sink: asyncio.Transport) -> None:
        self.sink = sink
        self._arm()

    def sink_lost(self) -> None:
        """The side this direction writes to is gone: drop what waits for it."""
        self.finished = True
        self.sink = None
        self.queue.clear()
        self.buffered = 0
        self.cancel()

    def set_sink_paused(self, paused: bool) -> None:
        self.sink_paused = paused
        if not paused:
            self._arm()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self) -> None:
        if self._timer is not None or not self.queue or self.sink is None or self.sink_paused or self.finished:
            return
        self._timer = self._loop.call_at(self.queue[0][0], self._deliver)

    def _deliver(self) -> None:
        self._timer = None
        sink = self.sink
        if sink is None or self.finished:
            return
        horizon = self._loop.time() + _SLACK
        pieces: list[bytes] = []
        send_eof = False
        queue = self.queue
        while queue and queue[0][0] <= horizon:
            _, data = queue.popleft()
            if not data:
                send_eof = True
                queue.clear()
                break
            pieces.append(data)
        if pieces:
            size = sum(len(piece) for piece in pieces)
            self.buffered -= size
            self.forwarded += size
            sink.writelines(pieces)
        if send_eof:
            self.finished = True
            self.buffered = 0
            try:
                if sink.can_write_eof():
                    sink.write_eof()
                else:
                    sink.close()
            except OSError:
                # The receiver reset the connection already (ENOTCONN on shutdown).
                self.link.abort()
                return
            self.link.direction_finished()
            return
        if self.source_paused and self.buffered <= self.max_buffered // 2 and self.source is not None:
            self.source_paused = False
            self.source.resume_reading()
        self._arm()


class _Side(asyncio.Protocol):
    """The protocol on one socket of a link; what it reads goes into ``inbound``."""

    def __init__(self, link: _Link, inbound: _Direction, outbound: _Direction) -> None:
        self.link = link
        self.inbound = inbound
        self.outbound = outbound
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.inbound.source = transport
        self.outbound.attach_sink(transport)

    def data_received(self, data: bytes) -> None:
        self.inbound.feed(data)

    def eof_received(self) -> bool:
        self.inbound.feed_eof()
        # Keep the socket open for the other direction (half-close).
        return True

    def pause_writing(self) -> None:
        self.outbound.set_sink_paused(True)

    def resume_writing(self) -> None:
        self.outbound.set_sink_paused(False)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.inbound.source = None
        # What this side already sent still reaches the other side, then EOF.
        self.inbound.feed_eof()
        self.outbound.sink_lost()
        self.link.side_lost(self)


class _Link:
    """One proxied connection: the client's socket, the upstream socket, a direction each way."""

    def __init__(self, proxy: DelayProxy) -> None:
        self.proxy = proxy
        self.loop = proxy.loop
        self.up = _Direction(self, proxy.delay, proxy.max_buffered)
        self.down = _Direction(self, proxy.delay, proxy.max_buffered)
        self.client = _Side(self, inbound=self.up, outbound=self.down)
        self.server = _Side(self, inbound=self.down, outbound=self.up)
        self.connect_task: asyncio.Task[None] | None = None
        self.done = self.loop.create_future()

    async def connect_upstream(self) -> None:
        try:
            async with asyncio.timeout(_CONNECT_TIMEOUT):
                await self.loop.create_connection(
                    lambda: self.server, self.proxy.upstream_host, self.proxy.upstream_port
                )
        except (OSError, TimeoutError):
            self.abort()

    def direction_finished(self) -> None:
        self._maybe_close()

    def side_lost(self, side: _Side) -> None:
        self._maybe_close()

    def _maybe_close(self) -> None:
        up, down = self.up, self.down
        if up.finished and down.finished:
            for side in (self.client, self.server):
                if side.transport is not None:
                    side.transport.close()
        if self.client.transport is None and self.server.transport is None and not self.done.done():
            self.done.set_result(None)

    def abort(self) -> None:
        for direction in (self.up, self.down):
            direction.finished = True
            direction.queue.clear()
            direction.cancel()
        for side in (self.client, self.server):
            if side.transport is not None:
                side.transport.abort()
        if self.connect_task is not None and not self.connect_task.done():
            self.connect_task.cancel()
        if self.client.transport is None and self.server.transport is None and not self.done.done():
            self.done.set_result(None)


class DelayProxy:
    """Listens on ``host`` (an ephemeral port) and forwards to ``upstream_port``, ``delay`` seconds each way."""

    def __init__(
        self,
        upstream_port: int,
        delay: float,
        *,
        upstream_host: str = "127.0.0.1",
        host: str = "127.0.0.1",
        port: int = 0,
        max_buffered: int = DEFAULT_MAX_BUFFERED,
    ) -> None:
        _check_loopback(upstream_host)
        _check_loopback(host)
        if delay < 0:
            raise ValueError("delay must be >= 0")
        if max_buffered <= 0:
            raise ValueError("max_buffered must be > 0")
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.delay = delay
        self.host = host
        self.port = port
        self.max_buffered = max_buffered
        self.accepted = 0
        self._links: set[_Link] = set()
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("the proxy is not started")
        return self._loop

    @property
    def origin(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}"

    @property
    def links(self) -> int:
        """Proxied connections still open."""
        return len(self._links)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._server = await self._loop.create_server(self._accept, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    def _accept(self) -> asyncio.Protocol:
        link = _Link(self)
        self.accepted += 1
        self._links.add(link)
        link.done.add_done_callback(lambda _: self._links.discard(link))
        link.connect_task = self.loop.create_task(link.connect_upstream())
        return link.client

    async def aclose(self) -> None:
        """Stop listening and drop every proxied connection."""
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            link.abort()
        pending = [link.done for link in self._links]
        if pending:
            await asyncio.wait(pending, timeout=_CLOSE_TIMEOUT)
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_CLOSE_TIMEOUT):
                    await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


class DelayProxyProcess:
    """:class:`DelayProxy` in a subprocess of its own (``with`` starts and stops it)."""

    def __init__(
        self,
        upstream_port: int,
        delay: float,
        *,
        max_buffered: int = DEFAULT_MAX_BUFFERED,
        start_timeout: float = 10.0,
    ) -> None:
        self.upstream_port = upstream_port
        self.delay = delay
        self.max_buffered = max_buffered
        self.start_timeout = start_timeout
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def origin(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> None:
        pythonpath = os.pathsep.join(p for p in (str(_REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
        self._proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.delay_proxy",
                "--upstream-port",
                str(self.upstream_port),
                "--delay",
                repr(self.delay),
                "--max-buffered",
                str(self.max_buffered),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            cwd=str(_REPO_ROOT),
            env={**os.environ, "PYTHONPATH": pythonpath},
        )
        try:
            self.port = self._read_port()
        except BaseException:
            self.stop()
            raise

    def _read_port(self) -> int:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        # The child prints one line once it listens; a bounded wait for it.
        os.set_blocking(proc.stdout.fileno(), False)
        deadline = time.monotonic() + self.start_timeout
        line = b""
        while time.monotonic() < deadline:
            chunk = proc.stdout.read(64)
            if chunk:
                line += chunk
                if b"\n" in line:
                    return int(line.split(b"\n", 1)[0].split()[-1])
            elif proc.poll() is not None:
                raise RuntimeError(f"the delay proxy exited with {proc.returncode} before listening")
            else:
                time.sleep(0.01)
        raise RuntimeError(f"the delay proxy did not listen within {self.start_timeout} s")

    def stop(self, timeout: float = 5.0) -> None:
        proc = self._proc
        if proc is None:
            return
        self._proc = None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        if proc.stdout is not None:
            proc.stdout.close()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


async def _serve(upstream_port: int, delay: float, max_buffered: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with DelayProxy(upstream_port, delay, max_buffered=max_buffered) as proxy:
        print(f"listening {proxy.port}", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--upstream-port", type=int, required=True)
    parser.add_argument("--delay", type=float, required=True, help="seconds, each direction")
    parser.add_argument("--max-buffered", type=int, default=DEFAULT_MAX_BUFFERED)
    args = parser.parse_args(argv)
    asyncio.run(_serve(args.upstream_port, args.delay, args.max_buffered))


if __name__ == "__main__":
    main()
