"""Deadlines: one timer for the timeouts of many waits."""

from __future__ import annotations

import asyncio

from h2pool.deadlines import Deadlines
from h2pool.exceptions import H2PoolError, ReadTimeout


def _error(name: str) -> H2PoolError:
    return ReadTimeout(name)


async def _outcome(waiter: asyncio.Future[None]) -> str:
    try:
        await waiter
    except H2PoolError as exc:
        return str(exc)
    return "woken"


async def test_a_wait_not_woken_in_time_fails_with_its_own_error() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(loop)
    waiter: asyncio.Future[None] = loop.create_future()
    started = loop.time()
    deadlines.add(waiter, 0.05, lambda: _error("too slow"))
    assert await asyncio.wait_for(_outcome(waiter), 2) == "too slow"
    assert loop.time() - started >= 0.05 - 0.002
    assert len(deadlines) == 0


async def test_a_woken_wait_is_never_failed_and_leaves_nothing_behind() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(loop)
    waiter: asyncio.Future[None] = loop.create_future()
    deadlines.add(waiter, 0.02, lambda: _error("too slow"))
    waiter.set_result(None)
    deadlines.discard(waiter)
    assert len(deadlines) == 0
    await asyncio.sleep(0.05)
    assert waiter.result() is None


async def test_each_wait_expires_at_its_own_deadline_whatever_order_they_came_in() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(loop)
    finished: dict[str, float] = {}
    started = loop.time()

    async def wait(name: str, timeout: float) -> None:
        waiter: asyncio.Future[None] = loop.create_future()
        deadlines.add(waiter, timeout, lambda: _error(name))
        assert await _outcome(waiter) == name
        finished[name] = loop.time() - started

    # The later deadline first: the earlier one must move the timer forward.
    await asyncio.wait_for(asyncio.gather(wait("late", 0.20), wait("early", 0.05), wait("middle", 0.10)), 2)
    assert sorted(finished, key=finished.__getitem__) == ["early", "middle", "late"]
    assert finished["early"] < 0.15
    assert finished["late"] >= 0.20 - 0.002


async def test_waits_woken_in_time_do_not_delay_or_fail_later_ones() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(loop)
    woken: list[asyncio.Future[None]] = [loop.create_future() for _ in range(100)]
    for waiter in woken:
        deadlines.add(waiter, 0.03, lambda: _error("woken too late"))
    last: asyncio.Future[None] = loop.create_future()
    deadlines.add(last, 0.08, lambda: _error("last"))
    for waiter in woken:
        waiter.set_result(None)
        deadlines.discard(waiter)
    assert await asyncio.wait_for(_outcome(last), 2) == "last"
    assert all(waiter.result() is None for waiter in woken)


async def test_a_wait_that_its_error_wakes_keeps_that_outcome() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(loop)
    waiter: asyncio.Future[None] = loop.create_future()

    def error_that_ends_the_stream() -> H2PoolError:
        waiter.set_result(None)
        return _error("never raised")

    deadlines.add(waiter, 0.01, error_that_ends_the_stream)
    assert await asyncio.wait_for(_outcome(waiter), 2) == "woken"


async def test_close_stops_the_timer_and_later_waits_set_it_again() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(loop)
    forgotten: asyncio.Future[None] = loop.create_future()
    deadlines.add(forgotten, 0.02, lambda: _error("forgotten"))
    deadlines.close()
    await asyncio.sleep(0.05)
    assert not forgotten.done()
    deadlines.discard(forgotten)
    later: asyncio.Future[None] = loop.create_future()
    deadlines.add(later, 0.02, lambda: _error("later"))
    assert await asyncio.wait_for(_outcome(later), 2) == "later"
