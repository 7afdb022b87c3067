"""Criterion 10: adaptive receive windows on a long round trip.

A 64 MiB download from the local server through :mod:`tests.delay_proxy`
(20 ms each way, a 40 ms round trip, in a subprocess of its own), on a fresh
pool each time (connection and TLS set-up included), with three settings:

* **adaptive**: the pool's defaults (1 MiB stream and 16 MiB connection
  windows, grown as PING-timed samples show the window limits the transfer);
* **fixed 16 MiB**: hand-tuned windows, ``adaptive_window=False``;
* **fixed 65,535 B**: the RFC's initial windows, ``adaptive_window=False``.
  It moves one window per round trip (about 1.6 MB/s, 40 s for 64 MiB), so
  it downloads the first :data:`PREFIX` bytes and its total is extrapolated:
  time to the response headers + body time x (64 MiB / prefix), a
  window-limited transfer being linear in time.

Targets (the issue's): adaptive at least 5x faster than fixed 65,535-byte
windows, and at least 0.8 of the speed of fixed 16 MiB windows. Only for a
local server: the file and the proxy are ours.
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from h2pool import Pool
from tests.delay_proxy import DelayProxyProcess
from tests.servers import iter_deterministic_bytes

from .measure import Sample, interleaved_medians
from .report import NOT_RUN, Outcome, Row, judged
from .target import Target

DELAY_S = 0.020
BIG_NAME = "64m"
BIG_SIZE = 64 << 20
PREFIX = 4 << 20
ADAPTIVE: dict[str, Any] = {}
FIXED_16MIB: dict[str, Any] = {
    "initial_stream_window": 16 << 20,
    "connection_window": 16 << 20,
    "adaptive_window": False,
}
FIXED_SMALL: dict[str, Any] = {"initial_stream_window": 65_535, "connection_window": 65_535, "adaptive_window": False}
FASTER_THAN_SMALL = 5.0
OF_FIXED_16MIB = 0.8


def _big_file(docroot: Path) -> None:
    path = docroot / BIG_NAME
    if not path.exists():
        with path.open("wb") as out:
            for block in iter_deterministic_bytes(BIG_SIZE, seed=BIG_NAME):
                out.write(block)
        path.chmod(0o644)


async def _download(target: Target, url: str, options: dict[str, Any], limit: int) -> Sample:
    """Seconds to the response headers and to ``limit`` body bytes, on a fresh pool."""
    start = time.perf_counter()
    received = 0
    async with Pool(target.ssl_context(), **options) as pool, pool.stream("GET", url) as response:
        head = time.perf_counter()
        async for chunk in response.aiter_bytes():
            received += len(chunk)
            if received >= limit:
                break
    done = time.perf_counter()
    if received < limit:
        raise RuntimeError(f"{url}: {received} bytes, expected {limit}")
    body = (done - head) * (BIG_SIZE / received) if limit < BIG_SIZE else done - head
    return {"seconds": head - start + body}


async def adaptive_windows(target: Target, *, repetitions: int) -> Outcome:
    criterion = "10. 64 MiB over a 40 ms round trip"
    if target.docroot is None:
        return Outcome([Row(criterion, "", "only against the local server (needs our file and proxy)", NOT_RUN)], {})
    _big_file(Path(target.docroot))
    upstream = urlsplit(target.small_url).port or 443
    with DelayProxyProcess(upstream, DELAY_S) as proxy:
        url = f"{proxy.origin}/{BIG_NAME}"
        runs = {
            "adaptive": partial(_download, target, url, ADAPTIVE, BIG_SIZE),
            "fixed 16 MiB": partial(_download, target, url, FIXED_16MIB, BIG_SIZE),
            "fixed 65,535 B": partial(_download, target, url, FIXED_SMALL, PREFIX),
        }
        medians = await interleaved_medians(criterion, repetitions, runs)
    adaptive = medians["adaptive"]["seconds"]
    fixed16 = medians["fixed 16 MiB"]["seconds"]
    small = medians["fixed 65,535 B"]["seconds"]
    times = f"adaptive {adaptive:.2f} s, fixed 16 MiB {fixed16:.2f} s, fixed 65,535 B {small:.1f} s (extrapolated)"
    rows = [
        judged(
            f"{criterion}: adaptive vs fixed 65,535-byte windows",
            f">= {FASTER_THAN_SMALL:.0f} x faster",
            f"{small / adaptive:.0f} x faster; {times}",
            small >= FASTER_THAN_SMALL * adaptive,
        ),
        judged(
            f"{criterion}: adaptive vs fixed 16 MiB windows",
            f">= {OF_FIXED_16MIB} x the speed",
            f"{fixed16 / adaptive:.2f} x the speed",
            fixed16 >= OF_FIXED_16MIB * adaptive,
        ),
    ]
    return Outcome(rows, {"seconds": medians})
