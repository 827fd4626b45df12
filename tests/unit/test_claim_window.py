"""The node's claim window: slots plus a short look-ahead of short tasks, never of long ones."""

from __future__ import annotations

from phage.node.window import LOOKAHEAD_S, MAX_HELD, RECENT_S, ClaimWindow


def test_holds_only_its_slots_until_it_has_seen_a_task() -> None:
    assert ClaimWindow(4).size() == 4


def test_no_op_tasks_open_the_window_to_its_bound() -> None:
    window = ClaimWindow(4)
    window.record(0.0)
    assert window.size() == MAX_HELD


def test_short_tasks_add_a_quarter_second_of_look_ahead() -> None:
    window = ClaimWindow(4)
    for _ in range(20):
        window.record(0.05)
    assert window.size() == 4 + int(4 * LOOKAHEAD_S / 0.05)


def test_one_long_task_closes_the_window_at_once_and_short_ones_reopen_it_gradually() -> None:
    window = ClaimWindow(4)
    window.record(0.0)
    window.record(30.0)
    assert window.size() == 4, "no look-ahead behind a long task"
    sizes = []
    for _ in range(40):
        window.record(0.01)
        sizes.append(window.size())
    assert sizes == sorted(sizes) and sizes[0] == 4 and sizes[-1] > 4


def test_slots_bound_the_window_from_below_and_max_held_from_above() -> None:
    window = ClaimWindow(300)
    window.record(0.0)
    assert window.size() == 300
    assert ClaimWindow(0).size() == 1


def test_a_task_running_past_the_estimate_closes_the_window_before_it_ends() -> None:
    window = ClaimWindow(4)
    for _ in range(10):
        window.record(0.02)
    assert window.size() > 40
    assert window.size(running_for=0.01) == window.size(), "a task within the estimate changes nothing"
    assert window.size(running_for=5.0) == 4


def test_after_a_quiet_spell_a_node_takes_only_its_slots() -> None:
    window = ClaimWindow(4)
    window.record(0.01, now=100.0)
    assert window.size(now=100.0 + RECENT_S / 2) > 4
    assert window.size(now=100.0 + RECENT_S * 2) == 4, "no look-ahead on stale evidence"
    window.record(0.01, now=200.0)
    assert window.size(now=200.0) > 4, "the next finished task reopens it"
