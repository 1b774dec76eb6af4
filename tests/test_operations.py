"""Operating the service: /ready, /metrics, structured logs, recovery sweeps, recycling workers."""
from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone
from dataclasses import replace

import pytest

from tests.conftest import bearer
from prometheus_client.parser import text_string_to_metric_families

from rq.suspension import resume, suspend

from service import logs, metrics, recovery
from service.embedded_redis import free_port
from service.queues import ServiceJob, ServiceQueue
from service.schedules import make_scheduler
from service.settings import Settings
from service.worker import build_worker
from tests import chaos
from tests.conftest import wait_for
from tests.processes import ROOT


def _metrics(client) -> dict[tuple[str, tuple], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_health_answers_without_redis(settings):
    from service import create_app

    app = create_app(replace(settings, redis_url=f"redis://127.0.0.1:{free_port()}/0"))
    assert app.test_client().get("/health").json == {"status": "ok"}


def test_ready_reports_each_part(client, settings, connection):
    answer = client.get("/ready")
    assert answer.status_code == 503
    checks = answer.json["checks"]
    assert checks["redis"]["ok"] and checks["eviction_policy"] == {"ok": True, "policy": "noeviction"}
    assert checks["workers"]["ok"] is False and checks["workers"]["fresh"] == 0
    assert checks["scheduler"]["ok"] is False

    worker = build_worker(settings)
    worker.register_birth()
    scheduler = make_scheduler(connection, settings)
    scheduler.register_birth()
    answer = client.get("/ready")
    assert answer.status_code == 200, answer.json
    assert answer.json["status"] == "ready"
    assert answer.json["checks"]["workers"]["fresh"] == 1
    assert answer.json["checks"]["scheduler"] == {"ok": True, "alive": 1}

    scheduler.register_death()
    worker.register_death()
    assert client.get("/ready").status_code == 503


def test_a_worker_without_a_recent_heartbeat_does_not_count_as_ready(client, settings, connection):
    worker = build_worker(settings)
    worker.register_birth()
    make_scheduler(connection, settings).register_birth()
    stale = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime(time.time() - settings.orphan_timeout - 5))
    connection.hset(worker.key, "last_heartbeat", stale)
    checks = client.get("/ready").json["checks"]
    assert checks["workers"] == {**checks["workers"], "ok": False, "fresh": 0, "registered": 1}


def test_without_redis_the_api_answers_503_within_2_seconds(settings):
    from service import create_app

    app = create_app(replace(settings, redis_url=f"redis://127.0.0.1:{free_port()}/0"))
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = bearer()["Authorization"]
    for method, path, body in (("post", "/jobs", {"job": "demo.add", "args": [1, 2]}), ("get", "/ready", None),
                               ("get", "/queues", None)):
        started = time.monotonic()
        response = client.open(path, method=method.upper(), json=body)
        assert time.monotonic() - started < 2
        assert response.status_code == 503, (path, response.status_code)
        if path != "/ready":
            assert response.content_type == "application/problem+json"
            assert response.headers["Retry-After"] == "5"
            assert "unreachable" in response.json["detail"]
    ready = client.get("/ready").json
    assert ready["checks"]["redis"]["ok"] is False
    metrics = _metrics(client)
    assert metrics[("rq_redis_up", ())] == 0


def test_metrics_count_queues_jobs_durations_and_workers(client, settings, connection, work):
    for _ in range(2):
        client.post("/jobs", json={"job": "demo.add", "args": [1, 2]})
    client.post("/jobs", json={"job": "demo.fail", "kwargs": {"message": "no"}, "retry": {"max": 0}})
    work()
    for _ in range(3):
        client.post("/jobs", json={"job": "demo.add", "args": [1, 2], "queue": "low"})
    time.sleep(1.1)
    worker = build_worker(settings)
    worker.register_birth()

    metrics = _metrics(client)
    assert metrics[("rq_redis_up", ())] == 1
    assert metrics[("rq_queue_depth", (("queue", "low"),))] == 3
    assert metrics[("rq_queue_depth", (("queue", "default"),))] == 0
    assert metrics[("rq_queue_oldest_job_age_seconds", (("queue", "low"),))] >= 1
    assert metrics[("rq_queue_oldest_job_age_seconds", (("queue", "high"),))] == 0
    assert metrics[("rq_jobs_finished_total", (("job", "demo.add"),))] == 2
    assert metrics[("rq_jobs_failed_total", (("job", "demo.fail"),))] == 1
    assert metrics[("rq_jobs_failed_total", (("job", "demo.add"),))] == 0
    assert metrics[("rq_jobs_retried_total", (("job", "demo.add"),))] == 0
    assert metrics[("rq_job_duration_seconds_count", (("job", "demo.add"),))] == 2
    assert metrics[("rq_job_duration_seconds_bucket", (("job", "demo.add"), ("le", "+Inf")))] == 2
    assert metrics[("rq_job_duration_seconds_bucket", (("job", "demo.add"), ("le", "1.0")))] == 2
    assert metrics[("rq_jobs_failed_kept", (("queue", "default"),))] == 1
    assert sum(value for (name, _), value in metrics.items() if name == "rq_workers") == 1
    worker.register_death()


def test_a_busy_worker_writes_its_counts_once_a_second_in_one_batch(client, connection):
    clock = [100.0]
    tally = metrics.FinishedTally(period=1.0, clock=lambda: clock[0])
    for duration in (0.004, 0.03, 0.2):
        tally.add("demo.add", duration)
    tally.add("demo.sleep", None)
    assert not tally.due()
    clock[0] += 1.0
    assert tally.due()
    with connection.pipeline() as pipe:
        tally.write(pipe)
        pipe.execute()
    assert not tally.pending

    counted = _metrics(client)
    assert counted[("rq_jobs_finished_total", (("job", "demo.add"),))] == 3
    assert counted[("rq_jobs_finished_total", (("job", "demo.sleep"),))] == 1
    assert counted[("rq_job_duration_seconds_count", (("job", "demo.add"),))] == 3
    assert counted[("rq_job_duration_seconds_bucket", (("job", "demo.add"), ("le", "0.01")))] == 1
    assert counted[("rq_job_duration_seconds_bucket", (("job", "demo.add"), ("le", "0.25")))] == 3
    assert abs(counted[("rq_job_duration_seconds_sum", (("job", "demo.add"),))] - 0.234) < 1e-9


@pytest.mark.parametrize("entry_point", ["worker", "scheduler"])
def test_the_worker_and_the_scheduler_load_nothing_only_the_web_needs(entry_point):
    # Each of these would cost every worker and scheduler process its memory for nothing.
    web_only = ("flask", "apiflask", "prometheus_client", "rq_dashboard", "gevent")
    probe = f"import sys, {entry_point}; print(' '.join(m for m in {web_only!r} if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                            cwd=ROOT).stdout.split()
    assert loaded == []


def test_a_suspended_worker_takes_no_job_until_resumed(client, connection, worker_process):
    suspend(connection)
    wait_for(lambda: connection.hget(next(iter(connection.smembers("rq:workers"))), "state") == b"suspended",
             what="the worker to notice the suspension")
    job_id = client.post("/jobs", json={"job": "demo.add", "args": [1, 2]}).json["id"]
    assert client.get(f"/jobs/{job_id}").json["status"] == "queued"
    resume(connection)
    assert client.get(f"/jobs/{job_id}?wait=15").json["status"] == "finished"


def _claimed_by_a_worker(settings, connection, job_id: str):
    """Take and start `job_id` as a worker would; the worker and the job's execution."""
    worker = build_worker(settings)
    worker.register_birth()
    worker.dequeuer.register()
    taken = worker.dequeuer.take([ServiceQueue(name, connection=connection).key for name in settings.queues])
    assert taken and taken.job_id == job_id
    job, _ = worker._load(taken)
    return worker, worker._claim(job)


def _claimed_by_a_worker_that_then_dies(settings, connection, job_id: str):
    """Take and start `job_id` as a worker would, then leave it as a killed worker would."""
    worker, execution = _claimed_by_a_worker(settings, connection, job_id)
    # The heartbeat stops: as if the worker had been SIGKILLed long enough ago.
    connection.hset(execution.key, "last_heartbeat", time.time() - settings.orphan_timeout - 1)
    return worker


def test_a_sweep_requeues_the_job_of_a_dead_worker_then_fails_it_if_it_keeps_killing_workers(
    client, settings, connection, work
):
    job_id = client.post("/jobs", json={"job": "demo.add", "args": [1, 2]}).json["id"]
    sweeper = recovery.Recovery(connection, settings, job_class=ServiceJob, queue_class=ServiceQueue)
    for attempt in range(1, settings.job_max_abandons + 1):
        _claimed_by_a_worker_that_then_dies(settings, connection, job_id)
        assert client.get(f"/jobs/{job_id}").json["status"] == "started"
        report = sweeper.sweep(force=True)
        assert report.requeued == [job_id]
        assert client.get(f"/jobs/{job_id}").json["status"] == "queued"
        assert connection.lindex("rq:queue:default", 0) == job_id.encode()
        interrupted = ServiceJob.fetch(job_id, connection).get_meta()["interrupted"]
        assert interrupted["abandoned"] == attempt
        assert "stopped sending heartbeats" in interrupted["reason"]
    _claimed_by_a_worker_that_then_dies(settings, connection, job_id)
    assert sweeper.sweep(force=True).failed == [job_id]
    job = client.get(f"/jobs/{job_id}").json
    assert job["status"] == "failed"
    assert job["error"]["type"] == "AbandonedJobError"
    assert not connection.zrange("rq:wip:default", 0, -1)


@pytest.mark.parametrize("gone", [False, True])
def test_a_dead_worker_s_job_leaves_no_record_of_its_run_behind_once_swept(client, settings, connection, gone):
    """The set of a job's executions gets no TTL of its own at a start: whatever
    becomes of the job, a sweep must not leave it (or the worker's) behind."""
    sweeper = recovery.Recovery(connection, settings, job_class=ServiceJob, queue_class=ServiceQueue)
    job_id = client.post("/jobs", json={"job": "demo.add", "args": [1, 2]}).json["id"]
    worker = _claimed_by_a_worker_that_then_dies(settings, connection, job_id)
    run_keys = [f"rq:executions:{job_id}", f"rq:worker:{worker.name}:executions"]
    assert connection.exists(*run_keys) == 2
    # Recovery may find the execution's record (and the worker's name in it)
    # expired: the worker's set must expire of itself.
    assert connection.ttl(run_keys[1]) > 0
    if gone:  # expired or deleted by hand, not through RQ's delete
        connection.delete(f"rq:job:{job_id}")
    report = sweeper.sweep(force=True)
    assert report.requeued == ([] if gone else [job_id])
    assert connection.exists(*run_keys) == 0
    assert not connection.zrange("rq:wip:default", 0, -1)
    assert not connection.keys("rq:execution:*")


def test_a_sweep_queues_the_dependents_a_worker_left_ready_when_it_died(client, settings, connection):
    """RQ records a job's success and moves its dependents to its ready registry in
    one transaction, and queues them after it: a worker killed in between."""
    parent = client.post("/jobs", json={"job": "demo.add", "args": [1, 2]}).json["id"]
    child = client.post("/jobs", json={"job": "demo.add", "args": [3, 4], "depends_on": [parent]}).json["id"]
    connection.delete("rq:queue:default")
    job = ServiceJob.fetch(parent, connection)
    with connection.pipeline() as pipe:  # RQ's transaction, as far as the dependents go
        pipe.watch(job.dependents_key)
        ServiceQueue("default", connection=connection).move_dependents_to_ready(job, pipeline=pipe)
        pipe.hset(job.key, "status", "finished")
        pipe.execute()
    assert client.get(f"/jobs/{child}").json["status"] == "ready_to_enqueue"
    sweeper = recovery.Recovery(connection, settings, job_class=ServiceJob, queue_class=ServiceQueue)
    assert sweeper.sweep(force=True).ready == [child]
    assert client.get(f"/jobs/{child}").json["status"] == "queued"
    assert connection.lrange("rq:queue:default", 0, -1) == [child.encode()]
    assert not sweeper.sweep(force=True), "queued once"


def test_a_job_failed_for_killing_its_workers_gives_its_concurrency_slot_to_the_next(
    client, settings, connection, monkeypatch
):
    monkeypatch.setenv("HTTP_HOST_CONCURRENCY", "1")  # read where jobs are enqueued: here
    call = {"job": "http.request", "kwargs": {"url": "http://example.com/x"}}
    first, waiting = (client.post("/jobs", json=call).json["id"] for _ in range(2))
    assert client.get(f"/jobs/{waiting}").json["status"] == "rate_limited"
    no_second_chance = replace(settings, job_max_abandons=0)
    _claimed_by_a_worker_that_then_dies(no_second_chance, connection, first)
    sweeper = recovery.Recovery(connection, no_second_chance, job_class=ServiceJob, queue_class=ServiceQueue)
    assert sweeper.sweep(force=True).failed == [first]
    assert client.get(f"/jobs/{waiting}").json["status"] == "queued"


def test_rq_cleaning_its_registries_long_after_a_worker_died_leaves_its_job_to_recovery(
    client, settings, connection
):
    """rq-dashboard, `rq info` and GET /queues run RQ's cleanup of the started
    registry, which fails any job whose heartbeat expiry has passed. With no
    worker up meanwhile, a killed worker's job must still be requeued, with its
    retries untouched, not failed."""
    from rq.registry import StartedJobRegistry, clean_registries

    job_id = client.post("/jobs", json={"job": "demo.add", "args": [1, 2], "retry": {"max": 0}}).json["id"]
    _claimed_by_a_worker_that_then_dies(settings, connection, job_id)
    an_hour_later = time.time() + 3600  # far past the heartbeat TTL
    registry = StartedJobRegistry("default", connection=connection, job_class=ServiceJob)
    registry.cleanup(timestamp=an_hour_later)
    clean_registries(ServiceQueue("default", connection=connection))
    assert client.get("/queues").json["queues"][1]["started"] == 1
    assert client.get(f"/jobs/{job_id}").json["status"] == "started"
    sweeper = recovery.Recovery(connection, settings, job_class=ServiceJob, queue_class=ServiceQueue)
    assert sweeper.sweep(force=True).requeued == [job_id]
    assert client.get(f"/jobs/{job_id}").json["status"] == "queued"


def test_a_host_whose_clock_is_off_leaves_running_jobs_to_their_workers(client, settings, connection):
    """Heartbeats carry their writer's time. A sweeper whose clock is an hour
    ahead would find every live worker's beat an hour old and take its job:
    instead it sweeps nothing, nor lets RQ's cleanup of the started registry run."""
    job_id = client.post("/jobs", json={"job": "demo.add", "args": [1, 2]}).json["id"]
    worker, execution = _claimed_by_a_worker(settings, connection, job_id)
    an_hour_ahead = recovery.Recovery(connection, settings, job_class=ServiceJob, queue_class=ServiceQueue,
                                      clock=lambda: time.time() + 3600)
    report = an_hour_ahead.sweep(force=True)
    assert (report.skipped, not report) == (True, True)
    assert 3590 < report.clock_off < 3610
    # By this host's clock the heartbeat's expiry is long past, as RQ's cleanup reads it.
    connection.zadd("rq:wip:default", {f"{job_id}:{execution.id}": time.time() - 1})
    worker.recovery = an_hour_ahead
    worker.clean_registries()
    assert client.get(f"/jobs/{job_id}").json["status"] == "started"
    # A few seconds off is within what heartbeats allow: such a host sweeps.
    near = recovery.Recovery(connection, settings, job_class=ServiceJob, queue_class=ServiceQueue,
                             clock=lambda: time.time() + settings.worker_heartbeat_interval / 2)
    assert near.sweep(force=True).clock_off is None


def test_an_orphan_timeout_a_heartbeat_cannot_beat_is_refused_at_start(monkeypatch):
    monkeypatch.setenv("WORKER_HEARTBEAT_INTERVAL", "30")
    monkeypatch.setenv("ORPHAN_TIMEOUT", "30")
    with pytest.raises(SystemExit, match=r"ORPHAN_TIMEOUT \(30\) must be longer than WORKER_HEARTBEAT_INTERVAL"):
        Settings.from_env()


def test_a_sweep_gives_back_what_a_dead_worker_had_taken(client, settings, connection):
    job_id = client.post("/jobs", json={"job": "demo.add", "args": [1, 2], "queue": "high"}).json["id"]
    worker = build_worker(settings)
    worker.register_birth()
    worker.dequeuer.register()
    taken = worker.dequeuer.take([ServiceQueue("high", connection=connection).key])
    assert (taken.queue_key, taken.job_id) == ("rq:queue:high", job_id)
    sweeper = recovery.Recovery(connection, settings, job_class=ServiceJob, queue_class=ServiceQueue)
    assert not sweeper.sweep(force=True)  # its worker is alive
    stale = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime(time.time() - settings.orphan_timeout - 1))
    connection.hset(worker.key, "last_heartbeat", stale)
    assert sweeper.sweep(force=True).dequeued == [job_id]
    assert connection.lrange("rq:queue:high", 0, -1) == [job_id.encode()]
    # The worker was only slow, not dead: it must not run the job it no longer holds.
    job, _ = ServiceJob.fetch(job_id, connection), None
    assert worker._claim(job) is None


def test_sweeps_wait_until_heartbeats_can_be_trusted_after_an_outage(settings, connection):
    sweeper = recovery.Recovery(connection, settings, job_class=ServiceJob, queue_class=ServiceQueue)
    sweeper.note_outage()
    assert sweeper.sweep().skipped


def test_processes_log_one_json_event_per_step_with_the_job_id_and_name(redis_url, connection, tmp_path):
    with chaos.web(redis_url, tmp_path / "web.log") as base, \
            chaos.worker(redis_url, tmp_path / "worker.log"), chaos.scheduler(redis_url, tmp_path / "scheduler.log"):
        from tests import processes

        job_id = processes.session().post(f"{base}/jobs", json={"job": "demo.add", "args": [1, 2]}, timeout=5).json()["id"]
        wait_for(lambda: chaos.statuses(connection, [job_id])[job_id] == "finished", timeout=30, what="the job")
        wait_for(lambda: any(e.get("process") == "scheduler" for e in chaos.log_events(tmp_path / "scheduler.log")),
                 timeout=30, what="the scheduler to log")
    web, worker = chaos.log_events(tmp_path / "web.log"), chaos.log_events(tmp_path / "worker.log")
    [enqueued] = [e for e in web if e.get("event") == "job.enqueued"]
    assert enqueued["job_id"] == job_id and enqueued["job"] == "demo.add" and enqueued["process"] == "web"
    for name in ("job.started", "job.finished"):
        [event] = [e for e in worker if e.get("event") == name]
        assert event["job_id"] == job_id and event["job"] == "demo.add" and event["process"] == "worker"
        assert event["time"] and event["level"] == "INFO"
    assert [e for e in worker if e.get("event") == "job.finished"][0]["duration"] >= 0


def test_the_web_still_logs_every_request_after_gunicorn_reloads_on_hup(redis_url, tmp_path):
    """A HUP makes gunicorn's master set its logging up again and fork new workers
    from the app it loaded once: those must log like the first ones."""
    import signal

    import psutil

    from tests import processes

    log_path = tmp_path / "web.log"
    with chaos.web_server(redis_url, log_path) as (base, master):
        first = {child.pid for child in psutil.Process(master.pid).children()}
        master.send_signal(signal.SIGHUP)

        def replaced():
            now = {child.pid for child in psutil.Process(master.pid).children()}
            return len(now) == 2 and not now & first

        wait_for(replaced, timeout=30, what="gunicorn to replace its workers")
        session = processes.session()
        ids = {session.post(f"{base}/jobs", json={"job": "demo.add", "args": [1, 2]}, timeout=5).json()["id"]
               for _ in range(6)}
        logged = lambda: {e.get("job_id") for e in chaos.log_events(log_path) if e.get("event") == "job.enqueued"}
        wait_for(lambda: ids <= logged(), timeout=10, what="a log line for each enqueue")


def test_a_log_line_is_one_json_object_with_the_event_fields_and_the_traceback():
    formatter = logs.json_formatter("worker")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        error = sys.exc_info()
    record = logging.getLogger("service.worker").makeRecord(
        "service.worker", logging.ERROR, __file__, 1, "job.failed %s", ("demo.add",), error,
        extra={"event": "job.failed", "job_id": "a1", "due": datetime(2026, 3, 1, tzinfo=timezone.utc)},
    )
    line = formatter.format(record)
    assert "\n" not in line
    fields = json.loads(line)
    assert fields["level"] == "ERROR" and fields["logger"] == "service.worker" and fields["process"] == "worker"
    assert fields["message"] == "job.failed demo.add" and fields["event"] == "job.failed" and fields["job_id"] == "a1"
    assert fields["due"] == "2026-03-01T00:00:00+00:00"
    assert fields["exc_info"].startswith("Traceback") and "RuntimeError: boom" in fields["exc_info"]
    assert datetime.fromisoformat(fields["time"]).tzinfo is not None
    assert "args" not in fields and "msg" not in fields


def _event_line(process: str, name: str, **fields) -> dict:
    """The JSON line `logs.event` writes for `name` and `fields`, as a process's formatter renders it."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.json_formatter(process))
    logger = logging.getLogger(f"tests.event_line.{process}")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        logs.event(logger, name, **fields)
    finally:
        logger.removeHandler(handler)
    return json.loads(stream.getvalue())


def test_an_event_puts_its_fields_at_the_top_of_its_line():
    fields = _event_line("web", "job.enqueued", job_id="a1", job="demo.add", status=202, at=datetime(2026, 3, 1))
    assert fields["event"] == "job.enqueued" and fields["message"] == "job.enqueued demo.add a1"
    assert (fields["job_id"], fields["job"], fields["status"], fields["at"]) == ("a1", "demo.add", 202, "2026-03-01T00:00:00")
    assert set(fields) == {"level", "logger", "message", "process", "event", "job_id", "job", "status", "at", "time"}


def test_an_event_about_no_job_has_its_name_alone_for_a_message():
    fields = _event_line("worker", "worker.executor_died", level=logging.WARNING, pid=7, job_id=None)
    assert fields["message"] == "worker.executor_died"
    assert fields["job_id"] is None and fields["level"] == "WARNING"


def test_the_worker_runs_each_batch_of_worker_max_jobs_in_a_fresh_executor(redis_url, connection, settings, tmp_path):
    token = uuid.uuid4().hex
    job_ids = chaos.enqueue_canaries(connection, settings, 5, token=token)
    log = tmp_path / "worker.log"
    with chaos.worker(redis_url, log, WORKER_MAX_JOBS="2") as worker:
        wait_for(lambda: set(chaos.statuses(connection, job_ids).values()) == {"finished"}, timeout=60,
                 what="every job to finish")
        wait_for(lambda: len([e for e in chaos.log_events(log) if e.get("event") == "worker.executor_recycled"]) >= 2,
                 timeout=30, what="the executor to be recycled")
        assert worker.poll() is None
        events = chaos.log_events(log)
    started = [e for e in events if e.get("event") == "worker.started"]
    assert [e["pid"] for e in started] == [worker.pid], "one worker process throughout"
    executors = [e["pid"] for e in events if e.get("event") == "worker.executor_started"]
    assert len(set(executors)) == len(executors) >= 3, "a fresh executor after every 2 jobs"
    assert worker.pid not in executors
    assert chaos.Records(connection, token).runs() == {job_id: 1 for job_id in job_ids}


def test_an_unreadable_job_record_fails_with_its_reason_and_the_worker_goes_on(client, connection, work):
    connection.hset("rq:job:garbled", mapping={"data": b"not zlib, not json", "status": "queued", "origin": "default",
                                               "created_at": "2026-01-01T00:00:00.000000Z"})
    connection.rpush("rq:queue:default", "garbled")
    good = client.post("/jobs", json={"job": "demo.add", "args": [1, 2]}).json["id"]
    work()
    assert client.get(f"/jobs/{good}").json["status"] == "finished"
    assert connection.hget("rq:job:garbled", "status") == b"failed"
    assert connection.zscore("rq:failed:default", "garbled") is not None
    assert not list(connection.scan_iter("rq:svc:dequeued:*"))


@pytest.mark.parametrize("queues", ["high,default,low", "low"])
def test_an_idle_worker_takes_a_job_on_any_of_its_queues_at_once(redis_url, connection, settings, tmp_path, queues):
    # Polling alone would leave a job on the last queue waiting up to 30 s here. Several
    # queues wait on the doorbell, one on the queue itself; either way the wait and
    # the take that reads the job's record go in one round trip.
    with chaos.worker(redis_url, tmp_path / "worker.log", RQ_QUEUES=queues, DEQUEUE_POLL_INTERVAL="30"):
        wait_for(lambda: connection.scard("rq:workers") == 1, what="the worker to register")
        token = uuid.uuid4().hex
        for _ in range(3):
            enqueued = time.monotonic()
            [job_id] = chaos.enqueue_canaries(connection, settings, 1, token=token, queue="low")
            wait_for(lambda: chaos.statuses(connection, [job_id])[job_id] == "finished", timeout=10, interval=0.01,
                     what="the job on the last queue to run")
            assert time.monotonic() - enqueued < 5


def test_a_queued_id_without_a_record_is_skipped_and_the_worker_goes_on(client, connection, work):
    connection.rpush("rq:queue:default", "ghost")  # its record expired or was deleted
    good = client.post("/jobs", json={"job": "demo.add", "args": [1, 2]}).json["id"]
    finished = client.post("/jobs", json={"job": "demo.add", "args": [2, 2]}).json["id"]
    work()
    connection.rpush("rq:queue:default", finished)  # an id met again after its job ended
    again = client.post("/jobs", json={"job": "demo.add", "args": [3, 3]}).json["id"]
    work()
    assert [client.get(f"/jobs/{job_id}").json["status"] for job_id in (good, finished, again)] == ["finished"] * 3
    assert client.get(f"/jobs/{finished}").json["result"] == 4
    assert not connection.llen("rq:queue:default")
    assert not list(connection.scan_iter("rq:svc:dequeued:*"))


def test_a_job_run_again_by_the_same_executor_keeps_its_heartbeat(client, settings, connection):
    """A retry can run a job again in the executor that ran it: the supervisor
    must beat for the new run's execution, or a sweep takes the job from a live
    worker and it runs twice at once."""
    from service.executor import CurrentJob

    job_id = client.post("/jobs", json={"job": "demo.add", "args": [1, 2]}).json["id"]
    worker = build_worker(settings)
    worker.register_birth()
    worker.dequeuer.register()
    worker._current = current = CurrentJob()
    queue_keys = [ServiceQueue(name, connection=connection).key for name in settings.queues]

    def run_it():
        job, _ = worker._load(worker.dequeuer.take(queue_keys))
        current.set(job.id)
        execution = worker._claim(job)
        stale = time.time() - settings.orphan_timeout - 1
        connection.hset(execution.key, "last_heartbeat", stale)
        worker._last_beat = float("-inf")  # a beat is due
        worker._tick()
        assert float(connection.hget(execution.key, "last_heartbeat")) > stale, "the running execution got no beat"
        return job, execution

    job, first = run_it()
    # The run fails and RQ retries it at once: its execution ends, the job is queued again.
    with connection.pipeline() as pipe:
        first.delete(job=job, pipeline=pipe)
        pipe.execute()
    current.clear()
    ServiceQueue("default", connection=connection).enqueue_job(job)
    run_it()
