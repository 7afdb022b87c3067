"""Request priorities (RFC 9218) and the urgency-ordered queue that honours them locally.

A priority is sent to the server as the ``priority`` header, which is all
RFC 9218 asks of a client. It also orders what the client itself rations:
callers queued for a stream slot are served most urgent first (FIFO within
one urgency), and when the connection's send window runs short, the request
bodies of more urgent streams get the window first. Urgency 0 is the most
urgent, 7 the least; 3 is the default, as it is for a request with no header.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

DEFAULT_URGENCY = 3
URGENCY_LEVELS = 8

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Priority:
    """An RFC 9218 priority: ``urgency`` 0 (most urgent) to 7, and whether the response is ``incremental``."""

    urgency: int = DEFAULT_URGENCY
    incremental: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.urgency, int) or isinstance(self.urgency, bool) or not 0 <= self.urgency <= 7:
            raise ValueError(f"urgency must be an integer from 0 to 7, not {self.urgency!r}")
        if not isinstance(self.incremental, bool):
            raise ValueError(f"incremental must be True or False, not {self.incremental!r}")

    def header_value(self) -> bytes:
        """The ``priority`` field value (a structured-field dictionary); empty for the defaults.

        Defaults are left out, as RFC 9218 §4 does: a missing member means its default.
        """
        members = []
        if self.urgency != DEFAULT_URGENCY:
            members.append(b"u=%d" % self.urgency)
        if self.incremental:
            members.append(b"i")
        return b", ".join(members)


#: The priority of a request that names none.
DEFAULT_PRIORITY = Priority()


class UrgencyQueue(Generic[T]):
    """FIFO queues, one per urgency: the most urgent non-empty queue is served first.

    Eight deques rather than a heap: pushing and popping stay O(1), and order
    within one urgency is exactly arrival order with no sequence numbers.
    """

    __slots__ = ("_levels", "_size")

    def __init__(self) -> None:
        self._levels: list[deque[T]] = [deque() for _ in range(URGENCY_LEVELS)]
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def __bool__(self) -> bool:
        return self._size > 0

    def __iter__(self) -> Iterator[T]:
        """Items in the order they would be served."""
        for level in self._levels:
            yield from level

    def append(self, item: T, urgency: int = DEFAULT_URGENCY) -> None:
        self._levels[urgency].append(item)
        self._size += 1

    def discard(self, item: T, urgency: int) -> None:
        """Remove ``item`` if still queued: a caller that gave up must not hold its place.

        Otherwise a saturated origin whose callers keep timing out would
        queue their dead futures until a slot frees. Callers that give up
        are usually the oldest, near the front, where the search starts.
        """
        level = self._levels[urgency]
        try:
            level.remove(item)
        except ValueError:
            return
        self._size -= 1

    def first(self) -> T:
        """The item served next; IndexError when empty."""
        for level in self._levels:
            if level:
                return level[0]
        raise IndexError("first() of an empty UrgencyQueue")

    def popleft(self) -> T:
        """Remove and return the item served next; IndexError when empty."""
        for level in self._levels:
            if level:
                self._size -= 1
                return level.popleft()
        raise IndexError("popleft() of an empty UrgencyQueue")
