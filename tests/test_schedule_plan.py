"""Missed-run policies: what runs when a schedule is found late. No Redis."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from service.schedules.cron import Cron
from service.schedules.plan import plan

HOURLY = Cron("0 * * * *", "UTC")


def at(hour: int, minute: int = 0, second: int = 0, day: int = 1) -> int:
    return int(datetime(2025, 1, day, hour, minute, second, tzinfo=timezone.utc).timestamp())


@pytest.mark.parametrize("missed", ["skip", "once", "all"])
def test_an_on_time_tick_runs_whatever_the_policy(missed):
    decision = plan(HOURLY, due=at(9), now=at(9, 0, 1), missed=missed)
    assert decision.run == [at(9)]
    assert decision.next == at(10)
    assert decision.dropped == 0


def test_a_tick_a_little_late_under_load_still_runs():
    assert plan(HOURLY, due=at(9), now=at(9, 0, 50), missed="skip").run == [at(9)]


def test_skip_drops_ticks_missed_while_no_scheduler_ran():
    decision = plan(HOURLY, due=at(9), now=at(12, 30), missed="skip")
    assert decision.run == []
    assert decision.next == at(13)
    assert decision.dropped == 4  # 09:00 to 12:00


def test_once_runs_one_catch_up_for_the_latest_missed_tick():
    decision = plan(HOURLY, due=at(9), now=at(12, 30), missed="once")
    assert decision.run == [at(12)]
    assert decision.next == at(13)
    assert decision.dropped == 3


def test_once_adds_nothing_when_an_on_time_tick_runs_anyway():
    assert plan(HOURLY, due=at(9), now=at(12, 0, 5), missed="once").run == [at(12)]


def test_all_runs_every_missed_tick_oldest_first():
    decision = plan(HOURLY, due=at(9), now=at(12, 30), missed="all")
    assert decision.run == [at(9), at(10), at(11), at(12)]
    assert decision.dropped == 0


def test_all_is_bounded_to_the_latest_ticks():
    decision = plan(HOURLY, due=at(0), now=at(23, 30, day=5), missed="all", limit=10)
    assert len(decision.run) == 10
    assert decision.run[-1] == at(23, day=5)
    assert decision.run == sorted(decision.run)
    assert decision.dropped > 0


def test_per_second_ticks_late_within_grace_all_run():
    every_second = Cron("* * * * * * *", "UTC")
    decision = plan(every_second, due=at(9), now=at(9, 0, 3), missed="skip")
    assert decision.run == [at(9), at(9, 0, 1), at(9, 0, 2), at(9, 0, 3)]
    assert decision.next == at(9, 0, 4)


def test_on_time_ticks_beyond_one_looks_limit_run_in_the_next_look_not_dropped():
    every_second = Cron("* * * * * * *", "UTC")
    # SCHEDULER_INTERVAL=60 gives a grace of 120 s: 121 on-time ticks, 100 a look.
    first = plan(every_second, due=at(9), now=at(9, 2), missed="skip", grace=120, limit=100)
    assert first.run == list(range(at(9), at(9, 1, 40)))
    assert first.next == at(9, 1, 40)
    second = plan(every_second, due=first.next, now=at(9, 2), missed="skip", grace=120, limit=100)
    assert second.run == list(range(at(9, 1, 40), at(9, 2) + 1))
    assert second.next == at(9, 2, 1)
    assert first.dropped == second.dropped == 0
