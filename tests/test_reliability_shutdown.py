"""Heroku-style restarts: SIGTERM to every process, SIGKILL a little later, many times under load.

Scaled down: SHUTDOWN_GRACE=1 s and SIGKILL at 3 s instead of 25 s and 30 s
(the full-size variant runs the production values).
"""
from __future__ import annotations

import signal
import threading
import time
import uuid

import pytest

from service.worker import build_worker
from tests import chaos
from tests.conftest import wait_for


def _restart_many_times(connection, settings, redis_url, tmp_path, *, restarts, grace, kill_at, long, medium):
    """Each restart catches one worker in a job too long for the grace period (the same one
    every time: an interrupted job goes back to the front of its queue) and another in a
    job short enough to finish, while quick jobs wait on `low`."""
    token = uuid.uuid4().hex
    records = chaos.Records(connection, token)
    duration: dict[str, float] = {}
    for job_id in chaos.enqueue_canaries(connection, settings, 1, token=token, seconds=long, queue="high"):
        duration[job_id] = long
    for job_id in chaos.enqueue_canaries(connection, settings, 30, token=token, seconds=medium, queue="default"):
        duration[job_id] = medium
    for job_id in chaos.enqueue_canaries(connection, settings, 100, token=token, seconds=0.05, queue="low"):
        duration[job_id] = 0.05
    env = {"SHUTDOWN_GRACE": str(grace)}
    outcomes = {"finished": 0, "requeued": 0}
    sigkills: list[str] = []

    for restart in range(restarts):
        logs = tmp_path / f"restart-{restart}"
        logs.mkdir()
        with chaos.worker(redis_url, logs / "worker-1.log", RQ_QUEUES="high,default,low", **env) as one, \
                chaos.worker(redis_url, logs / "worker-2.log", RQ_QUEUES="default,low", **env) as two, \
                chaos.scheduler(redis_url, logs / "scheduler.log", **env) as sched:
            dyno = [one, two, sched]
            pids = lambda: {p.pid for process in (one, two) for p in chaos.tree(process.pid)}  # noqa: E731
            wait_for(lambda: len([r for r in records.running() if r["pid"] in pids()]) >= 2,
                     timeout=30, what="both workers to be running a job")
            time.sleep(0.2)
            running = [r for r in records.running() if r["pid"] in pids()]
            before = {r["job_id"]: chaos.meta(connection, r["job_id"]).get("interrupted", {}).get("count", 0)
                      for r in running}
            sigterm_at = time.monotonic()
            for process in dyno:
                chaos.signal_all(process.pid, signal.SIGTERM)
            while time.monotonic() - sigterm_at < kill_at and any(p.poll() is None for p in dyno):
                time.sleep(0.02)
            for name, process in zip(("worker-1", "worker-2", "scheduler"), dyno):
                if process.poll() is None:
                    sigkills.append(f"restart {restart}: {name}")
                    chaos.signal_all(process.pid, signal.SIGKILL)
                    process.wait()
            wall = time.time()

        for record in running:
            job_id = record["job_id"]
            left = duration[job_id] - (wall - record["at"]) + (time.monotonic() - sigterm_at)
            status = chaos.statuses(connection, [job_id])[job_id]
            if left < grace - 0.4:
                assert status == "finished", f"restart {restart}: a job with {left:.1f}s left was not let finish"
                outcomes["finished"] += 1
            elif left > grace + 0.4:
                interrupted = chaos.meta(connection, job_id).get("interrupted", {})
                assert status == "queued", f"restart {restart}: interrupted job is {status}"
                assert interrupted.get("count") == before[job_id] + 1
                assert "SHUTDOWN_GRACE" in interrupted["reason"]
                assert job_id.encode() in connection.lrange("rq:queue:high", 0, -1) + connection.lrange("rq:queue:low", 0, -1)
                outcomes["requeued"] += 1
        # Every process is gone: nothing may be left registered as started or held by a worker.
        everything = chaos.statuses(connection, list(duration))
        assert "started" not in everything.values()
        assert "failed" not in everything.values()
        assert None not in everything.values()
        for queue in ("high", "default", "low"):
            assert not connection.zrange(f"rq:wip:{queue}", 0, -1)
        assert not list(connection.scan_iter("rq:svc:dequeued:*"))

    # The deploy is over: the jobs left run to the end.
    with chaos.worker(redis_url, tmp_path / "after-1.log"), chaos.worker(redis_url, tmp_path / "after-2.log"):
        wait_for(lambda: set(chaos.statuses(connection, list(duration)).values()) == {"finished"},
                 timeout=120 + 30 * medium, interval=0.2, what="every job to finish after the restarts")
    runs = records.runs()
    interruptions = sum(chaos.meta(connection, job_id).get("interrupted", {}).get("count", 0) for job_id in duration)
    print(f"\nrestarts={restarts} finished-in-grace={outcomes['finished']} requeued={outcomes['requeued']} "
          f"interruptions={interruptions} runs={sum(runs.values())} jobs={len(duration)} sigkills={len(sigkills)}")
    assert set(runs) == set(duration)
    assert sum(runs.values()) - len(duration) <= interruptions
    assert not sigkills, f"outlived the platform's grace period: {sigkills}"
    assert outcomes["requeued"] >= restarts * 0.8 and outcomes["finished"] >= restarts * 0.8


def test_heroku_restarts_under_load_lose_nothing_and_fail_nothing(connection, settings, redis_url, tmp_path):
    """3. Twenty Heroku-style restarts under load: jobs that can finish within the grace period
    finish, the others go back to their queue marked interrupted (not failed), none is lost."""
    _restart_many_times(connection, settings, redis_url, tmp_path, restarts=20, grace=1.0, kill_at=3.0,
                        long=2.5, medium=0.6)


@pytest.mark.full_size
def test_heroku_restarts_at_production_timing(connection, settings, redis_url, tmp_path):
    _restart_many_times(connection, settings, redis_url, tmp_path, restarts=20, grace=25, kill_at=30,
                        long=40.0, medium=20.0)


def test_a_worker_whose_command_listener_read_its_unsubscribe_first_stops_at_once(settings):
    """A stopping worker unsubscribes from its command channel, then stops RQ's
    listener thread. When that thread reads the unsubscribe's reply first, it
    goes back to waiting for a subscription (up to 60 s), and a stop that waits
    for it outlives the platform's grace period: seen as a SIGKILL in the
    restarts above, about one run in two on a loaded machine."""
    worker = build_worker(settings)
    worker.subscribe()
    worker.pubsub.unsubscribe()
    wait_for(lambda: not worker.pubsub.subscribed, timeout=5, interval=0.01,
             what="the listener to read the unsubscribe's reply")
    stopping = threading.Thread(target=worker.unsubscribe, daemon=True)
    stopping.start()
    stopping.join(timeout=5)
    assert not stopping.is_alive(), "the worker was still waiting for its listener thread after 5 s"
