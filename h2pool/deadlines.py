"""Timeouts for the many short waits of a connection's streams, kept by one timer.

Every response wait (headers, the next piece of body, send window) has a
timeout, and nearly every wait ends long before it. A loop timer per wait
costs a handle, a heap push and a cancel, and leaves the cancelled handle in
the loop's heap until it surfaces: about 2 us of a small request's 50. Here
a wait costs a dict entry; one timer is set for the earliest deadline that
may still expire, and when it fires it fails the waits that are due and is
set again for the earliest of the rest. A deadline later than the timer's
(the usual case: one ``read_timeout`` for every wait) needs no timer work.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable

from .exceptions import H2PoolError

#: A loop timer may run up to the clock's resolution early (asyncio's
#: ``_run_once``); a wait due within this much is treated as due.
_EARLY_S = 1e-3


def expire(waiter: asyncio.Future[None], make_error: Callable[[], H2PoolError]) -> None:
    """Fail ``waiter`` with ``make_error()`` unless it is done (before or while the error is made)."""
    if waiter.done():
        return
    error = make_error()
    # Making the error may end the stream, which wakes this very waiter: the
    # waiting task then finds the error on the stream instead.
    if not waiter.done():
        waiter.set_exception(error)


class Deadlines:
    """Futures waited on with a timeout: each failed with its own error if not woken in time."""

    __slots__ = ("_due", "_timer", "_timer_at", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._due: dict[asyncio.Future[None], tuple[float, Callable[[], H2PoolError]]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf

    def __len__(self) -> int:
        return len(self._due)

    def add(self, waiter: asyncio.Future[None], timeout: float, make_error: Callable[[], H2PoolError]) -> None:
        """Fail ``waiter`` with ``make_error()`` if it is still pending ``timeout`` s from now."""
        deadline = self.loop.time() + timeout
        self._due[waiter] = (deadline, make_error)
        if deadline < self._timer_at:
            self._set_timer(deadline)

    def discard(self, waiter: asyncio.Future[None]) -> None:
        """``waiter`` was woken or given up: no timeout for it.

        The timer stays: when it fires it finds nothing due and sets itself
        for the next deadline, or stops. Cancelling it here would cost a
        timer per wait again whenever waits come one at a time.
        """
        self._due.pop(waiter, None)

    def close(self) -> None:
        """Stop the timer (the connection is finished); waits added later set it again."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = math.inf

    def _set_timer(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_at(when, self._fire)
        self._timer_at = when

    def _fire(self) -> None:
        self._timer = None
        self._timer_at = math.inf
        now = self.loop.time() + _EARLY_S
        due = [(waiter, make_error) for waiter, (deadline, make_error) in self._due.items() if deadline <= now]
        for waiter, _ in due:
            del self._due[waiter]
        for waiter, make_error in due:
            expire(waiter, make_error)
        if self._due and self._timer is None:
            self._set_timer(min(deadline for deadline, _ in self._due.values()))
