"""Stream-slot accounting: how many streams each connection may still carry.

This is the pool's one source of truth for capacity, kept as plain classes
with no I/O so that it can be tested exhaustively without sockets.

A *slot* is either **reserved** (a handle holds it, no HEADERS sent yet) or
**open** (HEADERS sent, the stream not yet closed in h2's state machine).
``open`` moves exactly when h2's own stream states do (HEADERS sent; both
ends closed or a reset), so it cannot drift from h2's count the way peers'
separate counters have (encode/httpcore#248).

Two limits apply. New reservations need ``open + reserved < min(peer, local)``.
Sending HEADERS needs ``open < peer``, which is what h2 enforces: a server
may lower MAX_CONCURRENT_STREAMS below the number of reservations already
handed out (even to 0), and those handles then wait for a stream to close
instead of failing or deadlocking (pydantic/httpx2#1216).
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable
from typing import Generic, TypeVar

from .config import ASSUMED_PEER_MAX_STREAMS


class SlotLedger:
    """The stream slots of one connection."""

    __slots__ = ("accepting", "degraded", "local_cap", "open", "peer_limit", "reserved", "settled")

    def __init__(self, local_cap: int, peer_limit: int = ASSUMED_PEER_MAX_STREAMS) -> None:
        self.local_cap = local_cap
        #: Until the peer's first SETTINGS this is an assumption.
        self.peer_limit = peer_limit
        self.settled = False
        self.reserved = 0
        self.open = 0
        #: False once the connection takes no new streams (GOAWAY, closing).
        self.accepting = True
        #: True while a health PING is unanswered: no new streams meanwhile.
        self.degraded = False

    @property
    def busy(self) -> int:
        """Slots in use: reserved plus open."""
        return self.reserved + self.open

    @property
    def free(self) -> int:
        """Slots that may still be reserved."""
        if not self.accepting or self.degraded:
            return 0
        # Comparisons, not min() and max(): several calls per request.
        limit = self.peer_limit if self.peer_limit < self.local_cap else self.local_cap
        free = limit - self.open - self.reserved
        return free if free > 0 else 0

    def reserve(self) -> None:
        if self.free <= 0:
            raise RuntimeError("no free stream slot to reserve")
        self.reserved += 1

    def unreserve(self) -> None:
        """A handle gave its slot back without opening a stream."""
        if self.reserved <= 0:
            raise RuntimeError("no reserved slot to give back")
        self.reserved -= 1

    def can_open(self) -> bool:
        """Whether a reserved slot may send HEADERS now (h2's own check)."""
        return self.open < self.peer_limit

    def opened(self) -> None:
        """A reserved slot sent HEADERS: it is an open stream now."""
        if self.reserved <= 0 or not self.can_open():
            raise RuntimeError("opened a stream without a reserved slot or over the peer's limit")
        self.reserved -= 1
        self.open += 1

    def closed(self) -> None:
        """An open stream closed (both ends done, or reset)."""
        if self.open <= 0:
            raise RuntimeError("closed more streams than were open")
        self.open -= 1

    def settle(self, peer_limit: int) -> None:
        """The peer's SETTINGS gave its MAX_CONCURRENT_STREAMS (possibly anew)."""
        self.peer_limit = peer_limit
        self.settled = True


C = TypeVar("C", bound=Hashable)


class OriginSlots(Generic[C]):
    """The connections of one origin, and where the next stream should go.

    Connections with a free slot sit in a heap ordered by age, so a
    reservation takes the oldest connection with room in O(log k) for k
    connections of this origin: streams pack onto few sockets and later
    connections drain and idle out. Entries are removed lazily, so a
    connection that fills up costs nothing until it is next at the top.
    Nothing here scans all connections, let alone all origins, per request.
    """

    __slots__ = (
        "_age",
        "_free_heap",
        "_in_heap",
        "_next_age",
        "accepting",
        "learned_limit",
        "ledgers",
        "max_connections",
        "unsettled",
    )

    def __init__(self, max_connections: int) -> None:
        self.max_connections = max_connections
        self.ledgers: dict[C, SlotLedger] = {}
        self._age: dict[C, int] = {}
        self._next_age = 0
        self._free_heap: list[tuple[int, C]] = []
        self._in_heap: set[C] = set()
        #: Connections still taking new streams; draining ones do not count
        #: against ``max_connections``, so their replacement can be dialled.
        self.accepting = 0
        #: Connections whose peer SETTINGS have not arrived yet.
        self.unsettled = 0
        #: The peer limit seen on this origin's connections, once known.
        self.learned_limit: int | None = None

    def add(self, conn: C, ledger: SlotLedger) -> None:
        self.ledgers[conn] = ledger
        self._age[conn] = self._next_age
        self._next_age += 1
        self.accepting += ledger.accepting
        self.unsettled += not ledger.settled
        self.refresh(conn)

    def remove(self, conn: C) -> None:
        ledger = self.ledgers.pop(conn, None)
        if ledger is None:
            return
        del self._age[conn]
        self._in_heap.discard(conn)
        self.accepting -= ledger.accepting
        self.unsettled -= not ledger.settled

    def refresh(self, conn: C) -> None:
        """Re-file ``conn`` after its ledger changed in any way."""
        ledger = self.ledgers.get(conn)
        if ledger is not None and ledger.free > 0 and conn not in self._in_heap:
            self._in_heap.add(conn)
            heapq.heappush(self._free_heap, (self._age[conn], conn))

    def settle(self, conn: C, peer_limit: int) -> None:
        ledger = self.ledgers.get(conn)
        if ledger is None:
            return
        self.unsettled -= not ledger.settled
        ledger.settle(peer_limit)
        self.learned_limit = peer_limit
        self.refresh(conn)

    def stop_accepting(self, conn: C) -> None:
        ledger = self.ledgers.get(conn)
        if ledger is None or not ledger.accepting:
            return
        ledger.accepting = False
        self.accepting -= 1

    def reserve(self) -> C | None:
        """Reserve a slot on the oldest connection with room, if any."""
        heap = self._free_heap
        while heap:
            age, conn = heap[0]
            ledger = self.ledgers.get(conn)
            if ledger is None or self._age[conn] != age or ledger.free <= 0:
                heapq.heappop(heap)
                if ledger is not None and self._age[conn] == age:
                    self._in_heap.discard(conn)
                continue
            ledger.reserve()
            return conn
        return None

    def reserve_on(self, conn: C) -> bool:
        """Reserve a slot on ``conn`` itself, if it has one (for a caller that must use that connection).

        The heap stays valid: it is checked lazily, and ``refresh`` files
        the connection again when the slot comes back.
        """
        ledger = self.ledgers.get(conn)
        if ledger is None or ledger.free <= 0:
            return False
        ledger.reserve()
        return True

    def in_use(self) -> int:
        """Slots reserved or open on connections still taking streams."""
        return sum(ledger.busy for ledger in self.ledgers.values() if ledger.accepting)

    def capacity(self) -> int:
        """Streams the connections still taking streams may carry (assumed limits for unsettled ones)."""
        return sum(min(ledger.peer_limit, ledger.local_cap) for ledger in self.ledgers.values() if ledger.accepting)

    def has_free(self, conn: C) -> bool:
        """Whether ``conn`` is filed as having a free slot."""
        return conn in self._in_heap and self.ledgers[conn].free > 0

    def may_dial(self) -> bool:
        """Whether a new connection may be opened for demand that found no slot.

        While the origin's stream limit is unknown, one dial at a time: the
        first SETTINGS tell how many streams each connection carries, and
        only then is it known how many more connections the demand needs.
        This bounds a cold thundering herd of N requests to
        ``ceil(N / peer limit)`` connections.
        """
        if self.accepting >= self.max_connections:
            return False
        if self.learned_limit == 0:
            # The server takes no streams now; more of its connections would
            # not either. Wait for it to raise the limit.
            return self.accepting == 0
        return self.learned_limit is not None or self.unsettled == 0

    def initial_peer_limit(self) -> int:
        """The limit to assume for a new connection before its SETTINGS."""
        return self.learned_limit if self.learned_limit is not None else ASSUMED_PEER_MAX_STREAMS

    @property
    def open_streams(self) -> int:
        return sum(ledger.open for ledger in self.ledgers.values())

    @property
    def reserved(self) -> int:
        return sum(ledger.reserved for ledger in self.ledgers.values())
