"""Measurement helpers shared by every benchmark run.

One way to repeat a run and take medians (:func:`interleaved_medians`), one
way to time wall and CPU (:func:`timed`), one way to read memory (:func:`rss_bytes`,
:func:`traced_bytes`), so that the figures of h2pool and of its peers are
taken the same way.
"""

from __future__ import annotations

import asyncio
import gc
import math
import statistics
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import psutil  # type: ignore[import-untyped, unused-ignore]

#: Named figures of one run, e.g. ``{"req_s": 7000.0, "cpu_us_per_req": 90.0}``.
Sample = dict[str, float]
Run = Callable[[], Awaitable[Sample]]

#: No single run may take longer than this: a stalled server fails the run, not the machine.
RUN_TIMEOUT_S = 120.0

_STARTED = time.monotonic()
_PROCESS = psutil.Process()


class BenchError(Exception):
    """A run could not produce a valid measurement (wrong status, short body, stalled server...)."""


def progress(message: str) -> None:
    """One progress line on stderr, stamped with the time since the bench started."""
    print(f"[{time.monotonic() - _STARTED:6.1f}s] {message}", file=sys.stderr, flush=True)


async def interleaved_runs(
    label: str, repetitions: int, runs: Mapping[str, Run], *, warm_up: bool = False
) -> dict[str, list[Sample]]:
    """Run each of ``runs`` once per repetition, in turn; return every sample, by run.

    Interleaving spreads slow drifts of the machine (frequency, other load)
    over every contender instead of penalising whichever ran last.
    ``warm_up`` first runs each once unrecorded, so one-time costs (code
    paths, caches, allocator arenas) stay out of the figures.
    """
    samples: dict[str, list[Sample]] = {name: [] for name in runs}
    for repetition in range(0 if warm_up else 1, repetitions + 1):
        for name, run in runs.items():
            progress(f"{label}: {name} ({repetition or 'warm-up'}/{repetitions})")
            async with asyncio.timeout(RUN_TIMEOUT_S):
                sample = await run()
            if repetition:
                samples[name].append(sample)
    return samples


async def interleaved_medians(
    label: str, repetitions: int, runs: Mapping[str, Run], *, warm_up: bool = False
) -> dict[str, Sample]:
    """:func:`interleaved_runs`, reduced to each run's per-figure medians."""
    samples = await interleaved_runs(label, repetitions, runs, warm_up=warm_up)
    return {name: medians(name_samples) for name, name_samples in samples.items()}


def medians(samples: Sequence[Sample]) -> Sample:
    """The median of each figure over ``samples`` (figures missing from a sample are skipped)."""
    names = {name for sample in samples for name in sample}
    return {name: statistics.median(s[name] for s in samples if name in s) for name in sorted(names)}


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile, ``fraction`` in (0, 1]."""
    if not values:
        raise BenchError("no values to take a percentile of")
    ordered = sorted(values)
    rank = min(len(ordered), max(1, math.ceil(fraction * len(ordered))))
    return ordered[rank - 1]


def latency_figures(durations_ns: Sequence[int], prefix: str = "") -> Sample:
    """p50 and p99 of ``durations_ns``, in microseconds."""
    return {
        f"{prefix}p50_us": percentile(durations_ns, 0.50) / 1000,
        f"{prefix}p99_us": percentile(durations_ns, 0.99) / 1000,
    }


@dataclass
class Span:
    """Wall-clock and process CPU seconds of a block (filled in when it ends)."""

    wall_s: float = 0.0
    cpu_s: float = 0.0


@contextmanager
def timed() -> Iterator[Span]:
    """Time a block: wall clock, and CPU of this process only (servers are other processes)."""
    span = Span()
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        yield span
    finally:
        span.wall_s = time.perf_counter() - wall
        span.cpu_s = time.process_time() - cpu


def rss_bytes() -> int:
    """Resident set size of this process after a full collection."""
    gc.collect()
    return int(_PROCESS.memory_info().rss)


def traced_bytes() -> int:
    """Bytes currently allocated by Python, as tracemalloc sees them, after a full collection."""
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


@contextmanager
def tracing() -> Iterator[None]:
    """tracemalloc on for the block only: it slows everything and adds its own memory."""
    tracemalloc.start()
    try:
        yield
    finally:
        tracemalloc.stop()
