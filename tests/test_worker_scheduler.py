"""The worker's scheduler: jobs given a time are enqueued when due, not up to a second later."""
from __future__ import annotations

import math
import os
import signal
import time
from datetime import datetime, timedelta, timezone

import psutil
from rq.serializers import JSONSerializer

from service.queues import ServiceQueue, fetch_job
from service.worker_scheduler import LOCK_RETRY, PromptRQScheduler
from tests import chaos
from tests.conftest import wait_for
from worker import build_worker


def test_it_sleeps_until_the_earliest_job_is_due(connection):
    queue = ServiceQueue("default", connection=connection)
    scheduler = PromptRQScheduler(["default"], connection=connection, serializer=JSONSerializer, poll=5.0)
    scheduler.prepare_registries(["default"])
    assert scheduler.seconds_until_due() == 5.0
    due = math.ceil(time.time()) + 2
    queue.enqueue_at(datetime.fromtimestamp(due, timezone.utc), "jobs.demo.add", 1, 2)
    assert 1.0 < scheduler.seconds_until_due() <= 3.0  # not the 5 s poll


def test_a_time_before_1970_does_not_keep_it_awake(connection):
    """RQ never moves a job scored below 0, so the loop must not wait on one."""
    queue = ServiceQueue("default", connection=connection)
    scheduler = PromptRQScheduler(["default"], connection=connection, serializer=JSONSerializer, poll=5.0)
    scheduler.prepare_registries(["default"])
    job = queue.enqueue_at(datetime.fromtimestamp(1, timezone.utc), "jobs.demo.add", 1, 2)
    connection.zadd("rq:scheduled:default", {job.id: -1})
    assert scheduler.seconds_until_due() == 5.0


def test_a_job_given_a_time_is_enqueued_within_a_fraction_of_a_second(connection):
    queue = ServiceQueue("default", connection=connection)
    due = math.ceil(time.time()) + 2
    job = queue.enqueue_at(datetime.fromtimestamp(due, timezone.utc), "jobs.demo.add", 1, 2)
    scheduler = PromptRQScheduler(["default"], connection=connection, serializer=JSONSerializer, poll=1.0)
    scheduler.acquire_locks()
    process = scheduler.start()
    try:
        wait_for(lambda: fetch_job(job.id, connection).get_status().value == "queued", timeout=10, what="the job to be enqueued")
    finally:
        os.kill(process.pid, signal.SIGTERM)
        process.join(10)
    lateness = fetch_job(job.id, connection).enqueued_at.replace(tzinfo=timezone.utc).timestamp() - due
    # RQ's own scheduler sleeps a second after each look: 0 to 1 s late.
    assert 0 <= lateness < 0.5


def test_the_service_worker_runs_it(connection, settings):
    queue = ServiceQueue("default", connection=connection)
    job = queue.enqueue_at(datetime.now(timezone.utc) - timedelta(seconds=1), "jobs.demo.add", 1, 2)
    worker = build_worker(settings)
    worker._start_scheduler(burst=True)
    assert isinstance(worker.scheduler, PromptRQScheduler)
    assert worker.scheduler.poll == settings.scheduler_interval
    assert fetch_job(job.id, connection).get_status().value == "queued"


def test_when_the_worker_holding_the_scheduler_locks_dies_another_takes_over(connection, redis_url, tmp_path):
    """RQ's other workers try for the locks only every 10 minutes: until then no
    job given a time, and no retry waiting out its backoff, would be enqueued."""
    with chaos.worker(redis_url, tmp_path / "one.log") as one, chaos.worker(redis_url, tmp_path / "two.log") as two:
        # Each has tried for the locks once it runs an executor.
        wait_for(lambda: chaos.horses(one.pid) and chaos.horses(two.pid), what="both workers to be at work")
        lock = "rq:scheduler-lock:default"
        holder_name = wait_for(lambda: connection.get(lock), what="a worker to take the scheduler lock").decode()
        scheduler_pid = wait_for(lambda: connection.hget(f"rq:scheduler:{holder_name}", "pid"), what="its scheduler")
        holder = one if psutil.Process(int(scheduler_pid)).ppid() == one.pid else two
        holder.kill()  # SIGKILL: nothing is released
        holder.wait()
        # The lock outlives its holder by its TTL (61 s), which this test does not wait out.
        connection.pexpire(lock, 1)
        queue = ServiceQueue("default", connection=connection)
        job = queue.enqueue_at(datetime.now(timezone.utc) + timedelta(seconds=0.5), "jobs.demo.add", 1, 2)
        wait_for(lambda: fetch_job(job.id, connection).get_status().value == "finished", timeout=20,
                 what="the job to be enqueued by the other worker and run")
        assert connection.get(lock).decode() != holder_name


def test_a_scheduler_holding_some_queues_locks_takes_the_others_soon_after_they_come_free(connection):
    """Two workers may share the queues' locks between them. When one dies, the
    other's scheduler takes its queues within seconds, not in RQ's two minutes."""
    other = PromptRQScheduler(["high"], connection=connection, serializer=JSONSerializer)
    assert other.acquire_locks() == {"high"}
    scheduler = PromptRQScheduler(["high", "default"], connection=connection, serializer=JSONSerializer)
    assert scheduler.acquire_locks() == {"default"}
    assert not scheduler.should_reacquire_locks  # it has just tried
    connection.delete(other.get_locking_key("high"))  # its holder died, and the lock expired
    scheduler.lock_acquisition_time -= timedelta(seconds=LOCK_RETRY)
    assert scheduler.should_reacquire_locks
    assert scheduler.acquire_locks() == {"high", "default"}
