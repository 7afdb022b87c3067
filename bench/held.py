"""Streams held in flight: the workload of the memory criteria.

A held stream is a handle whose GET of the target's hold path has been sent
and not answered (see :mod:`bench.target`), so memory figures count the
pool's own cost, not buffered response bodies.

``python -m bench.held TARGET_JSON COUNT [--client NAME]`` holds ``COUNT``
streams in a fresh interpreter and prints its RSS growth as JSON. RSS
needs that: in the benchmark's own, long-lived process the memory freed by
earlier runs is reused, and RSS would hardly move.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import sys
from collections.abc import Callable
from pathlib import Path

from h2pool import Handle, Pool

from .measure import RUN_TIMEOUT_S, BenchError, Sample, rss_bytes
from .peers import client_factories
from .target import Target
from .workloads import in_flight_memory

#: Handles held once in the fresh process before measuring, to run every code path once.
CHILD_WARM_UP_HANDLES = 100
#: How long a client gets to put its held requests on the wire (TLS handshakes included) before memory is read.
CLIENT_SETTLE_S = 1.5
#: How long a priming request may take to be answered if the hold path lets it through.
PRIMING_WAIT_S = 0.3
_REPO_ROOT = Path(__file__).resolve().parent.parent


async def warm_pool(pool: Pool, target: Target) -> str:
    """Set up a connection with one GET of the small URL; return the server header."""
    response = await pool.request("GET", target.small_url)
    if response.status != 200:
        raise BenchError(f"GET {target.small_url} answered {response.status}")
    if target.small_size is not None and len(response.content) != target.small_size:
        raise BenchError(f"GET {target.small_url}: {len(response.content)} bytes, not {target.small_size}")
    return response.headers.get("server") or "unknown"


async def prime_hold(target: Target) -> None:
    """Spend the one request a hold path answers after a quiet spell (nginx's limit_req), if it has one."""
    if not target.hold_needs_priming:
        return
    async with Pool(target.ssl_context(), max_connections_per_origin=1) as pool, pool.acquire(target.origin) as handle:
        await handle.send_headers("GET", target.hold_path, end_stream=target.hold_request_ends)
        # Answered at once if the limit's queue had drained; otherwise held, and reset on leaving.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(PRIMING_WAIT_S):
                await handle.read_headers()


async def _open_held(pool: Pool, target: Target, handles: list[Handle | None]) -> None:
    """Fill ``handles`` with handles whose GET of the hold path is sent."""
    for i in range(len(handles)):
        handle = handles[i] = await pool.acquire(target.origin).__aenter__()
        await handle.send_headers("GET", target.hold_path, end_stream=target.hold_request_ends)


async def held_round(pool: Pool, target: Target, count: int, meter: Callable[[], int]) -> Sample:
    """Memory (as ``meter`` reads it) added by ``count`` held streams, which are then released."""
    handles: list[Handle | None] = [None] * count
    before = meter()
    try:
        await _open_held(pool, target, handles)
        # The HEADERS leave at the next loop iteration; give the server time to take them.
        await asyncio.sleep(0.1 + count / 20_000)
        after = meter()
        stats = pool.stats()
        answered = sum(handle is not None and handle.response_complete for handle in handles)
    finally:
        for handle in handles:
            if handle is not None:
                handle.release()
        await asyncio.sleep(0)
    return {
        "bytes": after - before,
        "in_flight": stats.streams_open,
        "connections": stats.connections,
        "answered": answered,
    }


def held_note(sample: Sample, count: int) -> str:
    """What makes a held-memory figure less than clean, if anything."""
    notes = []
    if sample["in_flight"] < count:
        notes.append(f"only {sample['in_flight']:.0f} of {count} in flight")
    if sample["answered"]:
        notes.append(f"{sample['answered']:.0f} answered (not a delayed path: see --hold-url)")
    return f"; {', '.join(notes)}" if notes else ""


async def fresh_process_round(
    target: Target, count: int, *, max_connections: int = 1, client: str | None = None
) -> Sample:
    """RSS growth of ``count`` held streams in a new interpreter (this module's ``main``).

    Without ``client``: h2pool handles, as :func:`held_round`, after a
    warm-up round. With ``client`` (a name from
    :func:`bench.peers.client_factories`): that client's requests as tasks,
    as :func:`bench.workloads.in_flight_memory`, after one warm request.
    """
    argv = [json.dumps(dataclasses.asdict(target)), str(count), f"--max-connections={max_connections}"]
    if client is not None:
        argv.append(f"--client={client}")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.held", *argv, cwd=_REPO_ROOT, stdout=asyncio.subprocess.PIPE
    )
    try:
        async with asyncio.timeout(RUN_TIMEOUT_S):
            output, _ = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    if process.returncode != 0:
        raise BenchError(f"the held-streams process exited with {process.returncode}")
    sample: Sample = json.loads(output)
    return sample


async def _held_handles(target: Target, count: int, max_connections: int) -> Sample:
    async with Pool(target.ssl_context(), max_connections_per_origin=max_connections) as pool:
        await warm_pool(pool, target)
        await held_round(pool, target, CHILD_WARM_UP_HANDLES, rss_bytes)
        return await held_round(pool, target, count, rss_bytes)


async def _held_requests(target: Target, count: int, client: str) -> Sample:
    factory = client_factories(target)[client]
    return await in_flight_memory(factory, target.small_url, target.hold_url, count, CLIENT_SETTLE_S)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.held", description=__doc__.split("\n\n")[0])
    parser.add_argument("target", help="a bench.target.Target as JSON")
    parser.add_argument("count", type=int)
    parser.add_argument("--max-connections", type=int, default=1)
    parser.add_argument("--client", help="hold this client's requests (h2pool, httpx, aiohttp) instead of handles")
    args = parser.parse_args(argv)
    target = Target(**json.loads(args.target))
    if args.client is None:
        sample = asyncio.run(_held_handles(target, args.count, args.max_connections))
    else:
        sample = asyncio.run(_held_requests(target, args.count, args.client))
    print(json.dumps(sample))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
