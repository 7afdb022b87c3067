"""Chaos: h2pool against real nginx servers that drain, end and restart connections, under cancellation.

Every test is bounded in requests and in time and ends by itself. Each one
prints a one-line summary of what happened (``pytest -s`` shows it).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import ctypes.util
import gc
import inspect
import random
import re
import ssl
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import psutil  # type: ignore[import-untyped, unused-ignore]
import pytest

from h2pool import ConnectError, H2PoolError, Pool, PoolStats
from tests.conftest import ServerFactory
from tests.servers import ServerProcess, expected_bytes, h2_request

STUB_STATUS = "location = /status { stub_status; }"

SMALL = expected_bytes("small")
ONE_MIB = expected_bytes("1m")


def accepted_connections(server: ServerProcess, ssl_context: ssl.SSLContext) -> int:
    """Connections nginx has accepted so far, this query's own connection included (blocking)."""
    response = h2_request("127.0.0.1", server.port, "/status", ssl_context=ssl_context)
    match = re.search(rb"accepts handled requests\s+(\d+)\s+\d+\s+\d+", response.body)
    assert match is not None, f"unexpected stub_status page: {response.body!r}"
    return int(match.group(1))


def sockets_to(port: int) -> int:
    """TCP connections from this process to ``port`` that the OS has not closed."""
    return sum(
        1
        for conn in psutil.Process().net_connections(kind="tcp")
        if conn.raddr and conn.raddr.port == port and conn.status != psutil.CONN_TIME_WAIT
    )


def error_kind(exc: H2PoolError) -> str:
    return f"{type(exc).__name__}(processed={exc.may_have_been_processed})"


def assert_quiescent(stats: PoolStats) -> None:
    assert (stats.streams_open, stats.slots_reserved, stats.waiting) == (0, 0, 0), stats


async def run_workers(count: int, workers: int, one: Callable[[int], Coroutine[Any, Any, None]]) -> None:
    """Run ``one(0) .. one(count - 1)`` on ``workers`` concurrent workers."""
    indices = iter(range(count))

    async def worker() -> None:
        for index in indices:
            await one(index)

    await asyncio.gather(*(worker() for _ in range(workers)))


# GOAWAY drains.


@pytest.mark.timeout(90)
async def test_5000_requests_all_complete_while_nginx_sends_goaway_every_1000_streams(
    server_factory: ServerFactory, client_ssl_context: ssl.SSLContext
) -> None:
    """nginx's default keepalive_requests (1000) ends each connection with GOAWAY after 1000 streams.

    200 workers share one pool; nginx's stub_status counts the connections
    it accepted, so at least 5 must have been dialled.
    """
    server = server_factory("nginx", extra_server_config=STUB_STATUS)
    url = server.url("/small")
    accepted_before = await asyncio.to_thread(accepted_connections, server, client_ssl_context)
    outcomes: Counter[str] = Counter()
    pool = Pool(client_ssl_context)

    async def one(_: int) -> None:
        try:
            response = await pool.request("GET", url)
        except H2PoolError as exc:
            outcomes[error_kind(exc)] += 1
            return
        outcomes["ok" if response.status == 200 and response.content == SMALL else "wrong response"] += 1

    async with asyncio.timeout(60), pool:
        await run_workers(5000, 200, one)
        stats = pool.stats()
    # Minus one: the stub_status query's own connection.
    dialled = await asyncio.to_thread(accepted_connections, server, client_ssl_context) - accepted_before - 1
    replays = sum(origin.replays for origin in stats.origins.values())
    print(f"\ngoaway drain: {dict(outcomes)}; connections dialled {dialled}; replays {replays}; {stats}")
    assert outcomes == {"ok": 5000}
    assert dialled >= 5
    assert_quiescent(stats)


@pytest.mark.timeout(60)
async def test_50_sequential_requests_complete_when_nginx_ends_every_connection_after_one_stream(
    server_factory: ServerFactory, client_ssl_context: ssl.SSLContext
) -> None:
    """``keepalive_requests 1``: GOAWAY right after the first HEADERS, then the response on the same connection."""
    server = server_factory("nginx", keepalive_requests=1)
    url = server.url("/small")
    outcomes: Counter[str] = Counter()
    async with asyncio.timeout(45), Pool(client_ssl_context) as pool:
        for _ in range(50):
            try:
                response = await pool.request("GET", url)
            except H2PoolError as exc:
                outcomes[error_kind(exc)] += 1
            else:
                outcomes["ok" if response.status == 200 and response.content == SMALL else "wrong response"] += 1
        stats = pool.stats()
    print(f"\nkeepalive_requests 1, sequential: {dict(outcomes)}; {stats}")
    assert outcomes == {"ok": 50}
    assert_quiescent(stats)


@pytest.mark.timeout(60)
async def test_50_concurrent_requests_complete_when_nginx_ends_every_connection_after_one_stream(
    server_factory: ServerFactory, client_ssl_context: ssl.SSLContext
) -> None:
    """``keepalive_requests 1`` with 50 requests at once, on the pool's default options.

    Each connection processes one stream; the GOAWAY names it as the last, so
    every other stream on that connection is unprocessed and replayed.
    """
    server = server_factory("nginx", keepalive_requests=1)
    url = server.url("/small")
    outcomes: Counter[str] = Counter()
    pool = Pool(client_ssl_context)

    async def one() -> None:
        try:
            response = await pool.request("GET", url)
        except H2PoolError as exc:
            outcomes[error_kind(exc)] += 1
        else:
            outcomes["ok" if response.status == 200 and response.content == SMALL else "wrong response"] += 1

    async with asyncio.timeout(45), pool:
        await asyncio.gather(*(one() for _ in range(50)))
        stats = pool.stats()
    replays = sum(origin.replays for origin in stats.origins.values())
    print(f"\nkeepalive_requests 1, 50 concurrent: {dict(outcomes)}; replays {replays}; {stats}")
    assert outcomes == {"ok": 50}
    assert_quiescent(stats)


# The chaos run.

CHAOS_REQUESTS = 20_000
CHAOS_WARMUP = 10_000
CHAOS_WORKERS = 100
CHAOS_SEED = 20_240_611
#: Fraction of requests for the 1 MiB file, so that cancellations mid-body happen.
LARGE_SHARE = 0.05
CANCEL_SHARE = 0.10
#: Failures this long after the restart has returned still count as part of it:
#: the loop may see a refused dial or a closed socket a little after the fact.
RESTART_GRACE = 2.0
#: After a connect failure a worker waits this long, as a client would, rather
#: than spin through the plan while nothing listens.
CONNECT_BACKOFF = 0.05
RSS_SLACK = 2 * 1024 * 1024
#: The stream window of the chaos pool: the server is never more than this
#: ahead of the consumer, so a 1 MiB body arrives in several reads.
CHAOS_STREAM_WINDOW = 128 * 1024
#: A mid-body cancel comes once this many bytes at most have been read: at
#: most one window plus one read more has arrived, short of the whole MiB.
MID_BODY_MAX = len(ONE_MIB) - 2 * CHAOS_STREAM_WINDOW


@dataclass(frozen=True)
class Planned:
    large: bool
    #: None, or where to cancel: "early" (a few loop iterations after the
    #: start: acquiring, dialling, sending or awaiting headers), "after headers",
    #: or "mid-body" (1 MiB only).
    cancel: str | None
    #: "early": loop iterations before the cancel; "mid-body": bytes read before it.
    after: int


def make_plan(rng: random.Random, count: int) -> list[Planned]:
    plan = []
    for _ in range(count):
        large = rng.random() < LARGE_SHARE
        cancel = None
        after = 0
        if rng.random() < CANCEL_SHARE:
            cancel = rng.choice(("early", "after headers", "mid-body") if large else ("early", "after headers"))
            after = rng.randint(1, 4) if cancel == "early" else rng.randint(1, MID_BODY_MAX)
        plan.append(Planned(large, cancel, after))
    return plan


@dataclass
class ChaosTally:
    outcomes: Counter[str] = field(default_factory=Counter)
    #: Where "early" cancellations landed: see :func:`classify_landing`.
    landed: Counter[str] = field(default_factory=Counter)
    #: Failures that break the rule, with the first few messages.
    violations: list[str] = field(default_factory=list)
    done: int = 0


def landing_point(task: asyncio.Task[Any]) -> str:
    """The coroutine chain the task is suspended in, from the outside in (``"not started"`` before its first step)."""
    coro: Any = task.get_coro()
    if inspect.getcoroutinestate(coro) == inspect.CORO_CREATED:
        return "not started"
    names = []
    while coro is not None and hasattr(coro, "cr_code"):
        names.append(coro.cr_code.co_name)
        coro = coro.cr_await
    return ">".join(names)


def classify_landing(chain: str) -> str:
    """Name the step of a request a coroutine chain is in, by the pool's functions in it."""
    names = chain.split(">")
    for name, label in (
        ("_wait_for_slot", "waiting for a slot"),
        ("wait_ready", "waiting for a dial"),
        ("_acquire", "acquiring"),
        ("open_stream", "opening the stream"),
        ("read_headers", "awaiting headers"),
    ):
        if name in names:
            return label
    return chain


class Chaos:
    """Runs a plan of requests through one pool; see the chaos test's docstring for the rule."""

    def __init__(self, pool: Pool, server: ServerProcess) -> None:
        self.pool = pool
        self.small_url = server.url("/small")
        self.large_url = server.url("/1m")
        self.loop = asyncio.get_running_loop()
        #: Loop time when the restart began, and when it returned plus the grace.
        self.restart_window: tuple[float, float] | None = None
        #: Seconds the restart took, as the loop saw it.
        self.restart_took = 0.0

    def in_restart_window(self) -> bool:
        now = self.loop.time()
        return self.restart_window is not None and self.restart_window[0] <= now <= self.restart_window[1]

    async def run(self, plan: list[Planned], tally: ChaosTally) -> None:
        async def one(index: int) -> None:
            planned = plan[index]
            outcome = await (self.plain(planned) if planned.cancel is None else self.cancelled(planned, tally))
            tally.outcomes[outcome] += 1
            tally.done += 1
            if outcome.startswith("connect "):
                await asyncio.sleep(CONNECT_BACKOFF)
            if outcome.startswith("VIOLATION") and len(tally.violations) < 10:
                tally.violations.append(outcome)

        await run_workers(len(plan), CHAOS_WORKERS, one)

    def judge(self, exc: H2PoolError) -> str:
        if not self.in_restart_window():
            return f"VIOLATION outside the restart window: {exc!r}"
        if isinstance(exc, ConnectError):
            return f"connect {error_kind(exc)}"
        if exc.may_have_been_processed:
            return error_kind(exc)
        return f"VIOLATION unprocessed and not a connect error: {exc!r}"

    async def plain(self, planned: Planned) -> str:
        url, expected = (self.large_url, ONE_MIB) if planned.large else (self.small_url, SMALL)
        try:
            response = await self.pool.request("GET", url)
        except H2PoolError as exc:
            return self.judge(exc)
        if response.status != 200 or response.content != expected:
            return f"VIOLATION wrong response: {response!r} of {len(response.content)} bytes"
        return "ok"

    async def staged(self, planned: Planned, reached: asyncio.Event) -> str:
        url, expected = (self.large_url, ONE_MIB) if planned.large else (self.small_url, SMALL)
        async with self.pool.stream("GET", url) as response:
            if planned.cancel == "after headers":
                reached.set()
                # Parked inside the block until cancelled; bounded in case it never is.
                await asyncio.sleep(10)
                return "VIOLATION never cancelled after headers"
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if planned.cancel == "mid-body" and len(body) >= planned.after:
                    reached.set()
                if reached.is_set():
                    # A consumer that does something with each chunk yields to the loop.
                    await asyncio.sleep(0)
        if response.status != 200 or body != expected:
            return f"VIOLATION wrong response: {response!r} of {len(body)} bytes"
        return "ok"

    async def cancelled(self, planned: Planned, tally: ChaosTally) -> str:
        reached = asyncio.Event()
        task = asyncio.create_task(self.staged(planned, reached))
        if planned.cancel == "early":
            for _ in range(planned.after):
                await asyncio.sleep(0)
        else:
            waiting = asyncio.create_task(reached.wait())
            await asyncio.wait({task, waiting}, return_when=asyncio.FIRST_COMPLETED)
            waiting.cancel()
        if planned.cancel == "early" and not task.done():
            tally.landed[classify_landing(landing_point(task))] += 1
        task.cancel()
        try:
            result = await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
            return f"cancelled {planned.cancel}"
        except H2PoolError as exc:
            return self.judge(exc)
        return result if result.startswith("VIOLATION") else f"{result} (finished before its cancel)"

    async def restart_when(self, tally: ChaosTally, at: int, server: ServerProcess) -> None:
        """Restart the server once ``at`` requests are done, in a thread so the loop keeps running."""
        for _ in range(12_000):
            if tally.done >= at:
                break
            await asyncio.sleep(0.005)
        else:
            raise AssertionError(f"only {tally.done} requests done: the restart point {at} was never reached")
        start = self.loop.time()
        self.restart_window = (start, float("inf"))
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="restart") as executor:
            await self.loop.run_in_executor(executor, server.restart)
        self.restart_took = self.loop.time() - start
        self.restart_window = (start, self.loop.time() + RESTART_GRACE)


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        trim: Callable[[int], int] = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


MALLOC_TRIM = _malloc_trim()


def rss() -> tuple[int, int]:
    """RSS after ``gc.collect()``, and again after glibc's ``malloc_trim`` (equal where there is none).

    glibc keeps freed 1 MiB buffers in its heaps (its mmap threshold rises
    after the first ones are freed) and so holds RSS it is not using; the
    trimmed figure is the memory actually in use.
    """
    gc.collect()
    process = psutil.Process()
    raw = int(process.memory_info().rss)
    if MALLOC_TRIM is None:
        return raw, raw
    MALLOC_TRIM(0)
    return raw, int(process.memory_info().rss)


@pytest.mark.chaos
@pytest.mark.timeout(180)
async def test_chaos_20000_requests_with_cancellations_and_a_server_restart(
    server_factory: ServerFactory, client_ssl_context: ssl.SSLContext
) -> None:
    """20,000 GETs (5% of them 1 MiB) on 100 workers through one pool; 10% cancelled; nginx restarted once.

    nginx keeps its default keepalive_requests (GOAWAY every 1000 streams)
    but allows 32 streams per connection, and the pool 2 connections: about
    36 workers are always queued for a slot, so an "early" cancel (1 to 4
    loop iterations after the start) lands while acquiring, dialling,
    sending or awaiting headers. Others are cancelled right after the
    response headers, or mid-body on the 1 MiB file. The server is restarted
    (stop, then start on the same port) from a thread once 40% are done.

    The rule, for every request that was not cancelled (and for cancelled
    ones that finished first):

    * outside the restart window it must succeed: status 200, exact body;
    * inside the window (from the restart's start until 2 s after it
      returned, as the loop sees it) it may also fail with an h2pool error
      whose ``may_have_been_processed`` is True (in flight when the server
      went) or with a ``ConnectError`` (dialled while nothing listened);
    * anything else is a violation: unprocessed errors other than
      ConnectError (the pool should have replayed them), a wrong body, a
      parked stream that was never cancelled; an exception that is not an
      h2pool error ends the run with its traceback.

    After a ConnectError a worker waits 50 ms before its next request, so
    the time the server is down costs about one request per worker.

    Afterwards the pool holds no stream, reservation or waiter, and the
    process RSS (after gc and ``malloc_trim``, see :func:`rss`) is within
    2 MB of its value after a 10,000-request warm-up of the same mix. A
    shorter warm-up leaves the run to grow the allocators' pools (Python's
    come in 1 MiB arenas) and is too close to the bound.
    """
    server = server_factory("nginx", max_concurrent_streams=32)
    rng = random.Random(CHAOS_SEED)
    warmup = make_plan(rng, CHAOS_WARMUP)
    plan = make_plan(rng, CHAOS_REQUESTS)
    pool = Pool(client_ssl_context, max_connections_per_origin=2, initial_stream_window=CHAOS_STREAM_WINDOW)
    chaos = Chaos(pool, server)
    tally = ChaosTally()
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(150), pool:
        warmup_tally = ChaosTally()
        await chaos.run(warmup, warmup_tally)
        assert not warmup_tally.violations, warmup_tally.violations
        raw_before, rss_before = rss()
        started = loop.time()
        restart = asyncio.create_task(chaos.restart_when(tally, int(CHAOS_REQUESTS * 0.4), server))
        await chaos.run(plan, tally)
        await restart
        elapsed = loop.time() - started
        stats = pool.stats()
        raw_after, rss_after = rss()
    assert chaos.restart_window is not None
    replays = sum(origin.replays for origin in stats.origins.values())
    print(
        f"\nchaos: {elapsed:.1f} s; {dict(sorted(tally.outcomes.items()))}; early cancels landed"
        f" {dict(tally.landed)}; restart took {chaos.restart_took:.2f} s; replays {replays};"
        f" RSS {rss_before / 2**20:.1f} -> {rss_after / 2**20:.1f} MiB ({(rss_after - rss_before) / 2**10:+.0f} KiB,"
        f" untrimmed {(raw_after - raw_before) / 2**10:+.0f} KiB); {stats}"
    )
    assert not tally.violations, tally.violations
    assert sum(tally.outcomes.values()) == CHAOS_REQUESTS
    assert tally.outcomes["ok"] > CHAOS_REQUESTS * 0.8
    # The scenario did what it claims: cancels landed at each kind of point.
    for kind in ("cancelled early", "cancelled after headers", "cancelled mid-body"):
        assert tally.outcomes[kind] > 0, f"no request was {kind}"
    assert tally.landed["waiting for a slot"] > 0
    assert_quiescent(stats)
    assert rss_after - rss_before <= RSS_SLACK


# Connection churn.

CHURN_WARMUP = 300
CHURN_REQUESTS = 1_500


@pytest.mark.timeout(120)
async def test_rss_does_not_grow_with_tls_connection_churn(
    server_factory: ServerFactory, client_ssl_context: ssl.SSLContext
) -> None:
    """1,500 requests, each on a new TLS connection (``keepalive_requests 1``): RSS stays within 2 MB.

    Measured (after gc and ``malloc_trim``) after 300 requests of warm-up,
    so that a cost paid per connection (TLS set-up and resumption, h2
    state, the pool's bookkeeping) shows up 1,500 times over.
    """
    server = server_factory("nginx", keepalive_requests=1)
    url = server.url("/small")
    outcomes: Counter[str] = Counter()
    loop = asyncio.get_running_loop()

    async def sequential(pool: Pool, count: int) -> None:
        for _ in range(count):
            try:
                response = await pool.request("GET", url)
            except H2PoolError as exc:
                outcomes[error_kind(exc)] += 1
            else:
                outcomes["ok" if response.status == 200 and response.content == SMALL else "wrong response"] += 1

    async with asyncio.timeout(100), Pool(client_ssl_context) as pool:
        await sequential(pool, CHURN_WARMUP)
        raw_before, rss_before = rss()
        started = loop.time()
        await sequential(pool, CHURN_REQUESTS)
        elapsed = loop.time() - started
        raw_after, rss_after = rss()
        stats = pool.stats()
    print(
        f"\nconnection churn: {elapsed:.1f} s; {dict(outcomes)}; RSS {rss_before / 2**20:.1f} ->"
        f" {rss_after / 2**20:.1f} MiB ({(rss_after - rss_before) / 2**10:+.0f} KiB, untrimmed"
        f" {(raw_after - raw_before) / 2**10:+.0f} KiB, {(rss_after - rss_before) / CHURN_REQUESTS:.0f} B per"
        f" connection); {stats}"
    )
    assert outcomes == {"ok": CHURN_WARMUP + CHURN_REQUESTS}
    assert_quiescent(stats)
    assert rss_after - rss_before <= RSS_SLACK


# Thundering herd and churn.

HERD_ROUNDS = 30
HERD_SIZE = 500
HERD_SEED = 500


@pytest.mark.timeout(120)
async def test_closing_pools_under_a_cold_500_request_herd_leaks_no_task_and_raises_only_h2pool_errors(
    server_factory: ServerFactory, client_ssl_context: ssl.SSLContext
) -> None:
    """30 rounds: a new pool, 500 requests at once on a cold origin, the pool closed at a random point.

    The close comes at once, within the first 5 ms (while connections are
    being set up), after a random number of responses, or right after the
    last one (when connections dialled for the herd may still be in their
    TLS handshake). Every request must end with a response or an h2pool
    error, no task may outlive its round, no socket to the server may stay
    open, and the loop's exception handler must never be called: that is
    where "exception was never retrieved" and errors raised inside
    transport callbacks go.
    """
    nginx = server_factory("nginx")
    loop = asyncio.get_running_loop()
    handled: list[dict[str, Any]] = []
    previous_handler = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: handled.append(context))
    rng = random.Random(HERD_SEED)
    url = nginx.url("/small")
    tasks_before = asyncio.all_tasks()
    outcomes: Counter[str] = Counter()
    closed_with_in_flight = 0
    closes: Counter[str] = Counter()
    try:
        async with asyncio.timeout(100):
            for _ in range(HERD_ROUNDS):
                when = rng.choice(("at once", "while dialling", "after some responses", "after the last response"))
                closes[when] += 1
                close_at = rng.randint(1, HERD_SIZE - 50) if when == "after some responses" else HERD_SIZE
                reached = asyncio.Event()
                pool = Pool(client_ssl_context)
                finished = 0

                async def one(pool: Pool = pool, close_at: int = close_at, reached: asyncio.Event = reached) -> None:
                    nonlocal finished
                    try:
                        response = await pool.request("GET", url)
                        outcomes["ok" if response.content == SMALL else "wrong response"] += 1
                    except H2PoolError as exc:
                        outcomes[type(exc).__name__] += 1
                    finally:
                        finished += 1
                        if finished >= close_at:
                            reached.set()

                herd = [asyncio.create_task(one()) for _ in range(HERD_SIZE)]
                if when == "at once":
                    await asyncio.sleep(0)
                elif when == "while dialling":
                    # A loopback TLS handshake takes a few ms: this lands in it often.
                    await asyncio.sleep(rng.uniform(0, 0.005))
                else:
                    await asyncio.wait_for(reached.wait(), 10)
                closed_with_in_flight += finished < HERD_SIZE
                await pool.aclose()
                done, pending = await asyncio.wait(herd, timeout=10)
                assert not pending, f"{len(pending)} requests did not end within 10 s of aclose()"
                # Anything other than an h2pool error escaped one() and is raised here.
                for task in done:
                    task.result()
                assert pool.stats().connections == 0
        for _ in range(5):
            await asyncio.sleep(0)
        gc.collect()
        await asyncio.sleep(0)
        leaked = asyncio.all_tasks() - tasks_before
        for _ in range(200):
            sockets = sockets_to(nginx.port)
            if not sockets:
                break
            await asyncio.sleep(0.01)
    finally:
        loop.set_exception_handler(previous_handler)
    print(
        f"\nherd churn: {HERD_ROUNDS} rounds, closed {dict(closes)}, {closed_with_in_flight} with requests in flight;"
        f" {dict(outcomes)}; leaked tasks {len(leaked)}; exception handler calls {len(handled)};"
        f" sockets left open {sockets}"
    )
    assert not leaked, leaked
    assert sockets == 0
    assert not handled, handled
    assert sum(outcomes.values()) == HERD_ROUNDS * HERD_SIZE
    assert "wrong response" not in outcomes
    assert closed_with_in_flight > HERD_ROUNDS // 3
    assert outcomes["PoolClosed"] > 0
