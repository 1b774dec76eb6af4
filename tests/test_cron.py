"""Cron expressions in a time zone: the ticks they give, across DST changes. No Redis."""
from __future__ import annotations

import os
import random
import time
import warnings
from datetime import datetime, timedelta, timezone

import pytest
from crontab import CronTab

from service.schedules.cron import Cron, InvalidCron, InvalidZone

UTC = timezone.utc


def ticks(expression: str, zone: str, start: datetime, count: int) -> list[datetime]:
    cron, found, moment = Cron(expression, zone), [], start
    for _ in range(count):
        moment = cron.next_after(moment)
        found.append(moment)
    return found


def local(moments: list[datetime], zone: str) -> list[str]:
    from zoneinfo import ZoneInfo

    return [m.astimezone(ZoneInfo(zone)).strftime("%m-%d %H:%M:%S%z") for m in moments]


@pytest.fixture
def process_zone():
    """Run a test with the process in another local time zone than the schedules'."""
    original = os.environ.get("TZ")

    def set_zone(name: str) -> None:
        os.environ["TZ"] = name
        time.tzset()

    yield set_zone
    if original is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = original
    time.tzset()


@pytest.mark.parametrize("process_tz", ["UTC", "America/Los_Angeles", "Asia/Kolkata"])
def test_tokyo_nine_oclock_is_midnight_utc_whatever_the_process_zone(process_zone, process_tz):
    process_zone(process_tz)
    fired = ticks("0 9 * * *", "Asia/Tokyo", datetime(2025, 6, 1, 12, tzinfo=UTC), 3)
    assert fired == [datetime(2025, 6, d, 0, 0, tzinfo=UTC) for d in (2, 3, 4)]


def test_berlin_daily_in_the_skipped_hour_fires_once_that_day_an_hour_later():
    # 2025-03-30: 02:00 CET -> 03:00 CEST, so 02:30 does not exist that day.
    fired = ticks("30 2 * * *", "Europe/Berlin", datetime(2025, 3, 28, 12, tzinfo=UTC), 4)
    assert local(fired, "Europe/Berlin") == [
        "03-29 02:30:00+0100",
        "03-30 03:30:00+0200",
        "03-31 02:30:00+0200",
        "04-01 02:30:00+0200",
    ]


def test_berlin_daily_in_the_repeated_hour_fires_once_at_the_first_occurrence():
    # 2025-10-26: 03:00 CEST -> 02:00 CET, so 02:30 happens twice.
    fired = ticks("30 2 * * *", "Europe/Berlin", datetime(2025, 10, 24, 12, tzinfo=UTC), 3)
    assert fired == [
        datetime(2025, 10, 25, 0, 30, tzinfo=UTC),
        datetime(2025, 10, 26, 0, 30, tzinfo=UTC),  # 02:30 CEST, not again at 02:30 CET
        datetime(2025, 10, 27, 1, 30, tzinfo=UTC),
    ]


@pytest.mark.parametrize(
    "start, expected",
    [
        # 2025-03-09: 02:00 EST -> 03:00 EDT
        (datetime(2025, 3, 7, 12, tzinfo=UTC), ["03-08 02:30:00-0500", "03-09 03:30:00-0400", "03-10 02:30:00-0400"]),
        # 2025-11-02: 02:00 EDT -> 01:00 EST; 02:30 exists once
        (datetime(2025, 10, 31, 12, tzinfo=UTC), ["11-01 02:30:00-0400", "11-02 02:30:00-0500", "11-03 02:30:00-0500"]),
    ],
)
def test_new_york_daily_fires_once_a_day_across_both_changes(start, expected):
    fired = ticks("30 2 * * *", "America/New_York", start, 3)
    assert local(fired, "America/New_York") == expected


def test_new_york_repeated_wall_time_fires_once():
    fired = ticks("30 1 * * *", "America/New_York", datetime(2025, 11, 1, 12, tzinfo=UTC), 2)
    assert fired == [datetime(2025, 11, 2, 5, 30, tzinfo=UTC), datetime(2025, 11, 3, 6, 30, tzinfo=UTC)]


def test_a_daily_job_fires_exactly_once_per_local_day_for_a_whole_year():
    for zone in ("Europe/Berlin", "America/New_York", "Australia/Lord_Howe"):
        for expression in ("30 2 * * *", "0 1 * * *", "59 2 * * *", "0 9 * * *"):
            fired = ticks(expression, zone, datetime(2025, 1, 1, tzinfo=UTC), 365)
            days = [m.astimezone(Cron(expression, zone).zone).date() for m in fired]
            assert len(set(days)) == 365, (zone, expression)
            assert all(b > a for a, b in zip(fired, fired[1:]))


def test_an_every_hour_expression_keeps_real_time_rhythm_across_changes():
    # Fall back: 01:30 happens twice and fires twice; spring forward: 02:30 does not exist.
    fired = ticks("30 * * * *", "America/New_York", datetime(2025, 11, 2, 4, tzinfo=UTC), 4)
    assert [m.hour for m in fired] == [4, 5, 6, 7]
    fired = ticks("30 * * * *", "Europe/Berlin", datetime(2025, 3, 30, 0, tzinfo=UTC), 3)
    assert [m.hour for m in fired] == [0, 1, 2]


def test_seconds_resolution_runs_straight_through_a_repeated_hour():
    fired = ticks("* * * * * * *", "America/New_York", datetime(2025, 11, 2, 5, 59, 58, tzinfo=UTC), 3)
    assert fired == [datetime(2025, 11, 2, 5, 59, 59, tzinfo=UTC) + timedelta(seconds=n) for n in range(3)]


def test_a_skipped_wall_time_still_fires_when_asked_just_after_the_change():
    cron = Cron("30 2 * * *", "Europe/Berlin")
    after_change = datetime(2025, 3, 30, 1, 10, tzinfo=UTC)  # 03:10 CEST
    assert cron.next_after(after_change) == datetime(2025, 3, 30, 1, 30, tzinfo=UTC)


def test_a_wall_time_already_passed_in_the_repeated_hour_waits_for_the_next_day():
    cron = Cron("45 1 * * *", "America/New_York")
    second_pass = datetime(2025, 11, 2, 6, 50, tzinfo=UTC)  # 01:50 EST, after 01:45 EDT fired
    assert cron.next_after(second_pass) == datetime(2025, 11, 3, 6, 45, tzinfo=UTC)


def test_last_tick_and_previous_ticks():
    cron = Cron("0 * * * *", "UTC")
    end = int(datetime(2025, 1, 2, 10, 30, tzinfo=UTC).timestamp())
    start = int(datetime(2025, 1, 1, tzinfo=UTC).timestamp())
    assert cron.last_tick(end, start) == int(datetime(2025, 1, 2, 10, tzinfo=UTC).timestamp())
    assert cron.last_tick(start + 10, start + 1) is None
    previous = cron.previous_ticks(end, start, 3)
    assert [datetime.fromtimestamp(t, UTC).hour for t in previous] == [8, 9, 10]


def test_matches_crontab_itself_on_random_expressions():
    rng = random.Random(1)

    def field(low, high):
        kind = rng.random()
        if kind < 0.3:
            return "*"
        if kind < 0.5:
            return f"*/{rng.randint(1, 20)}"
        if kind < 0.7:
            a = rng.randint(low, high)
            return f"{a}-{rng.randint(a, high)}"
        return ",".join(str(rng.randint(low, high)) for _ in range(rng.randint(1, 3)))

    checked = 0
    while checked < 300:
        expression = " ".join(
            [field(0, 59), field(0, 59), field(0, 23), rng.choice(["*", "L", field(1, 28)]), field(1, 12), field(0, 6), "*"]
        )
        try:
            cron = Cron(expression, "UTC")
        except InvalidCron:
            continue
        start = datetime(2025, 1, 1) + timedelta(seconds=rng.randint(0, 365 * 86400))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = CronTab(expression).next(now=start, default_utc=True, return_datetime=True)
        assert cron.next_after(start.replace(tzinfo=UTC)) == expected.replace(tzinfo=UTC), expression
        checked += 1


@pytest.mark.parametrize("expression", ["", "61 * * * *", "* * *", "0 0 30 2 *", "every day"])
def test_bad_expressions_are_refused(expression):
    with pytest.raises(InvalidCron):
        Cron(expression, "UTC")


@pytest.mark.parametrize("name", ["Mars/Olympus", "", "../etc/passwd", " UTC", "Europe/"])
def test_bad_zones_are_refused(name):
    with pytest.raises(InvalidZone):
        Cron("* * * * *", name)
