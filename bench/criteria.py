"""The project's performance criteria, measured: ``python -m bench.criteria``.

Starts a TLS HTTP/2 server on 127.0.0.1 (nginx if installed, else nghttpd,
else hypercorn; ``--server`` to choose) or uses ``--url``, runs every
criterion (each run repeated and interleaved, medians reported), prints one
table (criterion | target | measured | pass/fail) and writes it with the
machine's facts to ``bench/results/latest.json``. ``--peers`` instead
compares h2pool with httpx, aiohttp and h2load on the same server
(``bench/results/latest-peers.json``).

A missed target prints FAIL and still exits 0; a run that errors exits 1.
MB and KB are 10**6 and 10**3 bytes; MiB is 2**20.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, cast

import h2pool
from h2pool import Handle, Pool
from h2pool.connection import Connection
from h2pool.origin import parse_origin
from h2pool.slots import OriginSlots

from .held import fresh_process_round, held_note, held_round, prime_hold, warm_pool
from .measure import (
    BenchError,
    Run,
    Sample,
    interleaved_medians,
    interleaved_runs,
    latency_figures,
    progress,
    rss_bytes,
    traced_bytes,
    tracing,
)
from .peers import client_factories, h2load, h2load_available, h2load_version, peer_versions
from .report import ERROR, INFO, NOT_RUN, RESULTS_DIR, Outcome, Row, judged, machine_info, render, write_json
from .scaling import predictive_prewarm, tls_resumption
from .target import SERVER_KINDS, Target, default_kind, local_target, url_target
from .windows import adaptive_windows
from .workloads import ClientFactory, H2poolClient, load, round_trips

#: Interleaved runs per figure, whose median is reported. Five, not the
#: minimum of three: one run in a slow spell of a shared machine then
#: cannot decide a ratio on its own.
REPETITIONS = 5

# Workloads.
HELD_HANDLES = 100
MANY_STREAMS = 10_000
MANY_STREAMS_CONNECTIONS = 100
WIRE_SAMPLES = 1_000
SHARE_SAMPLES = 10_000
ONE_CONNECTION_STREAMS = 150
THROUGHPUT_REQUESTS = 20_000
HTTPX_THROUGHPUT_REQUESTS = 3_000
IN_FLIGHT = 100
ROUND_TRIPS = 2_000
HTTPX_ROUND_TRIPS = 1_000
SEQUENTIAL_DOWNLOADS = 100
CONCURRENT_DOWNLOADS = 200
DOWNLOAD_STREAMS = 8
SMALL_WINDOW = 65_535
SMALL_WINDOW_BITS = 16
#: A 1-minute load average above this before the run gets a warning.
BUSY_LOAD = 0.5
#: A request's HEADERS must reach the transport within this, or the write probe is blind.
WRITE_WAIT_S = 2.0

# Targets, from the project's issue.
HELD_TOTAL_MB = 0.15
HELD_PER_HANDLE_KB = 1.5
SEED_HELD_MB = 3.0
MANY_STREAMS_MB = 20.0
WIRE_P50_US = 40.0
SHARE_P50_US = 5.0
CPU_US_PER_REQUEST = 60.0
H2LOAD_REQUEST_RATIO = 0.15
H2LOAD_DOWNLOAD_RATIO = 0.7
HTTPX_REQUEST_RATIO = 12.0
AIOHTTP_REQUEST_RATIO = 1.5


Criterion = Callable[[Target], Awaitable[Outcome]]


# Reaching into the pool: instrumentation only, kept to these two helpers.


def _origin_slots(pool: Pool, origin: str) -> OriginSlots[Connection]:
    state = pool._origins.get(parse_origin(origin))
    if state is None:
        raise BenchError(f"the pool has no state for {origin}")
    return state.slots


def _connections(pool: Pool, origin: str) -> list[Connection]:
    return list(_origin_slots(pool, origin).ledgers)


# Shared steps.


def h2pool_client(target: Target, **options: Any) -> ClientFactory:
    """h2pool on one connection (``options`` are pool options), behind the common client interface."""
    return lambda: H2poolClient(target.ssl_context(), max_connections_per_origin=1, **options)


def _ratio_target(ratio: float, reference: float | None, unit: str) -> str:
    if reference is None:
        return f">= {ratio} x h2load (not installed)"
    return f">= {ratio} x h2load = {ratio * reference:,.0f} {unit}"


def _ratio_ok(value: float, ratio: float, reference: float | None) -> bool | None:
    return None if reference is None else value >= ratio * reference


def _ratio_text(value: float, reference: float | None) -> str:
    return "" if reference is None else f" = {value / reference:.2f} x h2load"


async def _h2pool_medians(label: str, run: Run, *, warm_up: bool = True) -> Sample:
    """Medians of ``run`` over the repetitions, after an unrecorded warm-up run by default."""
    return (await interleaved_medians(label, REPETITIONS, {"h2pool": run}, warm_up=warm_up))["h2pool"]


async def _read_to_end(handle: Handle) -> tuple[int, int]:
    """Status and body length of a handle's response."""
    head = await handle.read_headers()
    size = 0
    while chunk := await handle.read_data():
        size += len(chunk)
    return head.status, size


# 1. Memory of 100 in-flight handles.


async def handle_memory(target: Target) -> Outcome:
    await prime_hold(target)
    async with Pool(target.ssl_context(), max_connections_per_origin=1) as pool:
        await warm_pool(pool, target)

        label = f"1. {HELD_HANDLES} held handles"
        rss = await _h2pool_medians(f"{label}, RSS", partial(held_round, pool, target, HELD_HANDLES, rss_bytes))
        with tracing():
            traced = await _h2pool_medians(
                f"{label}, tracemalloc", partial(held_round, pool, target, HELD_HANDLES, traced_bytes)
            )
    rss_mb, traced_kb = rss["bytes"] / 1e6, traced["bytes"] / HELD_HANDLES / 1e3
    note = held_note(rss, HELD_HANDLES)
    if rss["bytes"] < traced["bytes"] / 2:
        note += "; below tracemalloc's: memory the warm-up round freed is reused"
    rows = [
        judged(
            f"1. {HELD_HANDLES} in-flight handles: RSS delta",
            f"<= {HELD_TOTAL_MB} MB (seed < {SEED_HELD_MB:.0f} MB)",
            f"{rss_mb:.3f} MB ({rss['bytes'] / HELD_HANDLES / 1e3:.2f} KB/handle){note}",
            rss["bytes"] <= HELD_TOTAL_MB * 1e6 and rss["in_flight"] == HELD_HANDLES,
        ),
        judged(
            f"1. {HELD_HANDLES} in-flight handles: tracemalloc",
            f"<= {HELD_PER_HANDLE_KB} KB/handle",
            f"{traced_kb:.2f} KB/handle ({traced['bytes'] / 1e6:.3f} MB){held_note(traced, HELD_HANDLES)}",
            traced_kb <= HELD_PER_HANDLE_KB and traced["in_flight"] == HELD_HANDLES,
        ),
    ]
    return Outcome(rows, {"rss": rss, "traced": traced})


# 2. 10,000 in-flight streams over at most 100 connections.


async def _many_streams_traced(target: Target) -> Sample:
    async with Pool(target.ssl_context(), max_connections_per_origin=MANY_STREAMS_CONNECTIONS) as pool:
        await warm_pool(pool, target)
        return await held_round(pool, target, MANY_STREAMS, traced_bytes)


async def many_streams(target: Target) -> Outcome:
    label = f"2. {MANY_STREAMS:,} held streams"
    await prime_hold(target)
    # Each RSS run in a fresh process: in this one, memory freed by earlier runs would be reused.
    fresh = partial(fresh_process_round, target, MANY_STREAMS, max_connections=MANY_STREAMS_CONNECTIONS)
    rss = await _h2pool_medians(f"{label}, RSS in a fresh process", fresh, warm_up=False)
    # Once only: tracemalloc makes 10,000 streams several times slower.
    progress(f"{label}, tracemalloc: h2pool (1/1)")
    with tracing():
        traced = await _many_streams_traced(target)
    ok = (
        rss["bytes"] <= MANY_STREAMS_MB * 1e6
        and rss["connections"] <= MANY_STREAMS_CONNECTIONS
        and rss["in_flight"] == MANY_STREAMS
    )
    measured = (
        f"{rss['bytes'] / 1e6:.1f} MB over {rss['connections']:.0f} connections "
        f"({rss['bytes'] / MANY_STREAMS / 1e3:.2f} KB/stream; tracemalloc {traced['bytes'] / 1e6:.1f} MB)"
        f"{held_note(rss, MANY_STREAMS)}"
    )
    row = judged(
        f"2. {MANY_STREAMS:,} in-flight streams: RSS delta",
        f"<= {MANY_STREAMS_MB:.0f} MB, <= {MANY_STREAMS_CONNECTIONS} connections",
        measured,
        ok,
    )
    return Outcome([row], {"rss": rss, "traced": traced})


# 3. Warm acquisition latency.


class WriteProbe:
    """Stands in for a connection's transport and stamps the first write after :meth:`arm`."""

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        self._armed: asyncio.Future[int] | None = None

    def arm(self) -> asyncio.Future[int]:
        self._armed = asyncio.get_running_loop().create_future()
        return self._armed

    def write(self, data: bytes) -> None:
        self._stamp()
        self._transport.write(data)

    def writelines(self, chunks: Iterable[bytes]) -> None:
        self._stamp()
        self._transport.writelines(chunks)

    def _stamp(self) -> None:
        armed = self._armed
        if armed is not None and not armed.done():
            armed.set_result(time.perf_counter_ns())

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


async def _to_wire_round(pool: Pool, target: Target, probe: WriteProbe, count: int) -> Sample:
    """From ``pool.acquire`` to the request's HEADERS handed to the transport, ``count`` times."""
    origin, path = target.origin, target.small_path
    durations, returned = [0] * count, [0] * count
    for i in range(count):
        # Let what the last response left to send (window acks) go first, so the next write is ours.
        await asyncio.sleep(0)
        written = probe.arm()
        start = time.perf_counter_ns()
        async with pool.acquire(origin) as handle:
            await handle.send_headers("GET", path, end_stream=True)
            returned[i] = time.perf_counter_ns() - start
            durations[i] = await _stamped(written) - start
            await _read_to_end(handle)
    return latency_figures(durations) | latency_figures(returned, prefix="returned_")


async def _stamped(written: asyncio.Future[int]) -> int:
    try:
        async with asyncio.timeout(WRITE_WAIT_S):
            return await written
    except TimeoutError:
        raise BenchError("the request never reached conn.transport.write(lines): the probe cannot see it") from None


async def _reserve_round(pool: Pool, origin: str, count: int) -> Sample:
    """The pool's own share: ``OriginSlots.reserve`` and a ``Handle`` for the slot."""
    slots = _origin_slots(pool, origin)
    durations = [0] * count
    for i in range(count):
        start = time.perf_counter_ns()
        conn = slots.reserve()
        handle = Handle(conn)  # type: ignore[arg-type]  # None is caught below, outside the timed part
        durations[i] = time.perf_counter_ns() - start
        if conn is None:
            raise BenchError("no free slot on a warm connection")
        handle.release()
        del handle
    return latency_figures(durations)


async def _sync_acquire_round(pool: Pool, origin: str, count: int) -> Sample:
    """``pool.acquire(origin)`` entered on a warm connection, which must not suspend."""
    durations = [0] * count
    for i in range(count):
        start = time.perf_counter_ns()
        handle = _without_suspending(pool.acquire(origin).__aenter__())
        durations[i] = time.perf_counter_ns() - start
        handle.release()
        del handle
    return latency_figures(durations)


def _without_suspending(coroutine: Any) -> Handle:
    try:
        coroutine.send(None)
    except StopIteration as done:
        return cast(Handle, done.value)
    coroutine.close()
    raise BenchError("pool.acquire() suspended although a warm connection had free slots")


async def acquisition_latency(target: Target) -> Outcome:
    async with Pool(target.ssl_context(), max_connections_per_origin=1) as pool:
        await warm_pool(pool, target)
        (conn,) = _connections(pool, target.origin)
        probe = WriteProbe(conn.transport)
        conn.transport = cast(Any, probe)
        figures = await interleaved_medians(
            "3. warm acquisition",
            REPETITIONS,
            {
                "to the wire": partial(_to_wire_round, pool, target, probe, WIRE_SAMPLES),
                "pool share": partial(_reserve_round, pool, target.origin, SHARE_SAMPLES),
                "pool.acquire()": partial(_sync_acquire_round, pool, target.origin, SHARE_SAMPLES),
            },
        )
    wire, share, acquire = figures["to the wire"], figures["pool share"], figures["pool.acquire()"]
    rows = [
        judged(
            "3. warm acquire -> HEADERS written to transport",
            f"p50 <= {WIRE_P50_US:.0f} us (seed 5 ms)",
            f"p50 {wire['p50_us']:.1f} us, p99 {wire['p99_us']:.1f} us "
            f"(send_headers returned: p50 {wire['returned_p50_us']:.1f} us)",
            wire["p50_us"] <= WIRE_P50_US,
        ),
        judged(
            "3. pool's share: OriginSlots.reserve + Handle",
            f"p50 <= {SHARE_P50_US:.0f} us (seed 1 ms)",
            f"p50 {share['p50_us']:.2f} us, p99 {share['p99_us']:.2f} us",
            share["p50_us"] <= SHARE_P50_US,
        ),
        judged(
            "3. pool.acquire() entered (no suspension)",
            "info",
            f"p50 {acquire['p50_us']:.2f} us, p99 {acquire['p99_us']:.2f} us",
            None,
        ),
    ]
    return Outcome(rows, figures)


# 4. 150 concurrent streams on one connection.


async def _one_connection_round(target: Target) -> Sample:
    async with Pool(target.ssl_context(), max_connections_per_origin=1) as pool:
        await warm_pool(pool, target)
        handles: list[Handle] = []
        try:
            for _ in range(ONE_CONNECTION_STREAMS):
                handle = await pool.acquire(target.origin).__aenter__()
                handles.append(handle)
                await handle.send_headers("GET", target.small_path, end_stream=True)
            # Nothing has yielded to the loop yet: every stream is open at once.
            concurrent = pool.stats().streams_open
            results = await asyncio.gather(*(_read_to_end(handle) for handle in handles))
            connections = pool.stats().connections
            peer_limit = _connections(pool, target.origin)[0].slots.peer_limit
        finally:
            for handle in handles:
                handle.release()
    complete = sum(
        status == 200 and (target.small_size is None or size == target.small_size) for status, size in results
    )
    return {"complete": complete, "concurrent": concurrent, "connections": connections, "peer_limit": peer_limit}


async def one_connection_streams(target: Target) -> Outcome:
    label = f"4. {ONE_CONNECTION_STREAMS} streams on one connection"
    runs = await interleaved_runs(label, REPETITIONS, {"h2pool": partial(_one_connection_round, target)})
    samples = runs["h2pool"]
    worst = min(samples, key=lambda s: (s["complete"], s["concurrent"], -s["connections"]))
    n = ONE_CONNECTION_STREAMS
    ok = worst["complete"] == n and worst["concurrent"] == n and worst["connections"] == 1
    measured = (
        f"worst of {len(samples)}: {worst['complete']:.0f}/{n} complete, {worst['concurrent']:.0f} open at once, "
        f"{worst['connections']:.0f} connection(s), server limit {worst['peer_limit']:.0f}"
    )
    row = judged(f"4. {ONE_CONNECTION_STREAMS} concurrent streams, one connection", f"all {n} complete", measured, ok)
    return Outcome([row], {"samples": samples})


# 5. Throughput.


async def throughput(target: Target) -> Outcome:
    runs: dict[str, Run] = {
        "h2pool": partial(
            load, h2pool_client(target), target.small_url, THROUGHPUT_REQUESTS, IN_FLIGHT, target.small_size
        )
    }
    if h2load_available():
        runs["h2load"] = partial(h2load, target.small_url, THROUGHPUT_REQUESTS, IN_FLIGHT, cipher=target.tls_cipher)
    figures = await interleaved_medians("5. throughput", REPETITIONS, runs)
    ours, ceiling = figures["h2pool"], figures.get("h2load", {}).get("req_s")
    rows = [
        judged(
            f"5. throughput: {THROUGHPUT_REQUESTS:,} GETs, {IN_FLIGHT} in flight, 1 conn",
            _ratio_target(H2LOAD_REQUEST_RATIO, ceiling, "req/s"),
            f"{ours['req_s']:,.0f} req/s{_ratio_text(ours['req_s'], ceiling)}",
            _ratio_ok(ours["req_s"], H2LOAD_REQUEST_RATIO, ceiling),
        ),
        judged(
            "5. client CPU per request",
            f"<= {CPU_US_PER_REQUEST:.0f} us",
            f"{ours['cpu_us_per_req']:.1f} us (process busy {ours['cpu_share']:.0%} of wall time)",
            ours["cpu_us_per_req"] <= CPU_US_PER_REQUEST,
        ),
    ]
    return Outcome(rows, figures)


# 6. Sequential round trips.


async def sequential_round_trips(target: Target) -> Outcome:
    runs: dict[str, Run] = {"h2pool": partial(round_trips, h2pool_client(target), target.small_url, ROUND_TRIPS)}
    if h2load_available():
        runs["h2load -m1"] = partial(h2load, target.small_url, ROUND_TRIPS, 1, cipher=target.tls_cipher)
    figures = await interleaved_medians("6. sequential round trips", REPETITIONS, runs)
    ours = figures["h2pool"]
    reference = figures.get("h2load -m1", {}).get("mean_request_us")
    measured = f"p50 {ours['p50_us']:.0f} us, p99 {ours['p99_us']:.0f} us"
    if reference is not None:
        measured += f" (h2load -m1 mean {reference:.0f} us)"
    row = judged("6. sequential round trip, warm connection", "info (vs aiohttp: --peers)", measured, None)
    return Outcome([row], figures)


# 7. 1 MiB downloads.

_WINDOWS: dict[str, tuple[dict[str, int], int | None]] = {
    "default windows": ({}, None),
    "65,535-byte windows": (
        {"initial_stream_window": SMALL_WINDOW, "connection_window": SMALL_WINDOW},
        SMALL_WINDOW_BITS,
    ),
}
_DOWNLOAD_SHAPES = {
    "sequential": (SEQUENTIAL_DOWNLOADS, 1),
    f"{DOWNLOAD_STREAMS} concurrent": (CONCURRENT_DOWNLOADS, DOWNLOAD_STREAMS),
}


async def downloads(target: Target) -> Outcome:
    runs: dict[str, Run] = {}
    for windows, (options, bits) in _WINDOWS.items():
        for shape, (count, streams) in _DOWNLOAD_SHAPES.items():
            factory = h2pool_client(target, **options)
            runs[f"h2pool {windows}, {shape}"] = partial(
                load, factory, target.download_url, count, streams, target.download_size
            )
            if h2load_available():
                runs[f"h2load {windows}, {shape}"] = partial(
                    h2load, target.download_url, count, streams, cipher=target.tls_cipher, window_bits=bits
                )
    figures = await interleaved_medians("7. 1 MiB downloads", REPETITIONS, runs)
    rows = []
    for windows in _WINDOWS:
        for shape in _DOWNLOAD_SHAPES:
            ours = figures[f"h2pool {windows}, {shape}"]["mb_s"]
            ceiling = figures.get(f"h2load {windows}, {shape}", {}).get("mb_s")
            rows.append(
                judged(
                    f"7. 1 MiB downloads, {windows}, {shape}",
                    _ratio_target(H2LOAD_DOWNLOAD_RATIO, ceiling, "MB/s"),
                    f"{ours:.0f} MB/s{_ratio_text(ours, ceiling)}",
                    _ratio_ok(ours, H2LOAD_DOWNLOAD_RATIO, ceiling),
                )
            )
    return Outcome(rows, figures)


CRITERIA: dict[str, Criterion] = {
    f"1. memory of {HELD_HANDLES} in-flight handles": handle_memory,
    f"2. {MANY_STREAMS:,} in-flight streams": many_streams,
    "3. warm acquisition latency": acquisition_latency,
    f"4. {ONE_CONNECTION_STREAMS} streams on one connection": one_connection_streams,
    "5. throughput": throughput,
    "6. sequential round trip": sequential_round_trips,
    "7. 1 MiB downloads": downloads,
    "8. TLS session resumption": partial(tls_resumption, repetitions=REPETITIONS),
    "9. predictive pre-warming": partial(predictive_prewarm, repetitions=REPETITIONS),
    "10. adaptive windows": partial(adaptive_windows, repetitions=REPETITIONS),
}


# --peers: h2pool, httpx, aiohttp and h2load on the same server.


def _per_client_row(criterion: str, figures: dict[str, Sample], name: str, template: str) -> Row:
    """One figure of every client, side by side."""
    measured = ", ".join(
        f"{client} {template.format(sample[name])}" for client, sample in figures.items() if name in sample
    )
    return Row(criterion, "info", measured, INFO)


def _peer_ratio_row(criterion: str, figures: dict[str, Sample], peer: str, name: str, ratio: float | None) -> Row:
    """h2pool's figure over ``peer``'s, judged against ``ratio`` when there is one."""
    target = f">= {ratio} x" if ratio is not None else "info"
    ours, theirs = figures["h2pool"].get(name), figures.get(peer, {}).get(name)
    if ours is None or theirs is None:
        return Row(criterion, target, f"{peer} not measured", NOT_RUN)
    measured = f"{ours / theirs:.2f} x ({ours:,.1f} vs {theirs:,.1f})"
    return judged(criterion, target, measured, None if ratio is None else ours / theirs >= ratio)


async def _peer_throughput(target: Target, factories: dict[str, ClientFactory]) -> dict[str, Sample]:
    runs: dict[str, Run] = {
        name: partial(
            load,
            factory,
            target.small_url,
            HTTPX_THROUGHPUT_REQUESTS if name == "httpx" else THROUGHPUT_REQUESTS,
            IN_FLIGHT,
            target.small_size,
        )
        for name, factory in factories.items()
    }
    if h2load_available():
        runs["h2load"] = partial(h2load, target.small_url, THROUGHPUT_REQUESTS, IN_FLIGHT, cipher=target.tls_cipher)
    return await interleaved_medians("peers: throughput", REPETITIONS, runs)


async def _peer_round_trips(target: Target, factories: dict[str, ClientFactory]) -> dict[str, Sample]:
    runs: dict[str, Run] = {
        name: partial(round_trips, factory, target.small_url, HTTPX_ROUND_TRIPS if name == "httpx" else ROUND_TRIPS)
        for name, factory in factories.items()
    }
    if h2load_available():
        runs["h2load"] = partial(h2load, target.small_url, ROUND_TRIPS, 1, cipher=target.tls_cipher)
    figures = await interleaved_medians("peers: sequential round trips", REPETITIONS, runs)
    if "h2load" in figures:
        # h2load reports a mean, not percentiles: shown as its p50 for scale only.
        figures["h2load"]["p50_us"] = figures["h2load"]["mean_request_us"]
    return figures


async def _peer_downloads(target: Target, factories: dict[str, ClientFactory]) -> dict[str, Sample]:
    runs: dict[str, Run] = {}
    for name, factory in factories.items():
        for shape, (count, streams) in _DOWNLOAD_SHAPES.items():
            runs[f"{name} {shape}"] = partial(load, factory, target.download_url, count, streams, target.download_size)
    if h2load_available():
        for shape, (count, streams) in _DOWNLOAD_SHAPES.items():
            runs[f"h2load {shape}"] = partial(h2load, target.download_url, count, streams, cipher=target.tls_cipher)
    figures = await interleaved_medians("peers: 1 MiB downloads", REPETITIONS, runs)
    by_client: dict[str, Sample] = {}
    for run_name, sample in figures.items():
        client, shape = run_name.split(" ", 1)
        by_client.setdefault(client, {})[f"mb_s {shape}"] = sample["mb_s"]
    return by_client


async def _peer_memory(target: Target, factories: dict[str, ClientFactory]) -> dict[str, Sample]:
    if not target.hold_request_ends:
        progress("peers: in-flight memory skipped: this server has no delayed path a plain GET can hold")
        return {}
    # Each run in a fresh process: in this one, memory freed by earlier runs would be reused.
    runs: dict[str, Run] = {name: partial(fresh_process_round, target, IN_FLIGHT, client=name) for name in factories}
    await prime_hold(target)
    return await interleaved_medians("peers: in-flight memory", REPETITIONS, runs)


async def peer_comparison(target: Target) -> Outcome:
    factories = client_factories(target)
    rates = await _peer_throughput(target, factories)
    trips = await _peer_round_trips(target, factories)
    loads = await _peer_downloads(target, factories)
    memory = await _peer_memory(target, factories)
    concurrent = f"{DOWNLOAD_STREAMS} concurrent"
    per_concurrent = f"mb_s {concurrent}"
    rows = [
        _per_client_row(f"throughput req/s ({IN_FLIGHT} in flight)", rates, "req_s", "{:,.0f}"),
        _per_client_row("client CPU us/request", rates, "cpu_us_per_req", "{:.0f}"),
        _peer_ratio_row("h2pool/httpx req/s", rates, "httpx", "req_s", HTTPX_REQUEST_RATIO),
        _peer_ratio_row("h2pool/aiohttp req/s", rates, "aiohttp", "req_s", AIOHTTP_REQUEST_RATIO),
        _peer_ratio_row("h2pool/h2load req/s", rates, "h2load", "req_s", H2LOAD_REQUEST_RATIO),
        _per_client_row("sequential RTT p50 us (h2load: mean)", trips, "p50_us", "{:.0f}"),
        _per_client_row("sequential RTT p99 us", trips, "p99_us", "{:.0f}"),
        _seq_vs_aiohttp_row(trips),
        _per_client_row("1 MiB downloads MB/s, sequential", loads, "mb_s sequential", "{:.0f}"),
        _per_client_row(f"1 MiB downloads MB/s, {concurrent}", loads, per_concurrent, "{:.0f}"),
        _peer_ratio_row(f"h2pool/h2load MB/s, {concurrent}", loads, "h2load", per_concurrent, H2LOAD_DOWNLOAD_RATIO),
        _peer_ratio_row(f"h2pool/httpx MB/s, {concurrent}", loads, "httpx", per_concurrent, None),
        _peer_ratio_row(f"h2pool/aiohttp MB/s, {concurrent}", loads, "aiohttp", per_concurrent, None),
    ]
    if memory:
        rows.append(_per_client_row("RSS KB per in-flight request", memory, "rss_kb_per_request", "{:.1f}"))
    else:
        rows.append(Row("RSS KB per in-flight request", "info", "no delayed path on this server", NOT_RUN))
    figures = {"throughput": rates, "round_trips": trips, "downloads": loads, "memory": memory}
    return Outcome(rows, figures)


def _seq_vs_aiohttp_row(trips: dict[str, Sample]) -> Row:
    ours, theirs = trips["h2pool"]["p50_us"], trips["aiohttp"]["p50_us"]
    return judged(
        "h2pool sequential p50 vs aiohttp",
        "no slower than aiohttp",
        f"{ours:.0f} vs {theirs:.0f} us ({ours / theirs:.2f} x)",
        ours <= theirs,
    )


# Running.


async def _guarded(name: str, criterion: Criterion, target: Target) -> Outcome:
    """Run one criterion; an error becomes an ERROR row and the next criterion still runs."""
    try:
        return await criterion(target)
    except Exception as exc:
        progress(f"{name}: ERROR {exc!r}")
        traceback.print_exc(file=sys.stderr)
        return Outcome([Row(name, "", f"{type(exc).__name__}: {exc}"[:300], ERROR)])


async def run(target: Target, criteria: dict[str, Criterion]) -> tuple[list[Row], dict[str, Any], str, Target]:
    """Run ``criteria`` in order: their rows, their figures, the server's server header, and the target.

    The target comes back with the TLS cipher suite h2pool negotiated, which h2load is then held to.
    """
    async with Pool(target.ssl_context(), max_connections_per_origin=1) as pool:
        server_header = await warm_pool(pool, target)
        target = dataclasses.replace(target, tls_cipher=_connections(pool, target.origin)[0].info.tls_cipher)
    rows: list[Row] = []
    figures: dict[str, Any] = {}
    for name, criterion in criteria.items():
        outcome = await _guarded(name, criterion, target)
        rows.extend(outcome.rows)
        figures[name] = outcome.figures
    return rows, figures, server_header, target


@contextmanager
def _target(args: argparse.Namespace) -> Iterator[Target]:
    if args.url is not None:
        yield url_target(args.url, args.download_url, args.hold_url)
        return
    with (
        tempfile.TemporaryDirectory(prefix="h2pool-bench-") as workdir,
        local_target(args.server or default_kind(), Path(workdir)) as target,
    ):
        yield target


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.criteria", description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--server", choices=SERVER_KINDS, help="local server to start (default: first installed)")
    where.add_argument("--url", help="https URL of a small resource on your server, verified with the default CAs")
    parser.add_argument("--download-url", help="with --url: a large resource for the download criterion")
    parser.add_argument("--hold-url", help="with --url: a resource whose response is delayed, for memory criteria")
    parser.add_argument("--peers", action="store_true", help="compare with httpx, aiohttp and h2load instead")
    parser.add_argument("--only", help="comma-separated criterion numbers to run, e.g. 3,5 (default: all)")
    parser.add_argument("--output", type=Path, help="JSON file (default bench/results/latest[-peers].json)")
    args = parser.parse_args(argv)
    if args.url is None and (args.download_url or args.hold_url):
        parser.error("--download-url and --hold-url go with --url")
    if args.only and args.peers:
        parser.error("--only selects criteria; --peers runs the peer comparison")
    return args


def _selected(args: argparse.Namespace) -> dict[str, Criterion]:
    if args.peers:
        return {"peers": peer_comparison}
    if not args.only:
        return CRITERIA
    wanted = {number.strip() for number in args.only.split(",")}
    selected = {name: criterion for name, criterion in CRITERIA.items() if name.split(".")[0] in wanted}
    if not selected:
        raise SystemExit(f"--only {args.only}: no such criterion (1 to {len(CRITERIA)})")
    return selected


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _caption(target: Target, peers: bool) -> str:
    machine = machine_info()
    what = "h2pool vs httpx, aiohttp and h2load" if peers else f"h2pool {h2pool.__version__} criteria"
    return (
        f"{what} on {target.description}; {machine['cpu_count']} CPUs, Python {machine['python']}, "
        f"h2 {machine['packages']['h2']}; TLS {target.tls_cipher or '-'} (h2load held to it); "
        f"medians of {REPETITIONS} runs"
    )


def _warn_if_busy() -> float:
    """The 1-minute load average; figures taken on a busy machine are noisy, so say so."""
    load = os.getloadavg()[0]
    if load > BUSY_LOAD:
        progress(f"warning: load average {load:.1f} on {os.cpu_count()} CPUs: other work is running, figures are noisy")
    return load


def main(argv: list[str] | None = None) -> int:
    # SIGTERM (a CI timeout, `kill`) unwinds like Ctrl-C, so the server is stopped on the way out.
    signal.signal(signal.SIGTERM, _interrupt)
    args = parse_args(argv)
    criteria = _selected(args)
    load_before = _warn_if_busy()
    started = time.monotonic()
    try:
        with _target(args) as target:
            progress(f"server: {target.description}")
            rows, figures, server_header, target = asyncio.run(run(target, criteria))
    except KeyboardInterrupt:
        print("interrupted; the server was stopped", file=sys.stderr)
        return 130
    except (h2pool.H2PoolError, BenchError) as exc:
        print(f"cannot benchmark: {exc}", file=sys.stderr)
        return 1
    elapsed = time.monotonic() - started
    print(_caption(target, args.peers))
    print(render(rows))
    info: dict[str, Any] = {
        "run": "peers" if args.peers else "criteria",
        "elapsed_s": round(elapsed, 1),
        "repetitions": REPETITIONS,
        "load_average_1m_before": load_before,
        "machine": {**machine_info(), "h2pool_version": h2pool.__version__},
        "server": {
            "kind": target.kind,
            "version": target.version,
            "server_header": server_header,
            "url": target.small_url,
            "tls_cipher": target.tls_cipher,
        },
        "h2load": h2load_version(),
        "figures": figures,
    }
    if args.peers:
        info["peers"] = peer_versions()
    output = args.output or RESULTS_DIR / ("latest-peers.json" if args.peers else "latest.json")
    write_json(output, info, rows)
    print(f"\n{len(rows)} rows in {elapsed:.0f} s; written to {output}", file=sys.stderr)
    return 1 if any(row.verdict == ERROR for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
