"""The scheduler against a real Redis, with an injected clock: no waiting for real minutes."""
from __future__ import annotations

import threading
import warnings
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest

from service.queues import fetch_job, job_registry
from service.schedules import Schedule, ServiceScheduler, store, sync, tick_id, validate
from service.schedules.definition import template_id

UTC = timezone.utc


class Clock:
    """A clock that moves only when told to."""

    def __init__(self, start: datetime):
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta) -> datetime:
        self.now += timedelta(**delta)
        return self.now


@pytest.fixture
def clock():
    return Clock(datetime(2025, 1, 6, 8, 59, 30, tzinfo=UTC))


@pytest.fixture
def declare(connection, settings, clock):
    def run(*schedules: Schedule):
        return sync(connection, list(schedules), registry=job_registry(), settings=settings, now=clock())

    return run


@pytest.fixture
def scheduler(connection, clock):
    return ServiceScheduler(connection, clock=clock)


def queued(connection, queue: str = "default") -> list[str]:
    return [item.decode() for item in connection.lrange(f"rq:queue:{queue}", 0, -1)]


def stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def test_a_tick_is_one_rq_job_with_its_own_id_and_it_runs(connection, declare, scheduler, clock, work):
    declare(Schedule(name="nine", job="demo.add", cron="0 9 * * *", args=[20, 22]))
    assert scheduler.enqueue_jobs() == 0  # 08:59:30, not due yet
    clock.advance(seconds=30)
    assert scheduler.enqueue_jobs() == 1
    assert queued(connection) == ["schedule-nine-20250106T090000Z"]
    assert scheduler.enqueue_jobs() == 0

    work()
    job = fetch_job("schedule-nine-20250106T090000Z", connection)
    assert job.get_status().value == "finished"
    assert job.return_value() == 42
    assert job.meta == {"schedule": "nine", "tick": "2025-01-06T09:00:00Z"}
    stored = store.get(connection, "nine")
    assert stored.last_job_id == job.id
    assert stored.next_tick == int(datetime(2025, 1, 7, 9, tzinfo=UTC).timestamp())


def test_tick_jobs_get_the_options_of_any_enqueued_job(connection, declare, scheduler, clock, settings):
    declare(Schedule(name="nine", job="demo.add", cron="0 9 * * *", args=[1, 2], queue="high"))
    clock.advance(seconds=30)
    scheduler.enqueue_jobs()
    job = fetch_job(queued(connection, "high")[0], connection)
    assert job.origin == "high"
    assert job.timeout == settings.job_timeout
    assert job.result_ttl == settings.result_ttl
    assert job.retries_left == 3  # the default retry policy of POST /jobs
    assert job.get_status().value == "queued"
    # Listed by the jobs API like any other job.
    assert connection.zscore("jobservice:jobs", job.id) is not None


def test_two_schedulers_that_read_the_same_due_tick_enqueue_it_once(connection, declare, clock):
    declare(*[Schedule(name=f"s{i}", job="demo.add", cron="0 9 * * *", args=[i, i]) for i in range(20)])
    clock.advance(seconds=30)
    first, second = ServiceScheduler(connection, clock=clock), ServiceScheduler(connection, clock=clock)
    rows = [(m.decode(), int(s)) for m, s in connection.zrangebyscore(first.scheduled_jobs_key, "-inf", "+inf", withscores=True)]
    # Both read the same due entries before either fires them: the script decides.
    assert first._fire_due(rows, clock()) == 20
    assert second._fire_due(rows, clock()) == 0
    assert sorted(queued(connection)) == sorted(tick_id(f"s{i}", int(clock().timestamp())) for i in range(20))


def test_three_schedulers_in_parallel_fire_a_burst_once(connection, redis_url, settings, clock):
    from redis import Redis

    due = clock.now + timedelta(seconds=30)
    expression = f"{due.second} {due.minute} {due.hour} * * * *"
    count = 1500
    burst = [
        validate(Schedule(name=f"b{i}", job="demo.add", cron=expression, args=[i, 1]), registry=job_registry(), settings=settings)
        for i in range(count)
    ]
    store.save_many(connection, burst, source=store.API, now=clock())
    clock.advance(seconds=30)
    schedulers = [ServiceScheduler(Redis.from_url(redis_url), clock=clock) for _ in range(3)]
    for each in schedulers:
        each.batch_size = 100
    threads = [threading.Thread(target=each.enqueue_jobs) for each in schedulers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    counts = Counter(queued(connection))
    assert len(counts) == count
    assert set(counts.values()) == {1}


def test_a_save_that_read_the_schedule_before_a_tick_fired_is_redone(connection, declare, scheduler, clock, settings):
    schedule = Schedule(name="s", job="demo.add", cron="0 9 * * *", args=[1, 1])
    declare(schedule)
    valid = validate(schedule, registry=job_registry(), settings=settings)
    old = store.decode(connection.hgetall(store.state_key("s")))
    score = connection.zscore(store.SCHEDULED, template_id("s"))
    clock.advance(seconds=30)
    args, _ = store._plan_write(valid, old, score, source=store.DECLARED, now=clock())
    assert scheduler.enqueue_jobs() == 1  # the tick fires between the read and the write
    write = connection.register_script(store._WRITE)
    keys = [store.state_key("s"), store.template_key("s"), store.SCHEDULED, store.NAMES]
    assert write(keys=keys, args=args + ["data", b"x"]) == 0  # refused: it would fire 09:00 again
    declare(schedule)
    assert store.get(connection, "s").next_tick == int(datetime(2025, 1, 7, 9, tzinfo=UTC).timestamp())
    assert scheduler.enqueue_jobs() == 0


def test_a_restart_with_the_same_file_neither_duplicates_a_schedule_nor_fires_a_tick_again(
    connection, declare, scheduler, clock
):
    schedule = Schedule(name="nine", job="demo.add", cron="0 9 * * *", args=[1, 2])
    declare(schedule)
    clock.advance(seconds=30, microseconds=200_000)
    assert scheduler.enqueue_jobs() == 1
    report = declare(schedule)  # restart in the same second as the tick
    assert report.unchanged == ["nine"]
    restarted = ServiceScheduler(connection, clock=clock)
    assert restarted.enqueue_jobs() == 0
    assert queued(connection) == ["schedule-nine-20250106T090000Z"]
    assert connection.zcard(restarted.scheduled_jobs_key) == 1
    assert store.names(connection) == {"nine"}


def test_a_changed_expression_counts_from_now_and_never_refires_the_last_tick(connection, declare, scheduler, clock):
    declare(Schedule(name="s", job="demo.add", cron="0 9 * * *", args=[1, 2]))
    clock.advance(seconds=30)
    scheduler.enqueue_jobs()
    report = declare(Schedule(name="s", job="demo.add", cron="0 9,21 * * *", args=[1, 2]))
    assert report.updated == ["s"]
    assert store.get(connection, "s").next_tick == int(datetime(2025, 1, 6, 21, tzinfo=UTC).timestamp())


def test_a_schedule_removed_from_the_file_is_removed_and_runtime_ones_stay(connection, declare, clock, settings):
    declare(Schedule(name="a", job="demo.tick", cron="* * * * *"), Schedule(name="b", job="demo.tick", cron="* * * * *"))
    runtime = validate(Schedule(name="r", job="demo.tick", cron="*/5 * * * *"), registry=job_registry(), settings=settings)
    store.save(connection, runtime, source=store.API, now=clock())
    report = declare(Schedule(name="a", job="demo.tick", cron="* * * * *"))
    assert report.removed == ["b"]
    assert store.names(connection) == {"a", "r"}
    assert not connection.exists("rq:job:schedule-b")
    assert connection.zscore(store.SCHEDULED, template_id("b")) is None


@pytest.mark.parametrize(
    "bad, words",
    [
        (Schedule(name="bad", job="demo.nope", cron="* * * * *"), "no job called 'demo.nope'"),
        (Schedule(name="bad", job="demo.add", cron="* * * * *", args=["x", 1]), "Input should be a valid"),
        (Schedule(name="bad", job="demo.tick", cron="* * * * *", timezone="Mars/Olympus"), "Mars/Olympus"),
    ],
)
def test_a_bad_declared_schedule_stops_the_sync_before_anything_is_written(connection, declare, bad, words):
    from service.schedules import InvalidSchedule

    with pytest.raises(InvalidSchedule) as refused:
        declare(Schedule(name="good", job="demo.tick", cron="* * * * *"), bad)
    assert "'bad'" in refused.value.problem and words in refused.value.problem
    assert connection.dbsize() == 0


def test_the_scheduler_process_refuses_a_bad_file_and_says_why(redis_url, connection, tmp_path):
    import subprocess
    import sys

    from tests import processes

    bad = tmp_path / "schedules.toml"
    bad.write_text('[[schedule]]\nname = "x"\njob = "demo.nope"\ncron = "* * * * *"\n')
    done = subprocess.run(
        [sys.executable, "scheduler.py"], cwd=processes.ROOT, env=processes.process_env(redis_url, SCHEDULES_FILE=str(bad)),
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 1
    assert "no job called 'demo.nope'" in done.stderr
    assert connection.dbsize() == 0


def test_a_declared_schedule_wins_over_a_runtime_one_of_the_same_name(connection, declare, clock, settings):
    runtime = validate(Schedule(name="s", job="demo.add", cron="*/5 * * * *", args=[1, 1]), registry=job_registry(), settings=settings)
    store.save(connection, runtime, source=store.API, now=clock())
    report = declare(Schedule(name="s", job="demo.add", cron="0 9 * * *", args=[2, 2]))
    assert report.replaced == ["s"]
    stored = store.get(connection, "s")
    assert stored.source == "declared"
    assert stored.definition["cron"] == "0 9 * * *"
    assert stored.definition["kwargs"] == {"x": 2, "y": 2}


def test_entries_left_by_plain_rq_scheduler_registration_are_cleaned_up(connection, declare, clock):
    from rq_scheduler import Scheduler

    from service.queues import ServiceJob, ServiceQueue

    old = Scheduler(connection=connection, job_class=ServiceJob, queue_class=ServiceQueue)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # rq-scheduler's own use of crontab
        old.cron("* * * * *", "jobs.demo.tick", id="schedule-legacy")
    report = declare()
    assert report.removed == ["legacy"]
    assert connection.zcard(store.SCHEDULED) == 0
    assert not connection.exists("rq:job:schedule-legacy")


def followed_by(read, write):
    """`read`, with `write` landing the moment after it: a race, made to happen every time."""

    def raced(*args):
        result = read(*args)
        write()
        return result

    return raced


def test_a_schedule_created_while_the_scheduler_syncs_is_not_taken_for_a_stale_entry(
    connection, declare, clock, settings, monkeypatch
):
    # A POST /schedules lands just after the sync has read the names it knows, and
    # before it looks for entries without a state record.
    created = validate(Schedule(name="new", job="demo.tick", cron="* * * * *"), registry=job_registry(), settings=settings)
    post = lambda: store.save(connection, created, source=store.API, now=clock())  # noqa: E731
    monkeypatch.setattr(store, "names", followed_by(store.names, post))
    report = declare()
    assert report.removed == []
    assert store.get(connection, "new") is not None
    assert connection.zscore(store.SCHEDULED, template_id("new")) is not None
    assert connection.exists("rq:job:" + template_id("new"))


def test_a_schedule_replaced_over_the_api_while_the_scheduler_syncs_is_kept(connection, declare, clock, settings, monkeypatch):
    declare(Schedule(name="s", job="demo.tick", cron="0 9 * * *"))
    # The file no longer declares `s`; a PUT makes it a run-time schedule between
    # the sync's read and its removal of undeclared ones.
    replacement = validate(Schedule(name="s", job="demo.tick", cron="*/5 * * * *"), registry=job_registry(), settings=settings)
    put = lambda: store.save(connection, replacement, source=store.API, now=clock())  # noqa: E731
    monkeypatch.setattr(store, "all_schedules", followed_by(store.all_schedules, put))
    report = declare()
    assert report.removed == []
    stored = store.get(connection, "s")
    assert stored.source == store.API and stored.definition["cron"] == "*/5 * * * *"
    assert stored.next_tick is not None


def test_every_on_time_tick_of_a_long_look_is_queued_however_many(connection, declare, clock):
    declare(Schedule(name="each-second", job="demo.tick", cron="* * * * * * *", missed="skip"))
    scheduler = ServiceScheduler(connection, clock=clock, interval=60)  # a grace of 120 s
    clock.advance(seconds=120)  # 120 ticks came due, all still on time
    assert scheduler.enqueue_jobs() == 120
    assert len(set(queued(connection))) == 120


def test_ticks_of_a_job_with_a_concurrency_limit_take_slots_like_any_enqueue(connection, declare, scheduler, clock, monkeypatch):
    monkeypatch.setenv("HTTP_HOST_CONCURRENCY", "1")  # read where jobs are enqueued: here
    declare(Schedule(name="hook", job="http.request", kwargs={"url": "http://example.com/x"}, cron="* * * * *", missed="all"))
    clock.advance(minutes=3)  # 09:00 and 09:01 missed, 09:02 on time: all three run
    assert scheduler.enqueue_jobs() == 3
    ticks = [tick_id("hook", int(datetime(2025, 1, 6, 9, minute, tzinfo=UTC).timestamp())) for minute in range(3)]
    assert queued(connection) == ticks[:1]
    assert [fetch_job(tick, connection).get_status().value for tick in ticks] == ["queued", "rate_limited", "rate_limited"]


def fire_every(scheduler: ServiceScheduler, clock: Clock, until: datetime, step: timedelta) -> None:
    while clock.now < until:
        clock.now = min(clock.now + step, until)
        scheduler.enqueue_jobs()


@pytest.mark.parametrize(
    "zone, start, expected",
    [
        # Spring forward: 02:30 does not exist on 03-30; it fires once, at 03:30 CEST.
        ("Europe/Berlin", datetime(2025, 3, 28, 12, tzinfo=UTC), ["20250329T013000Z", "20250330T013000Z", "20250331T003000Z"]),
        # Fall back: 02:30 happens twice on 10-26; it fires once, at the first.
        ("Europe/Berlin", datetime(2025, 10, 24, 12, tzinfo=UTC), ["20251025T003000Z", "20251026T003000Z", "20251027T013000Z"]),
        ("America/New_York", datetime(2025, 3, 7, 12, tzinfo=UTC), ["20250308T073000Z", "20250309T073000Z", "20250310T063000Z"]),
        ("America/New_York", datetime(2025, 10, 31, 12, tzinfo=UTC), ["20251101T063000Z", "20251102T073000Z", "20251103T073000Z"]),
    ],
)
def test_a_daily_job_fires_once_a_day_across_dst_changes(connection, settings, zone, start, expected):
    clock = Clock(start)
    sync(connection, [Schedule(name="daily", job="demo.tick", cron="30 2 * * *", timezone=zone)], registry=job_registry(), settings=settings, now=clock())
    scheduler = ServiceScheduler(connection, clock=clock)
    fire_every(scheduler, clock, start + timedelta(days=3), timedelta(minutes=7))
    assert queued(connection) == [f"schedule-daily-{s}" for s in expected]


def test_a_repeated_hour_fires_an_hourly_job_each_real_hour(connection, settings):
    clock = Clock(datetime(2025, 11, 2, 3, 45, tzinfo=UTC))
    sync(connection, [Schedule(name="hourly", job="demo.tick", cron="30 * * * *", timezone="America/New_York")], registry=job_registry(), settings=settings, now=clock())
    fire_every(ServiceScheduler(connection, clock=clock), clock, datetime(2025, 11, 2, 8, tzinfo=UTC), timedelta(minutes=5))
    assert [job[-7:-1] for job in queued(connection)] == ["043000", "053000", "063000", "073000"]


def test_tokyo_nine_oclock_whatever_the_process_zone(connection, settings, monkeypatch):
    import time

    monkeypatch.setenv("TZ", "America/Los_Angeles")
    time.tzset()
    try:
        clock = Clock(datetime(2025, 6, 1, 12, tzinfo=UTC))
        sync(connection, [Schedule(name="tokyo", job="demo.tick", cron="0 9 * * *", timezone="Asia/Tokyo")], registry=job_registry(), settings=settings, now=clock())
        fire_every(ServiceScheduler(connection, clock=clock), clock, datetime(2025, 6, 3, 1, tzinfo=UTC), timedelta(minutes=10))
    finally:
        monkeypatch.undo()
        time.tzset()
    assert queued(connection) == ["schedule-tokyo-20250602T000000Z", "schedule-tokyo-20250603T000000Z"]


def test_the_default_zone_comes_from_the_settings(connection, settings):
    from dataclasses import replace

    clock = Clock(datetime(2025, 6, 1, 12, tzinfo=UTC))
    sync(connection, [Schedule(name="s", job="demo.tick", cron="0 9 * * *")], registry=job_registry(), settings=replace(settings, schedule_timezone="Asia/Tokyo"), now=clock())
    assert store.get(connection, "s").definition["timezone"] == "Asia/Tokyo"
    assert store.get(connection, "s").next_tick == int(datetime(2025, 6, 2, 0, tzinfo=UTC).timestamp())


@pytest.mark.parametrize("missed, expected", [("skip", []), ("once", ["12"]), ("all", ["09", "10", "11", "12"])])
def test_missed_runs_follow_the_policy(connection, settings, missed, expected):
    clock = Clock(datetime(2025, 1, 6, 8, 30, tzinfo=UTC))
    sync(connection, [Schedule(name="h", job="demo.tick", cron="0 * * * *", missed=missed)], registry=job_registry(), settings=settings, now=clock())
    # No scheduler ran from 08:30 to 12:30; then one starts (after a restart: sync again).
    clock.now = datetime(2025, 1, 6, 12, 30, tzinfo=UTC)
    sync(connection, [Schedule(name="h", job="demo.tick", cron="0 * * * *", missed=missed)], registry=job_registry(), settings=settings, now=clock())
    ServiceScheduler(connection, clock=clock).enqueue_jobs()
    assert [job[-7:-5] for job in queued(connection)] == expected
    assert store.get(connection, "h").next_tick == int(datetime(2025, 1, 6, 13, tzinfo=UTC).timestamp())


def test_catch_up_runs_are_bounded(connection, settings):
    clock = Clock(datetime(2025, 1, 6, 8, 30, tzinfo=UTC))
    sync(connection, [Schedule(name="m", job="demo.tick", cron="* * * * *", missed="all")], registry=job_registry(), settings=settings, now=clock())
    clock.advance(days=3)
    ServiceScheduler(connection, clock=clock, catch_up_limit=50).enqueue_jobs()
    assert len(queued(connection)) == 50


def test_a_paused_schedule_does_not_fire_and_resumes_without_the_paused_ticks(connection, declare, scheduler, clock):
    declare(Schedule(name="m", job="demo.tick", cron="* * * * *", missed="all"))
    assert store.pause(connection, "m")
    clock.advance(minutes=10)
    assert scheduler.enqueue_jobs() == 0
    assert store.resume(connection, "m", now=clock())
    clock.advance(seconds=31)
    assert scheduler.enqueue_jobs() == 1
    assert queued(connection) == [f"schedule-m-{stamp(datetime(2025, 1, 6, 9, 10, tzinfo=UTC))}"]


def test_resuming_a_schedule_that_is_not_paused_skips_nothing(connection, declare, scheduler, clock):
    """An operator resumes a running schedule "to be sure": its due tick, and
    the ticks it missed and would catch up, still run."""
    declare(Schedule(name="nine", job="demo.tick", cron="0 9 * * *"),
            Schedule(name="hourly", job="demo.tick", cron="0 * * * *", missed="all"))
    clock.now = datetime(2025, 1, 6, 12, 0, 0, 500_000, tzinfo=UTC)  # no scheduler since 08:59:30
    assert store.resume(connection, "nine", now=clock()) and store.resume(connection, "hourly", now=clock())
    assert scheduler.enqueue_jobs() == 1 + 4  # 09:00; 09:00, 10:00, 11:00 and 12:00


def test_a_tick_read_before_a_change_is_not_fired_with_the_old_definition(connection, declare, clock, settings):
    declare(Schedule(name="s", job="demo.add", cron="0 9 * * *", args=[1, 1]))
    clock.advance(seconds=30)
    scheduler = ServiceScheduler(connection, clock=clock)
    rows = [(m.decode(), int(s)) for m, s in connection.zrangebyscore(store.SCHEDULED, "-inf", "+inf", withscores=True)]
    read = scheduler._read(rows)
    declare(Schedule(name="s", job="demo.add", cron="0 9 * * *", args=[5, 5]))  # same timing, new arguments
    assert scheduler._fire(rows, read, clock()) == 0
    assert scheduler.enqueue_jobs() == 1
    assert fetch_job(queued(connection)[0], connection).kwargs == {"x": 5, "y": 5}


def test_a_schedule_that_cannot_fire_is_paused_with_its_error(connection, declare, scheduler, clock):
    declare(Schedule(name="s", job="demo.tick", cron="0 9 * * *"), Schedule(name="ok", job="demo.tick", cron="0 9 * * *"))
    connection.hset(store.state_key("s"), "definition", '{"cron": "not cron", "timezone": "UTC"}')
    clock.advance(seconds=30)
    assert scheduler.enqueue_jobs() == 1  # the other schedule still fires
    broken = store.get(connection, "s")
    assert broken.paused and "InvalidCron" in broken.error


def test_a_parked_schedule_runs_again_once_it_is_replaced_but_a_paused_one_stays_paused(
    connection, declare, scheduler, clock
):
    declare(Schedule(name="s", job="demo.tick", cron="0 9 * * *"), Schedule(name="held", job="demo.tick", cron="0 9 * * *"))
    store.pause(connection, "held")
    connection.hset(store.state_key("s"), "definition", '{"cron": "not cron", "timezone": "UTC"}')
    clock.advance(seconds=30)
    scheduler.enqueue_jobs()
    assert store.get(connection, "s").paused
    declare(Schedule(name="s", job="demo.tick", cron="0 10 * * *"), Schedule(name="held", job="demo.tick", cron="0 10 * * *"))
    fixed, held = store.get(connection, "s"), store.get(connection, "held")
    assert (fixed.paused, fixed.error) == (False, None)
    assert fixed.next_tick == int(datetime(2025, 1, 6, 10, tzinfo=UTC).timestamp())
    assert held.paused and held.next_tick is None
    clock.advance(hours=1)
    assert scheduler.enqueue_jobs() == 1
    assert queued(connection) == ["schedule-s-20250106T100000Z"]


def test_jobs_enqueued_at_a_time_through_rq_scheduler_move_once(connection, scheduler, clock):
    scheduler.enqueue_at(datetime(2025, 1, 6, 9, 0, 0), "jobs.demo.add", 1, 2, queue_name="low")
    assert scheduler.enqueue_jobs() == 0
    clock.advance(seconds=30)
    assert scheduler.enqueue_jobs() == 1
    assert scheduler.enqueue_jobs() == 0
    [job_id] = queued(connection, "low")
    assert fetch_job(job_id, connection).get_status().value == "queued"


def test_the_scheduler_sleeps_until_the_next_tick_not_a_fixed_interval(connection, declare, clock):
    declare(Schedule(name="s", job="demo.tick", cron="0 9 * * *"))
    scheduler = ServiceScheduler(connection, clock=clock, interval=60)
    assert scheduler.seconds_until_due() == 30
    # At most `interval`, so schedules added at run time are seen.
    assert ServiceScheduler(connection, clock=clock, interval=1).seconds_until_due() == 1
    clock.advance(seconds=29, microseconds=750_000)
    assert scheduler.seconds_until_due() == pytest.approx(0.25)
