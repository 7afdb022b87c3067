"""Stream-slot accounting (h2pool.slots), exercised without any I/O."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from h2pool.config import ASSUMED_PEER_MAX_STREAMS
from h2pool.slots import OriginSlots, SlotLedger

# SlotLedger


def test_new_ledger_assumes_the_default_peer_limit_until_settled() -> None:
    ledger = SlotLedger(local_cap=1000)
    assert ledger.peer_limit == ASSUMED_PEER_MAX_STREAMS
    assert not ledger.settled
    assert ledger.free == ASSUMED_PEER_MAX_STREAMS


def test_free_is_min_of_peer_and_local_minus_open_and_reserved() -> None:
    ledger = SlotLedger(local_cap=10, peer_limit=6)
    ledger.reserve()
    ledger.reserve()
    ledger.opened()
    assert (ledger.open, ledger.reserved) == (1, 1)
    assert ledger.free == 6 - 1 - 1


def test_free_is_bounded_by_the_local_cap_when_it_is_lower() -> None:
    ledger = SlotLedger(local_cap=3, peer_limit=100)
    ledger.reserve()
    assert ledger.free == 2


def test_busy_counts_reserved_and_open() -> None:
    ledger = SlotLedger(local_cap=10, peer_limit=10)
    for _ in range(3):
        ledger.reserve()
    ledger.opened()
    assert ledger.busy == 3


def test_reserve_without_a_free_slot_raises_and_changes_nothing() -> None:
    ledger = SlotLedger(local_cap=1, peer_limit=5)
    ledger.reserve()
    with pytest.raises(RuntimeError):
        ledger.reserve()
    assert ledger.reserved == 1


def test_unreserve_without_a_reservation_raises() -> None:
    ledger = SlotLedger(local_cap=5, peer_limit=5)
    with pytest.raises(RuntimeError):
        ledger.unreserve()
    assert ledger.reserved == 0


def test_unreserve_gives_the_slot_back() -> None:
    ledger = SlotLedger(local_cap=2, peer_limit=2)
    ledger.reserve()
    ledger.unreserve()
    assert (ledger.reserved, ledger.free) == (0, 2)


def test_opened_without_a_reservation_raises() -> None:
    ledger = SlotLedger(local_cap=5, peer_limit=5)
    with pytest.raises(RuntimeError):
        ledger.opened()
    assert ledger.open == 0


def test_opened_moves_a_reservation_to_open() -> None:
    ledger = SlotLedger(local_cap=5, peer_limit=5)
    ledger.reserve()
    ledger.opened()
    assert (ledger.reserved, ledger.open) == (0, 1)


def test_closed_with_nothing_open_raises() -> None:
    ledger = SlotLedger(local_cap=5, peer_limit=5)
    ledger.reserve()
    with pytest.raises(RuntimeError):
        ledger.closed()
    assert (ledger.reserved, ledger.open) == (1, 0)


def test_closed_frees_the_slot() -> None:
    ledger = SlotLedger(local_cap=1, peer_limit=1)
    ledger.reserve()
    ledger.opened()
    assert ledger.free == 0
    ledger.closed()
    assert (ledger.open, ledger.free) == (0, 1)


def test_can_open_ignores_the_local_cap() -> None:
    # The local cap limits reservations only; HEADERS are h2's business, and h2
    # checks the peer's limit alone.
    ledger = SlotLedger(local_cap=1, peer_limit=3)
    ledger.reserve()
    ledger.opened()
    assert ledger.free == 0
    assert ledger.can_open()


def test_can_open_is_false_at_the_peer_limit() -> None:
    ledger = SlotLedger(local_cap=10, peer_limit=2)
    for _ in range(2):
        ledger.reserve()
        ledger.opened()
    assert not ledger.can_open()


def test_peer_limit_lowered_below_open_gives_zero_free_not_negative() -> None:
    ledger = SlotLedger(local_cap=10, peer_limit=5)
    for _ in range(4):
        ledger.reserve()
        ledger.opened()
    ledger.settle(1)
    assert ledger.free == 0
    assert not ledger.can_open()


def test_reservation_over_a_lowered_peer_limit_cannot_open_until_a_stream_closes() -> None:
    ledger = SlotLedger(local_cap=10, peer_limit=3)
    for _ in range(3):
        ledger.reserve()
    ledger.opened()
    ledger.settle(1)
    with pytest.raises(RuntimeError):
        ledger.opened()
    ledger.closed()
    ledger.opened()
    assert (ledger.open, ledger.reserved) == (1, 1)


def test_peer_limit_zero_blocks_opening() -> None:
    ledger = SlotLedger(local_cap=10, peer_limit=5)
    ledger.reserve()
    ledger.settle(0)
    assert not ledger.can_open()
    assert ledger.free == 0


def test_not_accepting_has_no_free_slot() -> None:
    ledger = SlotLedger(local_cap=10, peer_limit=10)
    ledger.accepting = False
    assert ledger.free == 0
    with pytest.raises(RuntimeError):
        ledger.reserve()


def test_settle_records_the_peer_limit_and_marks_settled() -> None:
    ledger = SlotLedger(local_cap=1000, peer_limit=100)
    ledger.settle(250)
    assert (ledger.peer_limit, ledger.settled) == (250, True)
    assert ledger.free == 250


def test_settle_again_replaces_the_limit() -> None:
    ledger = SlotLedger(local_cap=1000)
    ledger.settle(10)
    ledger.settle(20)
    assert (ledger.peer_limit, ledger.settled) == (20, True)


# OriginSlots


def _ledger(peer_limit: int, local_cap: int = 1000, *, settled: bool = False) -> SlotLedger:
    ledger = SlotLedger(local_cap, peer_limit)
    if settled:
        ledger.settle(peer_limit)
    return ledger


def test_reserve_with_no_connections_returns_none() -> None:
    slots: OriginSlots[str] = OriginSlots(max_connections=3)
    assert slots.reserve() is None


def test_reserve_packs_onto_the_first_connection_added() -> None:
    slots: OriginSlots[str] = OriginSlots(max_connections=3)
    slots.add("a", _ledger(3))
    slots.add("b", _ledger(3))
    assert [slots.reserve() for _ in range(3)] == ["a", "a", "a"]
    assert slots.ledgers["a"].reserved == 3
    assert slots.ledgers["b"].reserved == 0


def test_reserve_moves_to_the_next_connection_when_the_first_is_full() -> None:
    slots: OriginSlots[str] = OriginSlots(max_connections=3)
    slots.add("a", _ledger(2))
    slots.add("b", _ledger(2))
    slots.add("c", _ledger(2))
    assert [slots.reserve() for _ in range(6)] == ["a", "a", "b", "b", "c", "c"]
    assert slots.reserve() is None


def test_full_connection_leaves_the_free_set() -> None:
    slots: OriginSlots[str] = OriginSlots(max_connections=3)
    slots.add("a", _ledger(1))
    slots.reserve()
    assert not slots.has_free("a")
    assert slots.reserve() is None


def test_full_connection_comes_back_on_refresh() -> None:
    slots: OriginSlots[str] = OriginSlots(max_connections=3)
    ledger = _ledger(1)
    slots.add("a", ledger)
    slots.reserve()
    assert slots.reserve() is None  # full: dropped from the free heap
    ledger.opened()
    ledger.closed()
    slots.refresh("a")
    assert slots.reserve() == "a"


def test_connection_back_from_full_is_preferred_over_a_younger_one() -> None:
    slots: OriginSlots[str] = OriginSlots(max_connections=3)
    older = _ledger(1)
    slots.add("old", older)
    slots.add("young", _ledger(5))
    assert slots.reserve() == "old"
    assert slots.reserve() == "young"
    older.unreserve()
    slots.refresh("old")
    assert slots.reserve() == "old"


def test_refresh_of_an_unknown_connection_is_ignored() -> None:
    slots: OriginSlots[str] = OriginSlots(max_connections=3)
    slots.refresh("ghost")
    assert slots.reserve() is None


def test_settle_lowering_the_limit_takes_the_connection_out_of_the_free_set() -> None:
    slots: OriginSlots[str] = OriginSlots(max_connections=3)
    slots.add("a", _ledger(100))
    slots.add("b", _ledger(100))
    slots.reserve()
    slots.settle("a", 1)
    assert slots.reserve() == "b"


def test_settle_updates_unsettled_and_learned_limit() -> None:
    slots: OriginSlots[str] = OriginSlots(max_connections=3)
    slots.add("a", _ledger(100))
    assert (slots.unsettled, slots.learned_limit) == (1, None)
    slots.settle("a", 7)
    assert (slots.unsettled, slots.learned_limit) == (0, 7)
    assert slots.ledgers["a"].peer_limit == 7


def test_settling_twice_counts_the_connection_once() -> None:
    slots: OriginSlots[str] = OriginSlots(max_connections=3)
    slots.add("a", _ledger(100))
    slots.add("b", _ledger(100))
    slots.settle("a", 7)
    slots.settle("a", 9)
    assert slots.unsettled == 1
    assert slots.learned_limit == 9


def test_settle_of_an_unknown_connection_is_ignored() -> None:
    slots: OriginSlots[str] = OriginSlots(max_connections=3)
    slots.settle("ghost", 5)
    assert (slots.learned_limit, slots.unsettled) == (None, 0)


def test_may_dial_with_no_connections() -> None:
    slots: OriginSlots[str] = OriginSlots(max_connections=3)
    assert slots.may_dial()


def test_only_one_unsettled_dial_while_the_limit_is_unknown() -> None:
    slots: OriginSlots[str] = OriginSlots(max_connections=10)
    slots.add("a", _ledger(ASSUMED_PEER_MAX_STREAMS))
    assert not slots.may_dial()


def test_may_dial_again_once_the_first_connection_settles() -> None:
    slots: OriginSlots[str] = OriginSlots(max_connections=10)
    slots.add("a", _ledger(ASSUMED_PEER_MAX_STREAMS))
    slots.settle("a", 2)
    assert slots.may_dial()


def test_several_unsettled_dials_once_the_limit_is_learned() -> None:
    slots: OriginSlots[str] = OriginSlots(max_connections=10)
    slots.add("a", _ledger(100))
    slots.settle("a", 2)
    slots.add("b", _ledger(slots.initial_peer_limit()))
    slots.add("c", _ledger(slots.initial_peer_limit()))
    assert slots.unsettled == 2
    assert slots.may_dial()


def test_unsettled_dial_that_fails_allows_another() -> None:
    slots: OriginSlots[str] = OriginSlots(max_connections=10)
    slots.add("a", _ledger(100))
    slots.remove("a")
    assert slots.unsettled == 0
    assert slots.may_dial()


def test_may_dial_never_beyond_max_connections() -> None:
    slots: OriginSlots[str] = OriginSlots(max_connections=2)
    slots.add("a", _ledger(ASSUMED_PEER_MAX_STREAMS))
    slots.settle("a", 1)
    assert slots.may_dial()
    slots.add("b", _ledger(slots.initial_peer_limit()))
    assert not slots.may_dial()
    slots.settle("b", 1)
    assert not slots.may_dial()


def test_draining_connections_do_not_count_against_max_connections() -> None:
    slots: OriginSlots[str] = OriginSlots(max_connections=1)
    slots.add("a", _ledger(5))
    slots.settle("a", 5)
    assert not slots.may_dial()
    slots.stop_accepting("a")
    assert slots.accepting == 0
    assert slots.may_dial()


def test_stop_accepting_takes_the_connection_out_of_the_free_set() -> None:
    slots: OriginSlots[str] = OriginSlots(max_connections=3)
    slots.add("a", _ledger(5))
    slots.add("b", _ledger(5))
    slots.stop_accepting("a")
    assert slots.reserve() == "b"
    slots.refresh("a")  # a draining connection must not come back
    assert not slots.has_free("a")


def test_stop_accepting_twice_counts_once() -> None:
    slots: OriginSlots[str] = OriginSlots(max_connections=3)
    slots.add("a", _ledger(5))
    slots.add("b", _ledger(5))
    slots.stop_accepting("a")
    slots.stop_accepting("a")
    assert slots.accepting == 1


def test_stop_accepting_an_unknown_connection_is_ignored() -> None:
    slots: OriginSlots[str] = OriginSlots(max_connections=3)
    slots.add("a", _ledger(5))
    slots.stop_accepting("ghost")
    assert slots.accepting == 1


def test_remove_forgets_the_connection_and_its_counts() -> None:
    slots: OriginSlots[str] = OriginSlots(max_connections=3)
    slots.add("a", _ledger(5))
    slots.add("b", _ledger(5))
    slots.remove("a")
    assert list(slots.ledgers) == ["b"]
    assert (slots.accepting, slots.unsettled) == (1, 1)
    assert slots.reserve() == "b"


def test_remove_a_draining_connection_does_not_decrement_accepting_again() -> None:
    slots: OriginSlots[str] = OriginSlots(max_connections=3)
    slots.add("a", _ledger(5))
    slots.add("b", _ledger(5))
    slots.stop_accepting("a")
    slots.remove("a")
    assert slots.accepting == 1


def test_remove_twice_is_harmless() -> None:
    slots: OriginSlots[str] = OriginSlots(max_connections=3)
    slots.add("a", _ledger(5))
    slots.remove("a")
    slots.remove("a")
    assert (slots.accepting, slots.unsettled, len(slots.ledgers)) == (0, 0, 0)


def test_add_counts_a_ledger_that_is_already_settled_or_draining() -> None:
    slots: OriginSlots[str] = OriginSlots(max_connections=3)
    draining = _ledger(5, settled=True)
    draining.accepting = False
    slots.add("a", draining)
    assert (slots.accepting, slots.unsettled) == (0, 0)
    assert slots.reserve() is None


def test_initial_peer_limit_is_the_assumption_until_learned() -> None:
    slots: OriginSlots[str] = OriginSlots(max_connections=3)
    assert slots.initial_peer_limit() == ASSUMED_PEER_MAX_STREAMS


def test_initial_peer_limit_uses_the_learned_limit() -> None:
    slots: OriginSlots[str] = OriginSlots(max_connections=3)
    slots.add("a", _ledger(ASSUMED_PEER_MAX_STREAMS))
    slots.settle("a", 3)
    assert slots.initial_peer_limit() == 3


def test_learned_limit_survives_removing_its_connection() -> None:
    slots: OriginSlots[str] = OriginSlots(max_connections=3)
    slots.add("a", _ledger(ASSUMED_PEER_MAX_STREAMS))
    slots.settle("a", 3)
    slots.remove("a")
    assert slots.initial_peer_limit() == 3


def test_open_streams_and_reserved_sum_over_connections() -> None:
    slots: OriginSlots[str] = OriginSlots(max_connections=3)
    a, b = _ledger(2), _ledger(5)
    slots.add("a", a)
    slots.add("b", b)
    for _ in range(4):
        slots.reserve()
    a.opened()
    b.opened()
    assert (slots.open_streams, slots.reserved) == (2, 2)


# A random walk over the operations the pool performs, checking invariants.

MAX_CONNECTIONS = 3


class OriginSlotsMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.slots: OriginSlots[int] = OriginSlots(MAX_CONNECTIONS)
        self.next_id = 0
        self.removed: list[int] = []

    def _pick(self, index: int, *, where: str = "any") -> int | None:
        candidates = [
            conn
            for conn, ledger in self.slots.ledgers.items()
            if where == "any"
            or (where == "reserved" and ledger.reserved > 0)
            or (where == "openable" and ledger.reserved > 0 and ledger.can_open())
            or (where == "open" and ledger.open > 0)
        ]
        return candidates[index % len(candidates)] if candidates else None

    @rule(local_cap=st.integers(min_value=1, max_value=4))
    def dial(self, local_cap: int) -> None:
        # The pool adds a connection only when may_dial says so.
        if not self.slots.may_dial():
            return
        conn = self.next_id
        self.next_id += 1
        self.slots.add(conn, SlotLedger(local_cap, self.slots.initial_peer_limit()))

    @rule()
    def reserve(self) -> None:
        had_room = {conn for conn, ledger in self.slots.ledgers.items() if ledger.free > 0}
        conn = self.slots.reserve()
        if conn is None:
            assert not had_room
        else:
            assert conn in had_room

    @rule(index=st.integers(min_value=0, max_value=20))
    def unreserve(self, index: int) -> None:
        conn = self._pick(index, where="reserved")
        if conn is not None:
            self.slots.ledgers[conn].unreserve()
            self.slots.refresh(conn)

    @rule(index=st.integers(min_value=0, max_value=20))
    def open_stream(self, index: int) -> None:
        conn = self._pick(index, where="openable")
        if conn is not None:
            self.slots.ledgers[conn].opened()
            self.slots.refresh(conn)

    @rule(index=st.integers(min_value=0, max_value=20))
    def close_stream(self, index: int) -> None:
        conn = self._pick(index, where="open")
        if conn is not None:
            self.slots.ledgers[conn].closed()
            self.slots.refresh(conn)

    @precondition(lambda self: bool(self.slots.ledgers))
    @rule(index=st.integers(min_value=0, max_value=20), limit=st.integers(min_value=0, max_value=5))
    def settle(self, index: int, limit: int) -> None:
        conn = self._pick(index)
        assert conn is not None
        self.slots.settle(conn, limit)
        assert self.slots.learned_limit == limit

    @precondition(lambda self: bool(self.slots.ledgers))
    @rule(index=st.integers(min_value=0, max_value=20))
    def stop_accepting(self, index: int) -> None:
        conn = self._pick(index)
        assert conn is not None
        self.slots.stop_accepting(conn)
        assert self.slots.ledgers[conn].free == 0

    @precondition(lambda self: bool(self.slots.ledgers))
    @rule(index=st.integers(min_value=0, max_value=20))
    def remove(self, index: int) -> None:
        conn = self._pick(index)
        assert conn is not None
        self.slots.remove(conn)
        self.removed.append(conn)

    @precondition(lambda self: bool(self.removed))
    @rule(index=st.integers(min_value=0, max_value=20))
    def touch_removed(self, index: int) -> None:
        # Late callbacks for a connection already gone must change nothing.
        conn = self.removed[index % len(self.removed)]
        self.slots.refresh(conn)
        self.slots.settle(conn, 1)
        self.slots.stop_accepting(conn)
        self.slots.remove(conn)
        assert conn not in self.slots.ledgers
        assert conn not in self.slots.ledgers

    @invariant()
    def ledgers_never_go_negative(self) -> None:
        for ledger in self.slots.ledgers.values():
            assert ledger.free >= 0
            assert ledger.reserved >= 0
            assert ledger.open >= 0

    @invariant()
    def free_set_matches_ledgers(self) -> None:
        with_free = {conn for conn, ledger in self.slots.ledgers.items() if ledger.free > 0}
        assert {conn for conn in self.slots.ledgers if self.slots.has_free(conn)} == with_free

    @invariant()
    def counters_match_recomputed_values(self) -> None:
        ledgers = self.slots.ledgers.values()
        assert self.slots.accepting == sum(ledger.accepting for ledger in ledgers)
        assert self.slots.unsettled == sum(not ledger.settled for ledger in ledgers)
        assert self.slots.open_streams == sum(ledger.open for ledger in ledgers)
        assert self.slots.reserved == sum(ledger.reserved for ledger in ledgers)

    @invariant()
    def dialling_stays_within_bounds(self) -> None:
        assert self.slots.accepting <= MAX_CONNECTIONS
        if self.slots.accepting >= MAX_CONNECTIONS:
            assert not self.slots.may_dial()
        if self.slots.learned_limit is None:
            assert self.slots.unsettled <= 1


OriginSlotsMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=40, deadline=None, database=None)
TestOriginSlotsMachine = OriginSlotsMachine.TestCase
