"""Happy Eyeballs (RFC 8305): race a host's addresses so one dead family costs a short delay, not a timeout.

Trying addresses one after another means a host whose IPv6 path silently
drops packets costs a whole TCP connect timeout (over two minutes on Linux)
before IPv4 gets a chance. Instead, attempts start staggered: the next
address is tried when the running attempt fails or after ``delay`` seconds,
whichever comes first, while earlier attempts keep running. The first
connection made wins and every other attempt is cancelled.

:class:`AttemptSchedule` decides what to start and when, without I/O;
:func:`connect` only runs the sockets it asks for.
"""

from __future__ import annotations

import asyncio
import math
import socket
from collections import deque
from collections.abc import Sequence

#: RFC 8305 §8's recommended "Connection Attempt Delay".
DEFAULT_DELAY = 0.25


def is_ipv6(address: str) -> bool:
    """Whether an IP address string is IPv6: only IPv6 has colons."""
    return ":" in address


def interleave(addresses: Sequence[str]) -> list[str]:
    """Alternate address families, starting with the first address's family (RFC 8305 §4).

    The resolver's order within each family is kept; once one family runs
    out the rest of the other follows. A host with many IPv6 addresses and
    a broken IPv6 path thus reaches its first IPv4 address on the second
    attempt rather than after every IPv6 one.
    """
    if not addresses:
        return []
    first_family = is_ipv6(addresses[0])
    first = [a for a in addresses if is_ipv6(a) == first_family]
    other = [a for a in addresses if is_ipv6(a) != first_family]
    ordered: list[str] = []
    for index in range(max(len(first), len(other))):
        ordered.extend(family[index] for family in (first, other) if index < len(family))
    return ordered


def format_address(address: str, port: int) -> str:
    """``host:port`` as written in URLs and error messages: IPv6 in brackets."""
    return f"[{address}]:{port}" if is_ipv6(address) else f"{address}:{port}"


class AllAttemptsFailed(OSError):
    """No address accepted a connection; ``failures`` holds each address's error, in attempt order."""

    def __init__(self, port: int, failures: Sequence[tuple[str, OSError]]) -> None:
        self.failures = tuple(failures)
        detail = "; ".join(f"{format_address(address, port)}: {error}" for address, error in self.failures)
        super().__init__(f"no address accepted a connection ({detail})")


class AttemptSchedule:
    """Which address to try next and when: the decisions of Happy Eyeballs, without sockets or clocks.

    Times are whatever clock the caller passes in. An attempt may start at
    once when none has started yet or the last one to end failed; otherwise
    ``delay`` seconds after the previous start.
    """

    def __init__(self, addresses: Sequence[str], delay: float) -> None:
        if not addresses:
            raise ValueError("no addresses to connect to")
        if delay < 0:
            raise ValueError(f"happy eyeballs delay must be >= 0 seconds, not {delay}")
        self.delay = delay
        self._waiting = deque(interleave(addresses))
        self._next_start = -math.inf
        self.running = 0
        self.failures: list[tuple[str, OSError]] = []

    def start(self, now: float) -> str | None:
        """The address to start an attempt on at ``now``, or None if none is due."""
        if not self._waiting or now < self._next_start:
            return None
        self.running += 1
        self._next_start = now + self.delay
        return self._waiting.popleft()

    def failed(self, address: str, error: OSError) -> None:
        """An attempt failed: the next one may start at once rather than waiting out the delay."""
        self.running -= 1
        self.failures.append((address, error))
        self._next_start = -math.inf

    def wait(self, now: float) -> float | None:
        """Seconds until :meth:`start` has another address for us; None if no address is left."""
        if not self._waiting:
            return None
        return max(0.0, self._next_start - now)

    @property
    def exhausted(self) -> bool:
        """Every address was tried and every attempt failed."""
        return not self._waiting and self.running == 0


async def connect(addresses: Sequence[str], port: int, delay: float = DEFAULT_DELAY) -> socket.socket:
    """A connected non-blocking TCP socket to the first of ``addresses`` that accepts, raced per RFC 8305.

    Raises :class:`AllAttemptsFailed` (an OSError) when every attempt fails.
    However this ends -- a winner, a failure, the caller's cancellation --
    every other attempt is cancelled and its socket closed before it returns.
    """
    schedule = AttemptSchedule(addresses, delay)
    attempts: dict[asyncio.Task[socket.socket], str] = {}
    winner: socket.socket | None = None
    try:
        winner = await _race(schedule, attempts, port)
    finally:
        try:
            await _stop_attempts(attempts, keep=winner)
        except BaseException:
            if winner is not None:
                winner.close()
            raise
    return winner


async def _race(
    schedule: AttemptSchedule, attempts: dict[asyncio.Task[socket.socket], str], port: int
) -> socket.socket:
    loop = asyncio.get_running_loop()
    # Each pass starts or ends at least one attempt, or waits out a delay
    # before starting one: it ends within len(addresses) starts.
    while True:
        while (address := schedule.start(loop.time())) is not None:
            attempts[loop.create_task(_attempt(address, port))] = address
        if schedule.exhausted:
            raise AllAttemptsFailed(port, schedule.failures)
        running = [task for task in attempts if not task.done()]
        done, _ = await asyncio.wait(running, timeout=schedule.wait(loop.time()), return_when=asyncio.FIRST_COMPLETED)
        # In start order, so the earlier address wins a tie.
        for task in [task for task in running if task in done]:
            error = task.exception()
            if error is None:
                return task.result()
            if not isinstance(error, OSError):
                raise error
            schedule.failed(attempts[task], error)


async def _attempt(address: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if is_ipv6(address) else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setblocking(False)
        # HTTP/2 writes small frames (requests, WINDOW_UPDATEs, PING ACKs):
        # with Nagle's algorithm one waits for the ACK of the last, which a
        # server with nothing to send delays by 40 ms. asyncio sets this only
        # for sockets made with proto IPPROTO_TCP; say it outright.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await asyncio.get_running_loop().sock_connect(sock, sockaddr(address, port))
    except BaseException:
        sock.close()
        raise
    return sock


def sockaddr(address: str, port: int) -> tuple[str, int] | tuple[str, int, int, int]:
    """The socket address to connect to, turning an IPv6 ``%scope`` into the scope id connect() needs.

    Python's connect() takes the scope id only from the tuple and ignores a
    ``%scope`` left in the host string.
    """
    if not is_ipv6(address):
        return (address, port)
    host, _, scope = address.partition("%")
    if not scope:
        return (host, port, 0, 0)
    scope_id = int(scope) if scope.isdigit() else socket.if_nametoindex(scope)
    return (host, port, 0, scope_id)


async def _stop_attempts(attempts: dict[asyncio.Task[socket.socket], str], keep: socket.socket | None) -> None:
    """Cancel every attempt and close every socket but ``keep``."""
    unfinished = [task for task in attempts if not task.done()]
    for task in unfinished:
        task.cancel()
    try:
        if unfinished:
            await asyncio.wait(unfinished)
    finally:
        # Also when cancelled during the wait: a cancelled attempt closes its
        # own socket, but one that had already connected must be closed here.
        for task in attempts:
            if task.done() and not task.cancelled() and task.exception() is None and task.result() is not keep:
                task.result().close()
