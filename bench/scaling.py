"""Criteria 8 and 9: what new connections cost, and whether the pool dials them early enough.

8. TLS session resumption. Set-up time of :data:`TLS_CONNECTIONS` new
   connections of a pool with ``tls_session_reuse=False`` (every handshake
   full) and of one with ``tls_session_reuse=True`` (every handshake resumed:
   its cache is seeded by an untimed first connection), alternating one
   connection of each. Set-up time is the first GET on a new connection
   minus the median GET on a warm one (a third pool): what a request that
   finds no connection pays. ``max_idle_connections_per_origin=0`` closes
   each connection after its GET, so each is a new dial; the GET also
   delivers TLS 1.3 tickets, which arrive after the handshake. Also reported:
   ``pool.prewarm`` of another new connection (TCP, TLS and the SETTINGS
   exchange), and the pool's TLS handshake alone over a connected socket
   (``h2pool.tls_transport.open_tls``, the session offered as the pool
   offers it): what resumption saves before any of the pool's own costs. On
   TLS 1.2 the handshake ratio is judged (the target is on handshake time;
   the client context pinned by ``maximum_version``), TLS 1.3 reported.
   Against a local server its processes' CPU per connection (set-up,
   one GET, close) is read from ``/proc/PID/schedstat`` (nanoseconds;
   psutil's CPU times tick at 10 ms, longer than a handshake).

9. Predictive pre-warming. Concurrent requests step up through
   :data:`RAMP_LEVELS`, one level every :data:`RAMP_STEP_S`, and stay at the
   top for one more step; each request is a worker's loop of acquire, GET of
   the target's hold path, hold it in flight for :data:`RAMP_HOLD_S` (jittered
   +-50 %), release (RST_STREAM CANCEL). The figure is each acquisition's
   wait: from calling ``pool.acquire(origin).__aenter__()`` to its return.
   Each run starts from a pool with one settled connection (the peer's
   stream limit known), with ``predictive_prewarm`` on or off, otherwise
   defaults. Two shapes: *steps* (each level's new workers start at once) is
   judged; *linear* (they start evenly over the step) is reported.

   The hold path (nginx ``/hold``, hypercorn ``/delay/60000``, nghttpd's
   never-ended request; see :mod:`bench.target`) is used because no local
   server but hypercorn has a delay of a few milliseconds, and hypercorn
   would spend the second CPU serving; the client then sets how long a
   stream stays in flight, whatever the server. The hold is 100 ms, not the
   ~20 ms of a typical delay path: at 1,000 in flight that is 50,000
   acquisitions a second, more than one Python process and the server
   manage on two cores, and the ramp stalls instead of stepping.
"""

from __future__ import annotations

import asyncio
import random
import socket
import ssl
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil  # type: ignore[import-untyped, unused-ignore]

from h2pool import H2PoolError, Pool
from h2pool.origin import parse_origin
from h2pool.tls_transport import open_tls

from .held import prime_hold
from .measure import BenchError, Run, Sample, interleaved_medians, latency_figures, percentile, progress
from .report import ERROR, NOT_RUN, Outcome, Row, judged
from .target import Target

# 8. TLS session resumption.

TLS_CONNECTIONS = 30
#: Resumed set-up time over full, at most (TLS 1.2).
TLS_RESUMED_RATIO = 0.6
#: How long a connection closed for being idle may take to leave the pool.
CLOSE_WAIT_S = 1.0

# 9. Predictive pre-warming.

RAMP_LEVELS = (10, 50, 100, 200, 400, 700, 1_000)
RAMP_STEP_S = 0.2
RAMP_HOLD_S = 0.1
#: p99 acquisition wait with prediction over without, at most.
PREWARM_P99_RATIO = 1 / 5
#: An acquisition slower than this counts as having waited (a synchronous one takes microseconds).
WAITED_NS = 1_000_000
RAMP_SHAPES = ("steps", "linear")
#: More answered holds than this share of requests and the run is void: the path does not hold.
MAX_ANSWERED_SHARE = 0.01
HOLD_MISSING = "the hold path does not hold responses (with --url, give a delayed one: --hold-url)"
RAMP_SEED = 9


# Server CPU.


class ServerCpu:
    """CPU time of a local server's processes (master and workers), in nanoseconds."""

    def __init__(self, pids: Sequence[int]) -> None:
        self.pids = list(pids)

    @classmethod
    def of(cls, target: Target) -> ServerCpu | None:
        """The processes listening on the target's port, with their children; None for ``--url`` or if unreadable."""
        port = urlsplit(target.small_url).port
        if target.kind == "url" or port is None:
            return None
        try:
            listeners = {
                conn.pid
                for conn in psutil.net_connections(kind="tcp")
                if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid
            }
            pids = set(listeners)
            for pid in listeners:
                pids.update(child.pid for child in psutil.Process(pid).children(recursive=True))
            meter = cls(sorted(pids))
            meter.ns()
        except (OSError, psutil.Error, ValueError, IndexError):
            return None
        return meter if pids else None

    def ns(self) -> int:
        # Field 1 of schedstat: time spent on a CPU, in ns.
        return sum(int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) for pid in self.pids)


# 8. TLS session resumption.


def _pinned_context(target: Target, version: ssl.TLSVersion) -> ssl.SSLContext:
    context = target.ssl_context()
    context.minimum_version = version
    context.maximum_version = version
    return context


async def _connections_gone(pool: Pool) -> None:
    """Wait, bounded, until the pool's connections have closed (``max_idle_connections_per_origin=0``)."""
    deadline = time.monotonic() + CLOSE_WAIT_S
    while True:
        stats = pool.stats()
        if stats.connections == 0 and stats.connecting == 0:
            return
        if time.monotonic() > deadline:
            raise BenchError(f"a connection stayed open {CLOSE_WAIT_S} s after going idle with no idle allowed")
        await asyncio.sleep(0.001)


async def _get(pool: Pool, target: Target) -> int:
    """Duration of one GET of the small URL (ns)."""
    start = time.perf_counter_ns()
    response = await pool.request("GET", target.small_url)
    elapsed = time.perf_counter_ns() - start
    if response.status != 200:
        raise BenchError(f"GET {target.small_url} answered {response.status}")
    return elapsed


async def _new_connection(pool: Pool, target: Target, cpu: ServerCpu | None) -> tuple[int, int, int]:
    """Two new connections of ``pool``: a first GET on one (dial included), ``pool.prewarm`` of the other.

    Returns the GET's duration, the prewarm's, and the server's CPU for the
    first connection (set-up, the GET, close), all in ns.
    """
    cpu_before = cpu.ns() if cpu is not None else 0
    first_get = await _get(pool, target)
    await _connections_gone(pool)
    server_ns = cpu.ns() - cpu_before if cpu is not None else 0
    start = time.perf_counter_ns()
    await pool.prewarm(target.origin)
    prewarm = time.perf_counter_ns() - start
    await _get(pool, target)
    await _connections_gone(pool)
    return first_get, prewarm, server_ns


async def _tls_round(target: Target, version: ssl.TLSVersion, count: int, cpu: ServerCpu | None) -> Sample:
    """``count`` new connections with full and with resumed handshakes, alternating (ABBA).

    Set-up time is the first GET on a new connection minus the median GET
    on a warm one (a third pool, timed in the same turns).
    """
    origin = str(parse_origin(target.origin))
    one_use: dict[str, Any] = {"max_idle_connections_per_origin": 0, "max_connections_per_origin": 1}
    async with (
        Pool(_pinned_context(target, version), tls_session_reuse=False, **one_use) as full,
        Pool(_pinned_context(target, version), tls_session_reuse=True, **one_use) as resumed,
        Pool(_pinned_context(target, version), max_connections_per_origin=1) as warm,
    ):
        pools = {"full": full, "resumed": resumed}
        # Untimed: the resumed pool's session comes from this handshake, and all pay one-time costs here.
        for pool in pools.values():
            await _new_connection(pool, target, None)
        await _get(warm, target)
        first_gets: dict[str, list[int]] = {"full": [], "resumed": []}
        prewarms: dict[str, list[int]] = {"full": [], "resumed": []}
        server_ns = {"full": 0, "resumed": 0}
        warm_gets: list[int] = []
        for i in range(count):
            for name in ("full", "resumed") if i % 2 == 0 else ("resumed", "full"):
                first_get, prewarm, cpu_ns = await _new_connection(pools[name], target, cpu)
                first_gets[name].append(first_get)
                prewarms[name].append(prewarm)
                server_ns[name] += cpu_ns
            warm_gets.append(await _get(warm, target))
        handshakes = {name: pool.stats().origins[origin] for name, pool in pools.items()}
    warm_ns = percentile(warm_gets, 0.5)
    sample: Sample = {
        "warm_get_ms": warm_ns / 1e6,
        # Seed connections included: two per pool, the resumed pool's first one full by design.
        "full_resumed": handshakes["full"].handshakes_resumed,
        "resumed_resumed": handshakes["resumed"].handshakes_resumed,
        "resumed_full": handshakes["resumed"].handshakes_full,
    }
    for name in pools:
        sample[f"{name}_p50_ms"] = (percentile(first_gets[name], 0.5) - warm_ns) / 1e6
        sample[f"{name}_first_get_ms"] = percentile(first_gets[name], 0.5) / 1e6
        sample[f"{name}_prewarm_ms"] = percentile(prewarms[name], 0.5) / 1e6
        if cpu is not None:
            sample[f"{name}_server_cpu_us"] = server_ns[name] / count / 1e3
    return sample


# The reference: the pool's TLS handshake alone (h2pool.tls_transport), no pool, over a connected socket.

#: The HTTP/2 client preface and an empty SETTINGS frame: the server answers, and TLS 1.3 tickets come first.
_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes.fromhex("000000040000000000")


class _FirstRead(asyncio.Protocol):
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.answered: asyncio.Future[None] = loop.create_future()

    def data_received(self, data: bytes) -> None:
        if not self.answered.done():
            self.answered.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answered.done():
            self.answered.set_exception(ConnectionError(f"closed before answering the preface: {exc}"))


async def _handshake(
    target: Target, context: ssl.SSLContext, session: ssl.SSLSession | None
) -> tuple[int, ssl.SSLSession, bool]:
    """Duration of one TLS handshake (ns), the session it left, and whether it resumed ``session``."""
    origin = parse_origin(target.origin)
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET6 if ":" in origin.host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        await loop.sock_connect(sock, (origin.host, origin.port))
    except BaseException:
        sock.close()
        raise
    protocol = _FirstRead(loop)
    start = time.perf_counter_ns()
    transport = await open_tls(protocol, sock, context, origin.host, session)
    elapsed = time.perf_counter_ns() - start
    try:
        transport.write(_PREFACE)
        async with asyncio.timeout(CLOSE_WAIT_S):
            await protocol.answered
        ssl_object = transport.get_extra_info("ssl_object")
        return elapsed, ssl_object.session, bool(ssl_object.session_reused)
    finally:
        transport.close()
        await asyncio.sleep(0)


async def _handshake_round(target: Target, version: ssl.TLSVersion, count: int) -> Sample:
    """``count`` full and ``count`` resumed handshakes, alternating (ABBA), all resuming one seed session."""
    context = _pinned_context(target, version)
    _, seed, _ = await _handshake(target, context, None)
    times: dict[str, list[int]] = {"full": [], "resumed": []}
    resumed = 0
    for i in range(count):
        for name in ("full", "resumed") if i % 2 == 0 else ("resumed", "full"):
            elapsed, _, reused = await _handshake(target, context, seed if name == "resumed" else None)
            times[name].append(elapsed)
            resumed += reused and name == "resumed"
    return {
        "full_p50_ms": percentile(times["full"], 0.5) / 1e6,
        "resumed_p50_ms": percentile(times["resumed"], 0.5) / 1e6,
        "resumed_resumed": resumed,
    }


_TLS_VERSIONS = {"TLS 1.2": ssl.TLSVersion.TLSv1_2, "TLS 1.3": ssl.TLSVersion.TLSv1_3}


def _ratio(sample: Sample, figure: str = "p50_ms") -> float:
    return sample[f"resumed_{figure}"] / sample[f"full_{figure}"]


def _tls_row(name: str, sample: Sample, alone: Sample, count: int, judge: bool, remote: bool) -> Row:
    criterion = f"8. {name} handshake, resumed vs full, {count} each"
    target = f"resumed <= {TLS_RESUMED_RATIO} x full" if judge else "info"
    measured = (
        f"handshake p50 {alone['resumed_p50_ms']:.2f} vs {alone['full_p50_ms']:.2f} ms = {_ratio(alone):.2f} x; "
        f"whole set-up (1st GET - warm GET) {sample['resumed_p50_ms']:.2f} vs {sample['full_p50_ms']:.2f} ms "
        f"= {_ratio(sample):.2f} x; prewarm() {sample['resumed_prewarm_ms']:.2f} vs "
        f"{sample['full_prewarm_ms']:.2f} ms = {_ratio(sample, 'prewarm_ms'):.2f} x"
    )
    if alone["resumed_resumed"] < count:
        measured += f" ({alone['resumed_resumed']:.0f}/{count} resumed)"
    if "full_server_cpu_us" in sample:
        measured += f"; server CPU {sample['resumed_server_cpu_us']:.0f} vs {sample['full_server_cpu_us']:.0f} us/conn"
    # Two connections per turn and per pool, plus the two seeds; the resumed pool's first is full by design.
    expected = 2 * count + 1
    resumed = sample["resumed_resumed"]
    if resumed < expected or sample["full_resumed"]:
        measured += f"; {resumed:.0f}/{expected} resumed, {sample['full_resumed']:.0f} resumed with reuse off"
    if remote and resumed == 0:
        return Row(criterion, target, f"the server resumed no session; {measured}", NOT_RUN)
    # The target is on the handshake; the set-up figures show what the
    # pool's fixed per-connection costs add on top.
    ok = _ratio(alone) <= TLS_RESUMED_RATIO and resumed >= expected and not sample["full_resumed"]
    return judged(criterion, target, measured, ok if judge else None)


async def tls_resumption(target: Target, *, repetitions: int) -> Outcome:
    cpu = ServerCpu.of(target)
    if cpu is None and target.kind != "url":
        progress("8. server CPU not measured: its processes' /proc/PID/schedstat cannot be read")
    rows: list[Row] = []
    figures: dict[str, Any] = {"connections": TLS_CONNECTIONS}
    for name, version in _TLS_VERSIONS.items():
        runs: dict[str, Run] = {
            "h2pool": partial(_tls_round, target, version, TLS_CONNECTIONS, cpu),
            "handshake alone": partial(_handshake_round, target, version, TLS_CONNECTIONS),
        }
        try:
            medians = await interleaved_medians(f"8. {name} set-up", repetitions, runs)
        except (H2PoolError, ssl.SSLError, OSError) as exc:
            # The user's server may not speak this version: the other is still measured.
            rows.append(Row(f"8. {name} set-up", "", f"{type(exc).__name__}: {exc}"[:300], ERROR))
            continue
        figures[name] = medians
        sample, alone = medians["h2pool"], medians["handshake alone"]
        rows.append(_tls_row(name, sample, alone, TLS_CONNECTIONS, name == "TLS 1.2", target.kind == "url"))
    return Outcome(rows, figures)


# 9. Predictive pre-warming.


class _Ramp:
    """One ramp's workers and what they saw."""

    def __init__(self, pool: Pool, target: Target, end: float, seed: int) -> None:
        self.pool = pool
        self.target = target
        self.end = end
        self.waits: list[int] = []
        self.answered = 0
        self.peak_busy = 0
        self._random = random.Random(seed)

    async def worker(self, start_at: float) -> None:
        loop = asyncio.get_running_loop()
        if start_at > loop.time():
            await asyncio.sleep(start_at - loop.time())
        origin, path, ends = self.target.origin, self.target.hold_path, self.target.hold_request_ends
        while loop.time() < self.end:
            hold_s = RAMP_HOLD_S * self._random.uniform(0.5, 1.5)
            start = time.perf_counter_ns()
            handle = await self.pool.acquire(origin).__aenter__()
            self.waits.append(time.perf_counter_ns() - start)
            try:
                await handle.send_headers("GET", path, end_stream=ends)
                await asyncio.sleep(hold_s)
                self.answered += handle.response_complete
            finally:
                handle.release()

    def sample_busy(self) -> None:
        stats = self.pool.stats()
        self.peak_busy = max(self.peak_busy, stats.streams_open + stats.slots_reserved)


async def _ramp_round(target: Target, predictive: bool, shape: str, seed: int) -> Sample:
    async with Pool(target.ssl_context(), predictive_prewarm=predictive) as pool:
        # A warm pool meets the ramp: the cold first dial is the same with or without prediction.
        await pool.prewarm(target.origin)
        loop = asyncio.get_running_loop()
        start = loop.time()
        ramp = _Ramp(pool, target, start + (len(RAMP_LEVELS) + 1) * RAMP_STEP_S, seed)
        tasks: list[asyncio.Task[None]] = []
        try:
            previous = 0
            for i, level in enumerate(RAMP_LEVELS):
                step_at = start + i * RAMP_STEP_S
                if step_at > loop.time():
                    await asyncio.sleep(step_at - loop.time())
                ramp.sample_busy()
                new = level - previous
                spacing = RAMP_STEP_S / new if shape == "linear" else 0.0
                tasks.extend(loop.create_task(ramp.worker(step_at + k * spacing)) for k in range(new))
                previous = level
            while loop.time() < ramp.end:
                await asyncio.sleep(RAMP_STEP_S / 4)
                ramp.sample_busy()
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        stats = pool.stats().origins[str(parse_origin(target.origin))]
        connections = stats.connections + stats.connecting
    waits = ramp.waits
    return {
        **latency_figures(waits),
        "p999_us": percentile(waits, 0.999) / 1000,
        "max_us": max(waits) / 1000,
        "requests": len(waits),
        "waited": sum(w > WAITED_NS for w in waits),
        "answered": ramp.answered,
        "peak_busy": ramp.peak_busy,
        "connections": connections,
        "elapsed_s": loop.time() - start,
    }


def _ramp_row(shape: str, on: Sample, off: Sample, judge: bool) -> Row:
    levels = f"{RAMP_LEVELS[0]}->{RAMP_LEVELS[-1]:,}"
    criterion = f"9. ramp {levels} in flight ({shape}), acquire wait p99"
    target = f"on <= {PREWARM_P99_RATIO:.1f} x off" if judge else "info"
    measured = (
        f"on {on['p99_us']:,.0f} vs off {off['p99_us']:,.0f} us = {on['p99_us'] / off['p99_us']:.2f} x "
        f"(p99.9 {on['p999_us']:,.0f} vs {off['p999_us']:,.0f} us); waited > {WAITED_NS // 1_000_000} ms: "
        f"{on['waited']:.0f} vs {off['waited']:.0f} of ~{on['requests']:,.0f}; "
        f"{on['connections']:.0f} vs {off['connections']:.0f} conns"
    )
    if min(on["peak_busy"], off["peak_busy"]) < RAMP_LEVELS[-1]:
        measured += f"; peak in flight only {on['peak_busy']:.0f} vs {off['peak_busy']:.0f}"
    answered = on["answered"] + off["answered"]
    if answered > MAX_ANSWERED_SHARE * (on["requests"] + off["requests"]):
        # Answered streams free their slots early: the ramp never reached its levels.
        return Row(criterion, target, f"{answered:,.0f} answered: {HOLD_MISSING}; {measured}", NOT_RUN)
    return judged(criterion, target, measured, on["p99_us"] <= PREWARM_P99_RATIO * off["p99_us"] if judge else None)


async def predictive_prewarm(target: Target, *, repetitions: int) -> Outcome:
    if target.kind == "url" and target.hold_url == target.small_url:
        progress(f"9. skipped: {HOLD_MISSING}")
        return Outcome(
            [Row(f"9. ramp ({shape}), acquire wait p99", "", HOLD_MISSING, NOT_RUN) for shape in RAMP_SHAPES]
        )
    await prime_hold(target)
    rows: list[Row] = []
    figures: dict[str, Any] = {
        "levels": RAMP_LEVELS,
        "step_s": RAMP_STEP_S,
        "hold_s": RAMP_HOLD_S,
        "hold_path": target.hold_path,
    }
    for shape in RAMP_SHAPES:
        # The same jitter for both: the runs differ only in the option.
        runs = {
            f"prediction {mode}": partial(_ramp_round, target, mode == "on", shape, RAMP_SEED) for mode in ("on", "off")
        }
        medians = await interleaved_medians(f"9. ramp ({shape})", repetitions, runs)
        on, off = medians["prediction on"], medians["prediction off"]
        figures[shape] = {"on": on, "off": off}
        rows.append(_ramp_row(shape, on, off, shape == RAMP_SHAPES[0]))
    return Outcome(rows, figures)
