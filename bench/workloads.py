"""Load shapes run the same way for every client: h2pool and its peers.

A client is anything with ``get(url) -> body length`` and ``aclose()``;
each run makes a fresh client, warms it with one request (so connection
set-up is not measured), runs, and closes it.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable
from typing import Any, Protocol

from h2pool import Pool

from .measure import BenchError, Sample, latency_figures, rss_bytes, timed


class Client(Protocol):
    async def get(self, url: str) -> int:
        """GET ``url``, read the whole body, return its length; raise BenchError unless 200."""
        ...

    async def aclose(self) -> None: ...


ClientFactory = Callable[[], Client]


async def warmed(make_client: ClientFactory, url: str) -> Client:
    """A new client whose connection is set up by one request to ``url``."""
    client = make_client()
    try:
        await client.get(url)
    except BaseException:
        await client.aclose()
        raise
    return client


async def _fetch_all(client: Client, url: str, total: int, concurrency: int) -> int:
    """``total`` GETs by ``concurrency`` workers each doing sequential requests; body bytes read."""
    share, extra = divmod(total, concurrency)

    async def worker(count: int) -> int:
        received = 0
        for _ in range(count):
            received += await client.get(url)
        return received

    return sum(await asyncio.gather(*(worker(share + (i < extra)) for i in range(concurrency))))


async def load(
    make_client: ClientFactory, url: str, total: int, concurrency: int, body_size: int | None = None
) -> Sample:
    """Requests per second, body MB/s and client CPU per request of ``total`` GETs, ``concurrency`` in flight.

    ``body_size``, when known, is checked: a short body fails the run.
    """
    client = await warmed(make_client, url)
    try:
        with timed() as span:
            received = await _fetch_all(client, url, total, concurrency)
    finally:
        await client.aclose()
    if body_size is not None and received != body_size * total:
        raise BenchError(f"{total} GETs of {url} returned {received} body bytes, not {body_size * total}")
    return {
        "requests": total,
        "req_s": total / span.wall_s,
        "mb_s": received / span.wall_s / 1e6,
        "cpu_us_per_req": span.cpu_s / total * 1e6,
        "cpu_share": span.cpu_s / span.wall_s,
    }


async def round_trips(make_client: ClientFactory, url: str, count: int) -> Sample:
    """p50/p99 of ``count`` sequential GETs on a warm connection."""
    client = await warmed(make_client, url)
    durations = [0] * count
    try:
        for i in range(count):
            start = time.perf_counter_ns()
            await client.get(url)
            durations[i] = time.perf_counter_ns() - start
    finally:
        await client.aclose()
    return latency_figures(durations)


async def in_flight_memory(
    make_client: ClientFactory, warm_url: str, hold_url: str, count: int, settle_s: float
) -> Sample:
    """RSS added by ``count`` requests kept in flight on a path the server does not answer yet.

    Each request is a task, the way any asyncio caller would hold it; the
    tasks are cancelled once memory has been read.
    """
    client = await warmed(make_client, warm_url)
    tasks: list[asyncio.Task[int]] = []
    try:
        before = rss_bytes()
        tasks.extend(asyncio.create_task(client.get(hold_url)) for _ in range(count))
        await asyncio.sleep(settle_s)
        after = rss_bytes()
        answered = sum(task.done() for task in tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await client.aclose()
    if answered:
        raise BenchError(f"{answered} of {count} held requests were answered: {hold_url} does not hold responses")
    return {"rss_kb_per_request": (after - before) / count / 1e3}


class H2poolClient:
    """h2pool behind the common client interface: ``pool.request`` per GET."""

    def __init__(self, ssl_context: ssl.SSLContext | None, **options: Any) -> None:
        self.pool = Pool(ssl_context, **options)

    async def get(self, url: str) -> int:
        response = await self.pool.request("GET", url)
        if response.status != 200:
            raise BenchError(f"h2pool: GET {url} answered {response.status}")
        return len(response.content)

    async def aclose(self) -> None:
        await self.pool.aclose()
