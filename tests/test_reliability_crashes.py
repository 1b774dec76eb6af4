"""No job is lost when work-horses, whole workers, or workers right after a dequeue are killed.

Real `worker.py` processes, killed with SIGKILL; jobs counted by their own
start/finish records in Redis (canary jobs).
"""
from __future__ import annotations

import signal
import sys
import threading
import time
import uuid

import pytest
from rq import Retry

from tests import chaos, processes
from tests.conftest import wait_for


def _failure_reason(connection, job_id: str) -> str:
    from service.queues import fetch_job

    result = fetch_job(job_id, connection).latest_result()
    return (result.exc_string or "") if result else ""


def test_killing_work_horses_during_1000_jobs_loses_none(connection, settings, redis_url, tmp_path):
    """1. SIGKILL work-horses during 1,000 in-flight jobs with retries: each ends finished or
    failed with a reason, none is missing, and duplicate runs are no more than the kills."""
    token = uuid.uuid4().hex
    # Most with retries; one in five without, so that kills also end jobs as failed.
    job_ids = []
    for _ in range(200):
        job_ids += chaos.enqueue_canaries(connection, settings, 4, token=token, seconds=0.02, retry=Retry(max=2))
        job_ids += chaos.enqueue_canaries(connection, settings, 1, token=token, seconds=0.02)
    records = chaos.Records(connection, token)
    kills = 0
    stop = threading.Event()

    with chaos.worker(redis_url, tmp_path / "worker-1.log") as one, chaos.worker(redis_url, tmp_path / "worker-2.log") as two:

        def killer():
            nonlocal kills
            while not stop.is_set() and kills < 150:
                for worker in (one, two):
                    for pid in chaos.horses(worker.pid):
                        if chaos.kill(pid):
                            kills += 1
                stop.wait(0.07)

        thread = threading.Thread(target=killer, daemon=True)
        thread.start()

        def all_done():
            return all(status in ("finished", "failed") for status in chaos.statuses(connection, job_ids).values())

        try:
            wait_for(all_done, timeout=240, interval=0.5, what="every job to finish or fail")
        finally:
            stop.set()
            thread.join()
        assert one.poll() is None and two.poll() is None, "a worker process died"

    final = chaos.statuses(connection, job_ids)
    assert None not in final.values(), "a job record is missing"
    failed = [job_id for job_id, status in final.items() if status == "failed"]
    for job_id in failed:
        assert "terminated unexpectedly" in _failure_reason(connection, job_id)
    runs = records.runs()
    duplicates = sum(runs.values()) - len(runs)
    finished = [job_id for job_id, status in final.items() if status == "finished"]
    assert set(finished) <= set(runs)
    print(f"\nkills={kills} finished={len(finished)} failed={len(failed)} runs={sum(runs.values())} "
          f"duplicates={duplicates}")
    assert kills >= 50, "the scenario did not kill enough work-horses to mean anything"
    assert duplicates <= kills


def _worker_killed_mid_job(connection, settings, redis_url, tmp_path, env: dict, in_flight: int, bound: float):
    token = uuid.uuid4().hex
    records = chaos.Records(connection, token)
    with chaos.worker(redis_url, tmp_path / "doomed.log", **env) as doomed:
        [long_job] = chaos.enqueue_canaries(connection, settings, 1, token=token, seconds=3)
        wait_for(lambda: records.started(), timeout=30, what="the doomed worker to start the long job")
        with chaos.worker(redis_url, tmp_path / "survivor.log", **env) as survivor:
            short_jobs = chaos.enqueue_canaries(connection, settings, in_flight, token=token, seconds=0.05)
            wait_for(lambda: len(records.finished()) >= 3, timeout=30, what="the other worker to get going")
            doomed_pids = [process.pid for process in chaos.tree(doomed.pid)]
            assert len(doomed_pids) >= 2, "the doomed worker should be running a work-horse"
            killed_at = time.monotonic()
            for pid in doomed_pids:  # main process, work-horse, RQ's scheduler
                chaos.kill(pid)
            doomed.wait(5)

            def recovered():
                # Requeued by the survivor (marked abandoned), or already rerun by it.
                return chaos.meta(connection, long_job).get("interrupted", {}).get("abandoned") == 1

            wait_for(recovered, timeout=bound + 5, interval=0.1, what="the killed worker's job to be recovered")
            recovery_time = chaos.elapsed(killed_at)
            job_ids = [long_job, *short_jobs]
            wait_for(
                lambda: set(chaos.statuses(connection, job_ids).values()) == {"finished"},
                timeout=120, interval=0.2, what="every job to finish",
            )
            assert survivor.poll() is None
    runs = records.runs()
    print(f"\nrecovered {recovery_time}s after the kill; runs={sum(runs.values())} jobs={len(job_ids)}")
    assert recovery_time <= bound
    assert set(runs) == set(job_ids)
    assert sum(runs.values()) - len(job_ids) <= 1, "only the killed worker's job may run twice"
    assert runs[long_job] == 2
    assert not connection.zrange("rq:wip:default", 0, -1), "a job is still registered as started"


def test_a_killed_worker_s_job_is_recovered_within_60_seconds(connection, settings, redis_url, tmp_path):
    """2. Kill a whole worker (main process and work-horse) during 100 in-flight jobs: its job is
    retried within 60 s of the kill (here within seconds: ORPHAN_TIMEOUT=4), none stays started."""
    _worker_killed_mid_job(connection, settings, redis_url, tmp_path, env={}, in_flight=100, bound=60)


@pytest.mark.full_size
def test_a_killed_worker_s_job_is_recovered_within_60_seconds_with_production_settings(
    connection, settings, redis_url, tmp_path
):
    production = {"WORKER_HEARTBEAT_INTERVAL": "5", "ORPHAN_TIMEOUT": "30", "RECOVERY_INTERVAL": "10",
                  "DEQUEUE_POLL_INTERVAL": "0.25"}
    _worker_killed_mid_job(connection, settings, redis_url, tmp_path, env=production, in_flight=100, bound=60)


def _crash_right_after_dequeue(connection, settings, redis_url, tmp_path, env: dict, bound: float):
    token = uuid.uuid4().hex
    [job_id] = chaos.enqueue_canaries(connection, settings, 1, token=token, queue="low")
    crash_env = chaos.worker_env(redis_url, RQ_QUEUES="high,default,low", **env)
    with processes.running([sys.executable, "-m", "tests.crashing_worker"], crash_env, tmp_path / "crash.log") as crasher:
        assert crasher.wait(30) == -signal.SIGKILL
    crashed_at = time.monotonic()
    # Where plain RQ's BLPOP would have lost it: on no queue, status still `queued`.
    assert chaos.statuses(connection, [job_id]) == {job_id: "queued"}
    assert not any(connection.lrange(f"rq:queue:{name}", 0, -1) for name in ("high", "default", "low"))
    [held] = [key for key in connection.scan_iter("rq:svc:dequeued:*")]
    assert connection.lrange(held, 0, -1) == [job_id.encode()]

    with chaos.worker(redis_url, tmp_path / "worker.log", RQ_QUEUES="high,default,low", **env):
        wait_for(lambda: chaos.statuses(connection, [job_id])[job_id] == "finished",
                 timeout=bound + 10, interval=0.1, what="the job to be recovered and run")
    recovery_time = chaos.elapsed(crashed_at)
    print(f"\nrecovered and finished {recovery_time}s after the crash")
    assert recovery_time <= bound
    assert chaos.Records(connection, token).runs() == {job_id: 1}
    assert not connection.exists(held)


def test_a_job_taken_by_a_worker_that_crashes_at_once_is_recovered(connection, settings, redis_url, tmp_path):
    """4. Crash right after dequeue, with the priority queues high, default, low in one worker:
    the job is recovered within 60 s (here within seconds: ORPHAN_TIMEOUT=4)."""
    _crash_right_after_dequeue(connection, settings, redis_url, tmp_path, env={}, bound=60)


@pytest.mark.full_size
def test_a_job_taken_by_a_worker_that_crashes_at_once_is_recovered_with_production_settings(
    connection, settings, redis_url, tmp_path
):
    production = {"WORKER_HEARTBEAT_INTERVAL": "5", "ORPHAN_TIMEOUT": "30", "RECOVERY_INTERVAL": "10",
                  "DEQUEUE_POLL_INTERVAL": "0.25"}
    _crash_right_after_dequeue(connection, settings, redis_url, tmp_path, env=production, bound=60)
