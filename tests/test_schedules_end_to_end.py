"""Three real `scheduler.py` processes against one Redis: each tick runs once.

A schedule ticks every second throughout; 10,000 schedules come due in the
same second; the scheduler doing that pass is killed with SIGKILL in the
middle of it. Every tick must then have exactly one job, none missing.
"""
from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import time
from collections import Counter
from dataclasses import replace
from datetime import datetime, timezone

from service.queues import fetch_job, job_registry
from service.schedules import Schedule, store, tick_id, validate
from tests import processes
from tests.conftest import wait_for
from worker import build_worker

BURST = 10_000
EVERY_SECOND = """\
[[schedule]]
name = "every-second"
job = "demo.add"
args = [1, 1]
cron = "* * * * * * *"
queue = "high"
missed = "all"
"""


def ticks_of(ids: list[str], name: str) -> list[int]:
    prefix = f"schedule-{name}-"
    return sorted(
        int(datetime.strptime(job_id[len(prefix):], "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc).timestamp())
        for job_id in ids
        if job_id.startswith(prefix)
    )


def test_three_schedulers_run_each_tick_once_through_a_burst_and_a_sigkill(redis_url, connection, settings, tmp_path):
    schedules_file = tmp_path / "schedules.toml"
    schedules_file.write_text(EVERY_SECOND)
    env = processes.process_env(redis_url, SCHEDULES_FILE=str(schedules_file))

    # 10,000 run-time schedules, all due in the same second: the burst.
    due = math.ceil(time.time()) + 5
    moment = datetime.fromtimestamp(due, timezone.utc)
    expression = f"{moment.second} {moment.minute} {moment.hour} {moment.day} {moment.month} * {moment.year}"
    burst = [
        validate(Schedule(name=f"burst-{i}", job="demo.add", cron=expression, args=[i, 0], queue="low"), registry=job_registry(), settings=settings)
        for i in range(BURST)
    ]
    store.save_many(connection, burst, source=store.API, now=datetime.now(timezone.utc))

    with contextlib.ExitStack() as stack:
        schedulers = [
            stack.enter_context(processes.running([sys.executable, "scheduler.py"], env, tmp_path / f"scheduler-{n}.log"))
            for n in range(3)
        ]
        pids = {process.pid for process in schedulers}
        wait_for(lambda: len(connection.keys("rq:scheduler_instance:*")) == 3, timeout=30, what="three schedulers")

        # Kill whichever scheduler is doing the burst, once its first jobs are out.
        wait_for(lambda: connection.llen("rq:queue:low") > 0, timeout=60, interval=0.002, what="the burst to start")
        holder = connection.get("rq:scheduler_lock").decode()
        victim = int(holder.rsplit(".", 2)[1])
        assert victim in pids, holder
        os.kill(victim, signal.SIGKILL)
        out_at_kill = connection.llen("rq:queue:low")
        killed_at = time.time()
        assert 0 < out_at_kill < BURST, "the scheduler was not killed in the middle of its pass"

        # The survivors take over: every burst schedule moves on to its next tick...
        wait_for(lambda: connection.zcount(store.SCHEDULED, "-inf", due) == 0, timeout=120, what="the burst to be fired")
        # ...and the per-second schedule keeps ticking for a few seconds more.
        wait_for(
            lambda: ticks_of(_queued(connection, "high"), "every-second")[-1:] >= [math.ceil(time.time()) - 1]
            and time.time() > killed_at + 4,
            timeout=60,
            what="per-second ticks after the kill",
        )
        survivors = [process for process in schedulers if process.pid != victim]
        assert all(process.poll() is None for process in survivors)

    burst_jobs = Counter(_queued(connection, "low"))
    assert set(burst_jobs.values()) == {1}, [job for job, n in burst_jobs.items() if n > 1][:5]
    assert set(burst_jobs) == {tick_id(f"burst-{i}", due) for i in range(BURST)}

    # Per-second ticks: one job each, none missing from the first to the last, and each runs once.
    every_second = _queued(connection, "high")
    assert set(Counter(every_second).values()) == {1}
    seconds = ticks_of(every_second, "every-second")
    assert seconds == list(range(seconds[0], seconds[-1] + 1))
    assert seconds[0] < killed_at < seconds[-1]
    build_worker(replace(settings, queues=("high",))).work(burst=True)
    runs = {job_id: len(fetch_job(job_id, connection).results()) for job_id in every_second}
    assert set(runs.values()) == {1}


def _queued(connection, queue: str) -> list[str]:
    return [item.decode() for item in connection.lrange(f"rq:queue:{queue}", 0, -1)]
