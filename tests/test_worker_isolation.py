"""A job that crashes the interpreter or grows without bound takes down its executor, not the worker.

A real worker process (`tests.misbehaving_worker`: the service's worker, also
allowed to run `tests.misbehaving_jobs`) against the test Redis.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import psutil
from rq import Queue
from rq.serializers import JSONSerializer

from service import executor
from service.queues import ServiceJob, fetch_job
from service.worker import build_worker
from tests import chaos, processes
from tests.conftest import wait_for


def _worker(redis_url, log_path, **env):
    return processes.running([sys.executable, "-m", "tests.misbehaving_worker"], chaos.worker_env(redis_url, **env),
                             log_path)


def _enqueue(connection, name: str, **kwargs) -> str:
    queue = Queue("default", connection=connection, serializer=JSONSerializer, job_class=ServiceJob)
    return queue.enqueue(f"tests.misbehaving_jobs.{name}", kwargs=kwargs).id


def _failure(connection, job_id: str) -> str:
    result = fetch_job(job_id, connection).latest_result()
    return result.exc_string if result else ""


def _back_at_work(connection, settings, token: str) -> float:
    """Seconds until three jobs enqueued now have run."""
    since = time.monotonic()
    job_ids = chaos.enqueue_canaries(connection, settings, 3, token=token)
    wait_for(lambda: set(chaos.statuses(connection, job_ids).values()) == {"finished"}, timeout=15,
             interval=0.02, what="the worker to run jobs again")
    return time.monotonic() - since


def _executors(log_path) -> list[int]:
    return [event["pid"] for event in chaos.log_events(log_path) if event.get("event") == "worker.executor_started"]


def test_a_job_that_segfaults_fails_with_the_reason_and_the_worker_goes_on(connection, settings, redis_url, tmp_path):
    log = tmp_path / "worker.log"
    with _worker(redis_url, log) as worker:
        job_id = _enqueue(connection, "segfault")
        wait_for(lambda: chaos.statuses(connection, [job_id])[job_id] == "failed", timeout=30,
                 what="the crashing job to fail")
        assert "SIGSEGV" in _failure(connection, job_id)
        seconds = _back_at_work(connection, settings, uuid.uuid4().hex)
        assert worker.poll() is None, "the worker process itself must survive"
        executors = _executors(log)
    print(f"\nback at work {seconds:.2f}s after the crash")
    assert len(set(executors)) >= 2 and worker.pid not in executors
    assert not connection.zrange("rq:wip:default", 0, -1), "a job is still registered as started"


def test_a_job_that_grows_past_the_memory_limit_is_stopped_and_fails_with_the_reason(
    connection, settings, redis_url, tmp_path
):
    with _worker(redis_url, tmp_path / "worker.log", WORKER_MAX_MEMORY_MB="200") as worker:
        job_id = _enqueue(connection, "balloon")
        wait_for(lambda: chaos.statuses(connection, [job_id])[job_id] == "failed", timeout=30,
                 what="the ballooning job to be stopped")
        reason = _failure(connection, job_id)
        assert "more than WORKER_MAX_MEMORY_MB=200" in reason, reason
        _back_at_work(connection, settings, uuid.uuid4().hex)
        assert worker.poll() is None


def test_an_executor_that_leaks_from_job_to_job_is_replaced_between_jobs(connection, settings, redis_url, tmp_path):
    log = tmp_path / "worker.log"
    with _worker(redis_url, log, WORKER_MAX_MEMORY_MB="150") as worker:
        job_ids = [_enqueue(connection, "leak", mb=40) for _ in range(8)]
        wait_for(lambda: set(chaos.statuses(connection, job_ids).values()) == {"finished"}, timeout=60,
                 what="every leaking job to finish")
        assert worker.poll() is None
        held = [fetch_job(job_id, connection).return_value() for job_id in job_ids]
        executors = _executors(log)
    # Each job returns how many 40 MiB blocks its executor held: bounded, not growing with the job count.
    assert max(held) <= 4, held
    assert len(executors) >= 3


def test_a_worker_stopped_while_its_executor_starts_stops_at_once(redis_url, connection, tmp_path):
    # The executor takes 2 s to start; SIGTERM comes meanwhile. The executor must
    # still hear it, rather than wait for jobs until SHUTDOWN_GRACE runs out.
    log = tmp_path / "worker.log"
    with _worker(redis_url, log, EXECUTOR_SLOW_START="2", SHUTDOWN_GRACE="60") as worker:
        wait_for(lambda: _executors(log), what="an executor to be forked")
        since = time.monotonic()
        worker.send_signal(signal.SIGTERM)
        wait_for(lambda: worker.poll() is not None, timeout=30, what="the worker to stop")
        seconds = time.monotonic() - since
    assert worker.returncode == 0
    assert seconds < 15, f"stopped after {seconds:.1f} s: the executor missed the SIGTERM"
    assert [event["event"] for event in chaos.log_events(log)][-1] == "worker.stopped"


def test_a_new_executor_is_not_taken_for_the_last_ones_run_of_the_same_job(settings, connection):
    """Each executor numbers its runs from the start. A retry that is the first job
    of the next executor (WORKER_MAX_JOBS recycles one after each job) must not be
    taken for the last executor's run of that job: the supervisor would heartbeat
    the old, ended execution, and recovery would requeue the running retry to
    another worker, running it twice at once."""
    worker = build_worker(settings)
    worker.register_birth()
    try:
        worker._running_cache = ((2, "a-retried-job"), ("its last run", "its ended execution"))
        worker._run_executor(burst=True)  # a new executor; the queues are empty, so it exits at once
        assert worker._running(job_id="a-retried-job", run=2) is None  # not claimed by this executor
    finally:
        worker.register_death()


def test_a_process_whose_parent_died_before_it_asked_to_die_with_it_dies_at_once(tmp_path):
    """A worker killed in the moment after it forked its executor (or scheduler):
    the kernel sends the child nothing for a parent already dead, and the
    orphan would run on unseen, taking jobs."""
    survived = tmp_path / "survived"
    code = (
        "import os, sys, time\n"
        "from service.executor import die_with_parent\n"
        "parent = os.getpid()\n"
        "child = os.fork()\n"
        "if child == 0:\n"
        "    while os.getppid() == parent:\n"
        "        time.sleep(0.01)\n"  # until the parent is gone
        "    die_with_parent(parent)\n"
        "    open(sys.argv[1], 'w').write('survived')\n"
        "    os._exit(0)\n"
        "print(child, flush=True)\n"
        "os._exit(0)\n"
    )
    run = subprocess.run([sys.executable, "-c", code, str(survived)], cwd=processes.ROOT, capture_output=True,
                         text=True, check=True)
    orphan = int(run.stdout)
    wait_for(lambda: chaos.ended(orphan), what="the orphan to die")
    assert not survived.exists()


def test_a_killed_worker_leaves_no_scheduler_process_behind(worker_process):
    supervisor = psutil.Process(worker_process.pid)
    # RQ's scheduler: the child that stays in the worker's process group (the executor leads its own).
    scheduler = wait_for(
        lambda: next((child for child in supervisor.children() if os.getpgid(child.pid) == os.getpgid(supervisor.pid)), None),
        what="the worker's scheduler process",
    )
    worker_process.kill()  # SIGKILL: no handler runs
    worker_process.wait()
    try:
        wait_for(lambda: chaos.ended(scheduler), what="the scheduler to die")
    finally:
        with contextlib.suppress(psutil.Error):
            scheduler.kill()  # an orphan must not outlive a failed test either


def test_a_stop_that_reaches_the_executor_after_its_job_ended_puts_the_next_one_back(settings, connection):
    """RQ's stop checks that the job runs, then kills the executor. If that job ends
    in between and the next one begins, the next one is killed: it goes back to the
    front of its queue, rather than fail as if it had crashed."""
    from rq.command import handle_stop_job_command

    queue = Queue("default", connection=connection, serializer=JSONSerializer, job_class=ServiceJob)
    first = queue.enqueue("jobs.demo.sleep", 0.3)
    second = queue.enqueue("jobs.demo.sleep", 30)
    worker = build_worker(settings)
    worker.register_birth()
    kill = worker.kill_horse

    def kill_once_the_next_job_runs(*args, **kwargs):  # the race, made to happen every time
        wait_for(lambda: worker._current.get() == second.id, what="the next job to start")
        kill(*args, **kwargs)

    worker.kill_horse = kill_once_the_next_job_runs

    def stop_the_first():
        wait_for(lambda: worker._current is not None and worker._current.get() == first.id, what="the first job")
        handle_stop_job_command(worker, {"job_id": first.id})

    stopper = threading.Thread(target=stop_the_first)
    stopper.start()
    try:
        worker._run_executor(burst=True)
    finally:
        stopper.join()
        worker.register_death()
    assert fetch_job(first.id, connection).get_status().value == "finished"
    put_back = fetch_job(second.id, connection)
    assert put_back.get_status().value == "queued", _failure(connection, second.id)
    assert put_back.meta["interrupted"]["reason"] == f"its executor was killed to stop job {first.id}, which had just ended"
    assert connection.lrange("rq:queue:default", 0, -1) == [second.id.encode()]


def test_a_worker_stopped_while_it_starts_stops_cleanly_and_leaves_no_process(connection, redis_url, tmp_path):
    """SIGTERM the moment the worker has forked RQ's scheduler, before its first
    job: it stops as on any SIGTERM, its scheduler with it, and says so."""
    log = tmp_path / "worker.log"
    with _worker(redis_url, log, SIGTERM_WHILE_STARTING="1") as worker:
        try:
            assert worker.wait(timeout=30) == 0, log.read_text()[-2000:]
            wait_for(lambda: not _group_alive(worker.pid), timeout=10, what="the worker's scheduler to stop")
        finally:
            if _group_alive(worker.pid):
                os.killpg(worker.pid, signal.SIGKILL)
    assert any(event.get("event") == "worker.stopped" for event in chaos.log_events(log))
    assert connection.scard("rq:workers") == 0


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def test_each_job_and_the_programs_it_starts_find_its_id_in_the_environment(connection, redis_url, tmp_path):
    with _worker(redis_url, tmp_path / "worker.log"):
        job_ids = [_enqueue(connection, "environment") for _ in range(3)]
        wait_for(lambda: set(chaos.statuses(connection, job_ids).values()) == {"finished"}, timeout=30,
                 what="the jobs to run")
        [worker_key] = connection.smembers("rq:workers")
    worker_name = worker_key.decode().removeprefix("rq:worker:")
    seen = [fetch_job(job_id, connection).return_value() for job_id in job_ids]
    for job_id, environment in zip(job_ids, seen):
        assert environment == {"RQ_JOB_ID": job_id, "RQ_WORKER_ID": worker_name,
                               "program's RQ_JOB_ID": job_id, "program's RQ_WORKER_ID": worker_name}


def test_running_job_after_job_does_not_grow_the_executor_s_environment():
    # glibc keeps every value ever given to setenv: a job id set that way for
    # each job would cost an executor about 90 bytes a job, for good.
    saved = os.environ.get("RQ_JOB_ID"), os.environ.get("RQ_WORKER_ID")
    environment = executor.JobEnvironment("worker.test")
    try:
        before = psutil.Process().memory_info().rss
        for _ in range(200_000):
            environment.set(str(uuid.uuid4()))
        grown_mb = (psutil.Process().memory_info().rss - before) / 2**20
        assert os.environ["RQ_JOB_ID"] == subprocess.run(
            ["sh", "-c", "echo $RQ_JOB_ID"], capture_output=True, text=True, check=True).stdout.strip()
    finally:
        for name, value in zip(("RQ_JOB_ID", "RQ_WORKER_ID"), saved):
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    assert grown_mb < 4, f"the environment grew {grown_mb:.1f} MB over 200,000 jobs"
