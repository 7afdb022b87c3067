"""The receive-window policy of h2pool/windows.py, with no sockets and no event loop.

``BdpEstimator`` is fed DATA sizes and clock readings by hand, so each test
plays one round trip of a transfer exactly; ``WindowBudget`` is plain
arithmetic over the bytes a pool may advertise.
"""

from __future__ import annotations

import itertools

import pytest

from h2pool.windows import MIN_CONNECTION_WINDOW, SAMPLE_AFTER, SAMPLE_MIN_BYTES, BdpEstimator, WindowBudget

KIB = 1024
MIB = 1024 * KIB
FRAME = 16 * KIB


def feed(bdp: BdpEstimator, total: int, frame: int = FRAME) -> list[bool]:
    """Deliver ``total`` bytes as DATA frames of ``frame`` bytes; what ``on_data`` said for each."""
    answers = []
    for start in range(0, total, frame):
        answers.append(bdp.on_data(min(frame, total - start)))
    return answers


def sample_threshold(window: int) -> int:
    return max(window // SAMPLE_AFTER, SAMPLE_MIN_BYTES)


def start_sample(bdp: BdpEstimator, at: float = 10.0) -> None:
    """Deliver enough DATA that a sample starts, and send its PING at ``at``."""
    assert feed(bdp, sample_threshold(bdp.window))[-1] is True
    bdp.pinged(at)


# BdpEstimator


def test_no_sample_before_an_eighth_of_the_window_has_arrived() -> None:
    bdp = BdpEstimator(window=MIB, cap=16 * MIB)

    assert feed(bdp, 128 * KIB - 1, frame=1000) == [False] * 132


def test_sample_starts_once_an_eighth_of_the_window_has_arrived() -> None:
    bdp = BdpEstimator(window=MIB, cap=16 * MIB)

    answers = feed(bdp, 128 * KIB)

    assert answers == [False] * 7 + [True]


def test_small_windows_wait_for_at_least_64_kib_before_sampling() -> None:
    bdp = BdpEstimator(window=128 * KIB, cap=16 * MIB)

    assert feed(bdp, 64 * KIB - 1, frame=1000) == [False] * 66
    assert bdp.on_data(1) is True


def test_small_responses_start_no_sample() -> None:
    # A hundred 100-byte responses: 10 KB, far below the 64 KiB minimum.
    bdp = BdpEstimator(window=65_535, cap=16 * MIB)

    assert not any(bdp.on_data(100) for _ in range(100))


def test_only_one_sample_at_a_time() -> None:
    bdp = BdpEstimator(window=128 * KIB, cap=16 * MIB)
    start_sample(bdp)

    # Several windows' worth arrives before the ACK: still no second PING.
    assert not any(feed(bdp, 4 * bdp.window))


def test_next_sample_needs_as_much_data_again_after_the_ack() -> None:
    bdp = BdpEstimator(window=128 * KIB, cap=16 * MIB)
    start_sample(bdp)
    # A small sample: the window stays, and sampling starts over from zero.
    assert bdp.on_ack(10.04) is None

    answers = feed(bdp, 64 * KIB)

    assert answers == [False, False, False, True]


def test_consumption_of_a_window_in_the_round_trip_grows_it_sixteenfold() -> None:
    window = 128 * KIB
    bdp = BdpEstimator(window=window, cap=16 * MIB)
    start_sample(bdp)
    bdp.on_consumed(window)

    assert bdp.on_ack(10.04) == 16 * window
    assert bdp.window == 16 * window


def test_two_thirds_of_the_window_consumed_in_half_a_known_round_trip_grows_it_at_once() -> None:
    bdp = BdpEstimator(window=MIB, cap=16 * MIB)
    bdp.seed_rtt(0.04)
    start_sample(bdp, at=10.0)

    assert bdp.on_consumed(MIB // 2, now=10.002) is None
    assert bdp.on_consumed(MIB // 4, now=10.004) == 16 * MIB
    assert bdp.window == 16 * MIB


def test_without_a_known_round_trip_a_sample_waits_for_its_ack() -> None:
    bdp = BdpEstimator(window=MIB, cap=16 * MIB)
    start_sample(bdp, at=10.0)

    assert bdp.on_consumed(MIB, now=10.001) is None
    assert bdp.on_ack(10.04) == 16 * MIB


def test_consumption_slower_than_half_a_round_trip_waits_for_the_ack() -> None:
    bdp = BdpEstimator(window=MIB, cap=16 * MIB)
    bdp.seed_rtt(0.04)
    start_sample(bdp, at=10.0)

    assert bdp.on_consumed(MIB, now=10.025) is None
    assert bdp.window == MIB
    assert bdp.on_ack(10.04) == 16 * MIB


def test_the_ack_after_an_early_growth_grows_nothing_more_and_times_the_round_trip() -> None:
    bdp = BdpEstimator(window=64 * KIB, cap=64 * MIB)
    bdp.seed_rtt(0.04)
    start_sample(bdp, at=10.0)
    assert bdp.on_consumed(64 * KIB, now=10.001) == MIB
    assert bdp.on_consumed(64 * KIB, now=10.002) is None

    assert bdp.on_ack(10.05) is None
    assert bdp.window == MIB
    assert bdp.rtt == pytest.approx(0.05)
    # The next sample starts afresh and may grow the window again.
    start_sample(bdp, at=11.0)
    assert bdp.on_consumed(MIB, now=11.001) == 16 * MIB


def test_a_seeded_round_trip_never_replaces_a_measured_one() -> None:
    bdp = BdpEstimator(window=128 * KIB, cap=16 * MIB)
    start_sample(bdp, at=5.0)
    bdp.on_ack(5.25)

    bdp.seed_rtt(0.001)
    assert bdp.rtt == pytest.approx(0.25)


def test_arrivals_that_nobody_reads_do_not_grow_the_window() -> None:
    # A consumer that does not read: whole windows arrive and sit buffered.
    window = 128 * KIB
    bdp = BdpEstimator(window=window, cap=16 * MIB)
    start_sample(bdp)
    feed(bdp, 4 * window)

    assert bdp.on_ack(10.04) is None
    assert bdp.window == window


def test_consumption_of_two_thirds_of_the_window_is_window_limited() -> None:
    window = 96 * KIB
    bdp = BdpEstimator(window=window, cap=16 * MIB)
    start_sample(bdp)
    bdp.on_consumed(64 * KIB)

    assert bdp.on_ack(10.04) == 16 * window


def test_consumption_below_two_thirds_of_the_window_does_not_grow_it() -> None:
    window = 96 * KIB
    bdp = BdpEstimator(window=window, cap=16 * MIB)
    start_sample(bdp)
    bdp.on_consumed(64 * KIB - 1)

    assert bdp.on_ack(10.04) is None
    assert bdp.window == window


def test_consumption_before_a_sample_is_not_counted() -> None:
    window = 96 * KIB
    bdp = BdpEstimator(window=window, cap=16 * MIB)
    bdp.on_consumed(10 * window)
    start_sample(bdp)

    assert bdp.on_ack(10.04) is None


def test_large_sample_grows_the_window_from_the_sample() -> None:
    bdp = BdpEstimator(window=64 * KIB, cap=16 * MIB)
    start_sample(bdp)
    # The peer had more window than the stream's (several streams, or a
    # SETTINGS change in flight): 224 KiB consumed in the round trip.
    bdp.on_consumed(224 * KIB)

    assert bdp.on_ack(10.04) == 16 * 224 * KIB


def test_growth_is_capped() -> None:
    bdp = BdpEstimator(window=1 * MIB, cap=1536 * KIB)
    start_sample(bdp)
    bdp.on_consumed(4 * MIB)

    assert bdp.on_ack(10.04) == 1536 * KIB
    assert bdp.window == 1536 * KIB


def test_no_samples_once_the_window_is_at_the_cap() -> None:
    bdp = BdpEstimator(window=1 * MIB, cap=2 * MIB)
    start_sample(bdp)
    bdp.on_consumed(2 * MIB)
    assert bdp.on_ack(10.04) == 2 * MIB

    assert not any(feed(bdp, 16 * MIB))


def test_window_configured_above_the_cap_is_never_sampled() -> None:
    bdp = BdpEstimator(window=4 * MIB, cap=1 * MIB)

    assert not any(feed(bdp, 16 * MIB))


def test_round_trip_of_the_sample_is_recorded() -> None:
    bdp = BdpEstimator(window=128 * KIB, cap=16 * MIB)
    assert bdp.rtt is None
    start_sample(bdp, at=100.0)

    bdp.on_ack(100.0375)

    assert bdp.rtt == pytest.approx(0.0375)


def test_round_trip_is_recorded_even_when_the_window_stays() -> None:
    bdp = BdpEstimator(window=128 * KIB, cap=16 * MIB)
    start_sample(bdp, at=5.0)

    assert bdp.on_ack(5.25) is None
    assert bdp.rtt == pytest.approx(0.25)


def test_ack_without_a_sample_in_flight_is_ignored() -> None:
    bdp = BdpEstimator(window=128 * KIB, cap=16 * MIB)
    feed(bdp, 32 * KIB)

    assert bdp.on_ack(1.0) is None
    assert bdp.rtt is None
    assert bdp.window == 128 * KIB


def test_repeated_window_limited_round_trips_reach_the_cap() -> None:
    # Window-limited: the consumer takes a whole window between each PING and
    # its ACK. Each step costs two round trips (sample, then SETTINGS), so
    # 64 KiB reaches 16 MiB in two steps.
    bdp = BdpEstimator(window=64 * KIB, cap=16 * MIB)
    windows = [bdp.window]
    now = 0.0
    for _ in range(20):
        if bdp.window >= 16 * MIB:
            break
        start_sample(bdp, at=now)
        bdp.on_consumed(bdp.window)
        now += 0.04
        assert bdp.on_ack(now) is not None
        windows.append(bdp.window)

    assert windows == [64 * KIB, MIB, 16 * MIB]
    assert all(later >= earlier for earlier, later in itertools.pairwise(windows))


# WindowBudget


def test_grant_within_the_limit_gives_what_was_asked() -> None:
    budget = WindowBudget(limit=4 * MIB)

    assert budget.grant(1 * MIB) == 1 * MIB
    assert budget.allocated == 1 * MIB


def test_grant_is_cut_to_what_is_left() -> None:
    budget = WindowBudget(limit=4 * MIB)
    budget.grant(3 * MIB)

    assert budget.grant(2 * MIB) == 1 * MIB
    assert budget.allocated == 4 * MIB


def test_grant_beyond_the_limit_without_a_floor_gives_nothing() -> None:
    budget = WindowBudget(limit=4 * MIB)
    budget.grant(4 * MIB)

    assert budget.grant(1 * MIB) == 0
    assert budget.allocated == 4 * MIB


def test_floor_is_honoured_beyond_the_limit() -> None:
    # Every connection holds the RFC's 65,535 bytes whatever the budget says.
    budget = WindowBudget(limit=4 * MIB)
    budget.grant(4 * MIB)

    assert budget.grant(16 * MIB, floor=MIN_CONNECTION_WINDOW) == MIN_CONNECTION_WINDOW
    assert budget.grant(16 * MIB, floor=MIN_CONNECTION_WINDOW) == MIN_CONNECTION_WINDOW
    assert budget.allocated == 4 * MIB + 2 * MIN_CONNECTION_WINDOW


def test_floor_does_not_cap_a_larger_grant() -> None:
    budget = WindowBudget(limit=4 * MIB)

    assert budget.grant(1 * MIB, floor=MIN_CONNECTION_WINDOW) == 1 * MIB


def test_give_back_frees_budget_for_later_grants() -> None:
    budget = WindowBudget(limit=4 * MIB)
    first = budget.grant(4 * MIB)

    budget.give_back(first)

    assert budget.allocated == 0
    assert budget.grant(4 * MIB) == 4 * MIB


def test_give_back_after_overcommit_restores_the_rest() -> None:
    budget = WindowBudget(limit=1 * MIB)
    whole = budget.grant(1 * MIB)
    floor = budget.grant(1 * MIB, floor=MIN_CONNECTION_WINDOW)

    budget.give_back(whole)

    assert budget.allocated == floor
    assert budget.available == 1 * MIB - floor


def test_give_back_never_goes_below_zero() -> None:
    budget = WindowBudget(limit=1 * MIB)
    budget.grant(100)

    budget.give_back(1 * MIB)

    assert budget.allocated == 0
    assert budget.available == 1 * MIB


def test_available_is_what_is_left_and_never_negative() -> None:
    budget = WindowBudget(limit=1 * MIB)
    assert budget.available == 1 * MIB
    budget.grant(256 * KIB)
    assert budget.available == 768 * KIB
    budget.grant(768 * KIB)
    budget.grant(0, floor=MIN_CONNECTION_WINDOW)

    assert budget.allocated > budget.limit
    assert budget.available == 0
