"""When Redis fails: killed, down for a while, full, or configured to evict.

Each test runs its own Redis server (the session's one is left alone), and the
real processes (gunicorn, worker.py, scheduler.py) against it.
"""
from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field, replace

import pytest
from redis import Redis

from service import scripted
from service.embedded_redis import EmbeddedRedis
from tests import chaos, processes
from tests.conftest import wait_for


class OwnRedis:
    """A Redis server for one test, that the test may kill and start again (same port, same data)."""

    def __init__(self, data_dir, appendfsync: str = "everysec"):
        self.data_dir = data_dir
        self.appendfsync = appendfsync
        self.server = EmbeddedRedis(data_dir, appendfsync=appendfsync)
        self.url = self.server.start()
        self.port = self.server.port

    def client(self) -> Redis:
        return Redis.from_url(self.url, socket_timeout=5)

    def kill(self) -> None:
        self.server.process.kill()
        self.server.process.wait()

    def start(self) -> None:
        self.server = EmbeddedRedis(self.data_dir, port=self.port, appendfsync=self.appendfsync)
        self.server.start()

    def stop(self) -> None:
        self.server.stop()


@pytest.fixture
def own_redis(tmp_path, request):
    """The test's own Redis; `@pytest.mark.appendfsync("always")` for one that fsyncs before it answers."""
    marker = request.node.get_closest_marker("appendfsync")
    redis = OwnRedis(tmp_path / "redis", *(marker.args if marker else ()))
    yield redis
    redis.stop()


@pytest.fixture
def own_settings(settings, own_redis):
    return replace(settings, redis_url=own_redis.url)


@dataclass
class Load:
    """Clients POSTing jobs as fast as the API takes them, each answer noted."""

    base: str
    body: dict
    threads: int = 4
    accepted: list[tuple[float, str]] = field(default_factory=list)
    refused: list[tuple[float, int, float]] = field(default_factory=list)  # (when, status, seconds)
    errors: list[str] = field(default_factory=list)

    def __post_init__(self):
        self._stop = threading.Event()
        self._workers = [threading.Thread(target=self._post, daemon=True) for _ in range(self.threads)]

    def _post(self):
        session = processes.session()
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                response = session.post(f"{self.base}/jobs", json=self.body, timeout=10)
            except OSError as error:
                self.errors.append(repr(error))
                continue
            took = time.monotonic() - started
            if 200 <= response.status_code < 300:
                self.accepted.append((started, response.json()["id"]))
            else:
                self.refused.append((started, response.status_code, took))
                time.sleep(0.02)

    def __enter__(self):
        for thread in self._workers:
            thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for thread in self._workers:
            thread.join(15)


def test_the_embedded_redis_keeps_an_append_only_file_and_never_evicts(connection):
    config = connection.config_get("append*") | connection.config_get("maxmemory-policy")
    assert config["appendonly"] == "yes"
    assert config["appendfsync"] == "everysec"
    assert config["maxmemory-policy"] == "noeviction"


@pytest.mark.appendfsync("always")
def test_every_job_acknowledged_before_redis_is_killed_exists_after_its_restart(own_redis, tmp_path):
    """5. Redis killed with SIGKILL during enqueue load, then restarted: every job whose POST got
    a 2xx exists afterwards; while it is down, the API answers 503 within 2 s.

    With `appendfsync everysec` Redis answers before it writes the file whenever
    the last second's fsync is still running, and a kill then loses those writes
    (the README's Redis settings): `always` is the setting that promises this."""
    with chaos.web(own_redis.url, tmp_path / "web.log") as base:
        with Load(base, {"job": "demo.add", "args": [1, 2]}) as load:
            wait_for(lambda: len(load.accepted) >= 200, timeout=30, what="some jobs accepted")
            killed_at = time.monotonic()
            own_redis.kill()
            wait_for(lambda: any(when > killed_at for when, *_ in load.refused), timeout=10, what="a 503")
            time.sleep(1)
            own_redis.start()
            restarted_at = time.monotonic()
            wait_for(lambda: any(when > restarted_at for when, _ in load.accepted), timeout=30,
                     what="the API to accept jobs again")
            time.sleep(0.5)
    accepted_ids = [job_id for _, job_id in load.accepted]
    before = sum(1 for when, _ in load.accepted if when < killed_at)
    client = own_redis.client()
    with client.pipeline(transaction=False) as pipe:
        for job_id in accepted_ids:
            pipe.exists(f"rq:job:{job_id}")
        exists = pipe.execute()
    queued = {raw.decode() for raw in client.lrange("rq:queue:default", 0, -1)}
    missing = [job_id for job_id, found in zip(accepted_ids, exists) if not found]
    print(f"\naccepted={len(accepted_ids)} (before the kill: {before}) refused={len(load.refused)} "
          f"slowest refusal={max(took for *_, took in load.refused):.3f}s missing={len(missing)}")
    assert not missing
    assert set(accepted_ids) <= queued
    assert load.refused and {status for _, status, _ in load.refused} == {503}
    assert max(took for *_, took in load.refused) < 2
    assert not load.errors


def _redis_down_for_a_while(own_redis, settings, tmp_path, outage: float):
    token = uuid.uuid4().hex
    session = processes.session()
    with chaos.web(own_redis.url, tmp_path / "web.log") as base, \
            chaos.worker(own_redis.url, tmp_path / "worker.log") as worker, \
            chaos.scheduler(own_redis.url, tmp_path / "scheduler.log") as scheduler:
        wait_for(lambda: session.get(f"{base}/ready", timeout=5).status_code == 200, timeout=30,
                 what="the service to be ready")
        client = own_redis.client()
        schedulers_before = set(client.scan_iter("rq:scheduler_instance:*"))
        worker_pids = {p.pid for p in chaos.tree(worker.pid)}
        processes_before = [worker, scheduler]

        own_redis.kill()
        down_at = time.monotonic()
        slowest = 0.0
        while time.monotonic() - down_at < outage:
            for method, path, body in (("post", "/jobs", {"job": "demo.add", "args": [1, 2]}), ("get", "/ready", None)):
                started = time.monotonic()
                response = session.request(method, f"{base}{path}", json=body, timeout=10)
                slowest = max(slowest, time.monotonic() - started)
                assert response.status_code == 503, (path, response.status_code, response.text)
            assert session.get(f"{base}/health", timeout=5).status_code == 200
            assert all(process.poll() is None for process in processes_before)
            time.sleep(0.5)

        own_redis.start()
        back_at = time.monotonic()
        client = own_redis.client()

        def worker_beats_again():
            from service.heartbeats import worker_beats

            return any(beat.fresh(1.0) for beat in worker_beats(client))

        def scheduler_back():
            return set(client.scan_iter("rq:scheduler_instance:*")) - schedulers_before

        wait_for(worker_beats_again, timeout=30, interval=0.1, what="the worker to reconnect")
        worker_back = chaos.elapsed(back_at)
        wait_for(scheduler_back, timeout=30, interval=0.1, what="the scheduler to reconnect")
        scheduler_back_after = chaos.elapsed(back_at)
        [job_id] = chaos.enqueue_canaries(client, replace(settings, redis_url=own_redis.url), 1, token=token)
        wait_for(lambda: chaos.statuses(client, [job_id])[job_id] == "finished", timeout=30,
                 what="a job enqueued after the outage to run")
        wait_for(lambda: session.get(f"{base}/ready", timeout=5).status_code == 200, timeout=30,
                 what="the service to be ready again")
        ready_after = chaos.elapsed(back_at)
        assert all(process.poll() is None for process in processes_before), "a process exited"
        assert worker_pids <= {p.pid for p in chaos.tree(worker.pid)}, "a worker process was replaced"
    print(f"\noutage={outage}s slowest answer while down={slowest:.3f}s worker back after {worker_back}s, "
          f"scheduler after {scheduler_back_after}s, /ready 200 after {ready_after}s")
    assert slowest < 2
    assert worker_back < 30 and scheduler_back_after < 30


def test_redis_down_for_a_while_gets_503s_and_every_process_reconnects(own_redis, settings, tmp_path):
    """6. Redis down (10 s here, 60 s in the full-size run): 503 within 2 s, never a 2xx; workers
    and schedulers reconnect by themselves within 30 s of its return; no process exits."""
    _redis_down_for_a_while(own_redis, settings, tmp_path, outage=10)


def test_an_executor_forked_just_before_redis_goes_away_waits_for_it(own_redis, own_settings, tmp_path):
    """Redis dies between the fork of an executor and its first command (the executor takes 2 s
    to start here): the executor waits for Redis as the rest of the worker does, instead of
    crashing and being forked again every second, and runs jobs once Redis is back."""
    log = tmp_path / "worker.log"
    env = chaos.worker_env(own_redis.url, EXECUTOR_SLOW_START="2")
    with processes.running([sys.executable, "-m", "tests.misbehaving_worker"], env, log):
        def events(name):
            return [event for event in chaos.log_events(log) if event.get("event") == name]

        wait_for(lambda: events("worker.executor_started"), timeout=30, what="an executor to be forked")
        own_redis.kill()
        [executor] = [event["pid"] for event in events("worker.executor_started")]
        wait_for(lambda: events("worker.executor_died") or any(e.get("pid") == executor for e in events("worker.redis_error")),
                 timeout=30, what="the executor to meet the outage")
        own_redis.start()
        client = own_redis.client()
        [job_id] = chaos.enqueue_canaries(client, own_settings, 1, token=uuid.uuid4().hex)
        wait_for(lambda: chaos.statuses(client, [job_id])[job_id] == "finished", timeout=30,
                 what="a job enqueued after the outage to run")
        assert events("worker.executor_died") == []
        assert [event["pid"] for event in events("worker.executor_started")] == [executor]


def test_a_scheduler_that_loses_redis_while_it_stores_its_schedules_waits_and_stores_them(own_redis, tmp_path):
    """The connection breaks on the first write of the declared schedules, and again on the
    client's retry: the scheduler waits for Redis and writes them, instead of exiting."""
    from service.schedules.store import state_key
    from tests.faults import ReplyCutter

    client = own_redis.client()
    with ReplyCutter(own_redis.url) as cutter:
        cutter.cut_reply_to(state_key("demo-tick").encode(), times=2)
        with chaos.scheduler(cutter.url, tmp_path / "scheduler.log") as scheduler:
            wait_for(lambda: client.exists(state_key("demo-tick")) or scheduler.poll() is not None, timeout=30,
                     what="the declared schedules to be stored")
            assert scheduler.poll() is None, (tmp_path / "scheduler.log").read_text()[-2000:]
            assert cutter.cuts == 2
            assert any(event.get("event") == "redis.lost" for event in chaos.log_events(tmp_path / "scheduler.log"))


def test_a_worker_that_loses_redis_while_it_starts_waits_and_starts(own_redis, own_settings, tmp_path):
    """The connection breaks on the worker's first command after its Redis check (RQ names its
    connection), and again on the client's retry: the worker waits for Redis, then runs jobs."""
    from tests.faults import ReplyCutter

    client = own_redis.client()
    log = tmp_path / "worker.log"
    with ReplyCutter(own_redis.url) as cutter:
        cutter.cut_reply_to(b"SETNAME", times=2)
        with chaos.worker(cutter.url, log) as worker:
            [job_id] = chaos.enqueue_canaries(client, own_settings, 1, token=uuid.uuid4().hex)
            wait_for(lambda: chaos.statuses(client, [job_id])[job_id] == "finished" or worker.poll() is not None,
                     timeout=30, what="the worker to run a job")
            assert worker.poll() is None, log.read_text()[-2000:]
            assert cutter.cuts == 2
            assert any(event.get("event") == "redis.lost" for event in chaos.log_events(log))


@pytest.mark.full_size
def test_redis_down_for_60_seconds(own_redis, settings, tmp_path):
    _redis_down_for_a_while(own_redis, settings, tmp_path, outage=60)


def test_a_full_redis_gets_503s_and_keeps_every_accepted_job(own_redis, own_settings, tmp_path):
    """7. Redis out of memory: enqueue answers 503, nothing is half-written, nothing is lost."""
    client = own_redis.client()
    session = processes.session()
    with chaos.web(own_redis.url, tmp_path / "web.log") as base, \
            chaos.worker(own_redis.url, tmp_path / "worker.log") as worker:
        used = client.info("memory")["used_memory"]
        client.config_set("maxmemory", used + 300_000)
        accepted, refused = [], []
        body = {"job": "demo.add", "args": [1, 2], "queue": "low"}
        while len(refused) < 30:
            response = session.post(f"{base}/jobs", json=body, timeout=10)
            if response.status_code == 202:
                accepted.append(response.json()["id"])
            else:
                assert response.status_code == 503, response.text
                assert "out of memory" in response.json()["detail"]
                refused.append(response)
            assert len(accepted) < 20_000, "Redis never filled up"
        time.sleep(1)  # the worker bumps into the full Redis too
        # Nothing half-written: the job records are exactly the accepted jobs.
        records = {key.decode().removeprefix("rq:job:") for key in client.scan_iter("rq:job:*")}
        assert records == set(accepted)
        assert set(client.lrange("rq:queue:low", 0, -1)) <= {job_id.encode() for job_id in accepted}
        client.config_set("maxmemory", 0)
        wait_for(lambda: set(chaos.statuses(client, accepted).values()) == {"finished"}, timeout=60,
                 what="every accepted job to run once memory is back")
        assert worker.poll() is None
    print(f"\naccepted={len(accepted)} refused={len(refused)}")


@pytest.mark.parametrize("program", ["worker.py", "scheduler.py"])
def test_processes_refuse_a_redis_that_evicts_keys(own_redis, tmp_path, program):
    own_redis.client().config_set("maxmemory-policy", "allkeys-lru")
    env = chaos.worker_env(own_redis.url)
    done = subprocess.run([sys.executable, program], env=env, cwd=processes.ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode != 0
    assert "maxmemory-policy=allkeys-lru" in done.stderr
    assert "REDIS_ALLOW_EVICTION" in done.stderr


def test_a_process_told_to_allow_eviction_runs(own_redis, tmp_path):
    own_redis.client().config_set("maxmemory-policy", "allkeys-lru")
    with chaos.worker(own_redis.url, tmp_path / "worker.log", REDIS_ALLOW_EVICTION="1") as worker:
        wait_for(lambda: any(e.get("event") == "worker.started" for e in chaos.log_events(tmp_path / "worker.log")),
                 timeout=30, what="the worker to start")
        assert worker.poll() is None
    assert any(e.get("event") == "redis.unsafe_eviction_policy_allowed" for e in chaos.log_events(tmp_path / "worker.log"))


def test_the_web_refuses_a_redis_that_evicts_keys(own_redis, own_settings):
    from service import create_app

    own_redis.client().config_set("maxmemory-policy", "volatile-lru")
    with pytest.raises(SystemExit, match="maxmemory-policy=volatile-lru"):
        create_app(own_settings)


def test_a_hung_redis_gets_503s_within_2_seconds_too(own_redis, tmp_path):
    """Redis that accepts connections but never answers (stopped, or a network black hole)."""
    import signal

    session = processes.session()
    with chaos.web(own_redis.url, tmp_path / "web.log") as base:
        assert session.post(f"{base}/jobs", json={"job": "demo.add", "args": [1, 2]}, timeout=10).status_code == 202
        own_redis.server.process.send_signal(signal.SIGSTOP)
        slowest = 0.0
        try:
            for _ in range(3):
                started = time.monotonic()
                response = session.post(f"{base}/jobs", json={"job": "demo.add", "args": [1, 2]}, timeout=10)
                slowest = max(slowest, time.monotonic() - started)
                assert response.status_code == 503 and slowest < 2, (response.status_code, slowest)
        finally:
            own_redis.server.process.send_signal(signal.SIGCONT)
        wait_for(lambda: session.post(f"{base}/jobs", json={"job": "demo.add", "args": [1, 2]}, timeout=10)
                 .status_code == 202, timeout=10, what="the API to accept jobs again")
    print(f"\nslowest answer while hung: {slowest:.3f}s")


# --- a reply lost after Redis ran the command ---------------------------------
# The client's retry sends the command again (`service.connection`); each step
# of taking, claiming and requeueing a job must come out the same as if the
# reply had arrived.


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def cut_worker(settings, redis_url, connection):
    """A worker whose connection goes through a ReplyCutter, with a clock the test moves."""
    from service.dequeue import Dequeuer
    from service.worker import build_worker
    from tests.faults import ReplyCutter

    with ReplyCutter(redis_url) as cutter:
        worker = build_worker(replace(settings, redis_url=cutter.url))
        clock = _Clock()
        worker.dequeuer = Dequeuer(worker.connection, worker.name, clock=clock)
        worker.register_birth()
        worker.dequeuer.register()
        yield worker, cutter, clock


def _queue_keys(settings):
    return [f"rq:queue:{name}" for name in settings.queues]


def _posted_and_taken(client, settings, worker, body=None):
    """A job's id and the job, posted (`demo.add` 1 + 2 unless `body`), then taken by `worker` (not claimed yet)."""
    job_id = client.post("/jobs", json=body or {"job": "demo.add", "args": [1, 2]}).json["id"]
    job, _ = worker._load(worker.dequeuer.take(_queue_keys(settings)))
    return job_id, job


def test_a_take_whose_reply_was_lost_leaves_no_job_behind(client, settings, connection, cut_worker):
    from service.dequeue import RELOOK_INTERVAL

    worker, cutter, clock = cut_worker
    assert worker.dequeuer.take(_queue_keys(settings)) is None  # its list is known to be empty now
    job_id = client.post("/jobs", json={"job": "demo.add", "args": [1, 2]}).json["id"]
    cutter.cut_reply_to(worker.dequeuer._take.sha.encode())
    # Redis moved the job into the worker's list; the take sent again finds the queues empty.
    assert worker.dequeuer.take(_queue_keys(settings)) is None
    assert cutter.cuts == 1
    assert connection.lrange(worker.dequeuer.key, 0, -1) == [job_id.encode()]
    clock.now += RELOOK_INTERVAL
    taken = worker.dequeuer.take(_queue_keys(settings))
    assert taken is not None and taken.job_id == job_id
    job, _ = worker._load(taken)
    assert worker._claim(job) is not None
    assert connection.llen(worker.dequeuer.key) == 0


def test_a_claim_whose_reply_was_lost_still_runs_the_job(client, settings, connection, cut_worker):
    worker, cutter, _clock = cut_worker
    job_id, job = _posted_and_taken(client, settings, worker)
    connection.script_load(worker.dequeuer._claim.script)  # so the reply lost is the claim's, not a NOSCRIPT
    cutter.cut_reply_to(worker.dequeuer._claim.sha.encode())
    execution = worker._claim(job)
    assert cutter.cuts == 1
    assert execution is not None, "the claim that ran must not be taken for another worker's"
    assert client.get(f"/jobs/{job_id}").json["status"] == "started"
    assert connection.llen(worker.dequeuer.key) == 0


def test_a_job_canceled_between_its_take_and_its_claim_does_not_run(client, settings, connection, cut_worker):
    worker, _cutter, _clock = cut_worker
    job_id, job = _posted_and_taken(client, settings, worker)
    assert client.delete(f"/jobs/{job_id}").json["status"] == "canceled"
    assert worker._claim(job) is None, "a canceled job was claimed to run"
    assert client.get(f"/jobs/{job_id}").json["status"] == "canceled"
    assert connection.llen(worker.dequeuer.key) == 0


def test_a_requeue_whose_reply_was_lost_puts_the_job_back_once(client, settings, connection, cut_worker):
    from service import recovery

    worker, cutter, _clock = cut_worker
    job_id, job = _posted_and_taken(client, settings, worker)
    execution = worker._claim(job)
    cutter.cut_reply_to(b"EXEC")
    outcome = recovery.requeue(job, reason="stopped", kind=recovery.SHUTDOWN, worker_name=worker.name, execution=execution)
    assert cutter.cuts == 1
    assert outcome == "requeued", "the requeue that ran must be reported (logged and counted) as this one's"
    assert connection.lrange("rq:queue:default", 0, -1) == [job_id.encode()]
    assert client.get(f"/jobs/{job_id}").json["interrupted"]["count"] == 1


@pytest.mark.parametrize("result_ttl", [500, 0])
def test_a_slot_release_whose_reply_was_lost_records_the_job_once(client, settings, connection, cut_worker,
                                                                   http_server, monkeypatch, result_ttl):
    """The job's outcome is written, then the release of its concurrency slot loses
    its reply (and so does the client's retry): the worker tries the release again,
    not the whole record of the job, which would count the run twice."""
    import hashlib

    from rq.rate_limit import RELEASE_AND_ENQUEUE_SCRIPT, RateLimitRegistry

    from tests.servers import Answer

    monkeypatch.setenv("HTTP_HOST_CONCURRENCY", "1")  # read where jobs are enqueued: here
    http_server.answer("/x", Answer(200, "ok"))
    worker, cutter, _clock = cut_worker
    body = {"job": "http.request", "args": [http_server.url("/x")], "result_ttl": result_ttl}
    job_id, job = _posted_and_taken(client, settings, worker, body)
    execution = worker._claim(job)
    connection.script_load(RELEASE_AND_ENQUEUE_SCRIPT)  # so the replies lost are the release's, not a NOSCRIPT
    cutter.cut_reply_to(hashlib.sha1(RELEASE_AND_ENQUEUE_SCRIPT.encode()).hexdigest().encode(), times=2)
    worker.perform_job(job, worker._queue("default"), execution)
    assert cutter.cuts == 2
    assert len(http_server.requests("/x")) == 1
    if result_ttl:
        assert client.get(f"/jobs/{job_id}").json["status"] == "finished"
        assert len(job.results()) == 1, "one run, one result"
    else:  # kept nothing, as asked: not written again either
        assert client.get(f"/jobs/{job_id}").status_code == 404
    assert RateLimitRegistry.from_job(job).get_allowed_job_ids() == [], "its slot is free"


@pytest.fixture
def cut_client(settings, connection):
    """The API on a connection that goes through a ReplyCutter."""
    from service import create_app
    from service.connection import connect
    from tests.conftest import bearer
    from tests.faults import ReplyCutter

    with ReplyCutter(settings.redis_url) as cutter:
        cut = replace(settings, redis_url=cutter.url)
        client = create_app(cut, connection=connect(cut)).test_client()
        client.environ_base["HTTP_AUTHORIZATION"] = bearer()["Authorization"]
        yield client, cutter


def test_an_enqueue_whose_reply_never_came_is_found_by_its_retry_with_the_same_key(cut_client, connection):
    import hashlib

    from service.admission import _SCRIPT

    client, cutter = cut_client
    assert client.post("/jobs", json={"job": "demo.add", "args": [0, 0]}).status_code == 202  # the script is loaded
    connection.delete("rq:queue:default")
    body, key = {"job": "demo.add", "args": [1, 2]}, {"Idempotency-Key": "order-42"}
    cutter.cut_reply_to(hashlib.sha1(_SCRIPT.encode()).hexdigest().encode(), times=2)  # the call and its resend
    first = client.post("/jobs", json=body, headers=key)
    assert first.status_code == 503 and cutter.cuts == 2
    assert "may or may not have been stored" in first.json["detail"]
    again = client.post("/jobs", json=body, headers=key)
    assert again.status_code == 200, "the job the first request wrote is the retry's answer"
    assert connection.lrange("rq:queue:default", 0, -1) == [again.json["id"].encode()]


def test_a_schedule_run_now_whose_reply_never_came_is_queued_once(cut_client, connection):
    client, cutter = cut_client
    assert client.put("/schedules/s", json={"job": "demo.add", "args": [1, 2], "cron": "0 9 * * *"}).status_code == 201
    cutter.cut_reply_to(b"last_run_at")  # the transaction's EXEC; the client sends it again
    ran = client.post("/schedules/s/run")
    assert ran.status_code == 202 and cutter.cuts == 1
    assert connection.lrange("rq:queue:default", 0, -1) == [ran.json["id"].encode()]


def test_a_key_whose_first_request_lost_redis_before_writing_enqueues_once_that_request_is_over(
    settings, connection, monkeypatch
):
    from redis.exceptions import ConnectionError as RedisConnectionError

    from service import enqueue as enqueuing
    from service.queues import job_registry

    request = enqueuing.JobRequest(job="demo.add", args=[1, 2])
    prepared = enqueuing.prepare(request, registry=job_registry(), settings=settings)

    def once(now: float):
        return enqueuing.enqueue_once(request, prepared, connection, "order-7", owner="t", clock=lambda: now)

    real_enqueue = enqueuing.enqueue

    def broken(*args, **kwargs):  # the connection breaks before the job is sent
        monkeypatch.setattr(enqueuing, "enqueue", real_enqueue)
        raise RedisConnectionError("Connection reset by peer")

    monkeypatch.setattr(enqueuing, "enqueue", broken)
    with pytest.raises(RedisConnectionError):
        once(1000.0)
    with pytest.raises(enqueuing.IdempotencyConflict):  # it could still be under way
        once(1000.0 + enqueuing.IDEMPOTENCY_TAKEOVER - 1)
    job, created = once(1000.0 + enqueuing.IDEMPOTENCY_TAKEOVER)
    assert created and connection.lrange("rq:queue:default", 0, -1) == [job.id.encode()]
    again, created = once(2000.0)
    assert not created and again.id == job.id


def test_a_job_with_a_webhook_whose_write_lost_its_reply_is_queued_once(cut_client, connection):
    """Jobs RQ places itself (a webhook, a start time, dependencies) are written in a
    transaction of RQ's, which redis-py sends again after a broken connection."""
    client, cutter = cut_client
    webhook = {"url": "http://127.0.0.1:9/hook", "secret": "a-secret-of-sixteen-or-more"}
    body = {"job": "demo.add", "args": [1, 2], "webhook": webhook}
    assert client.post("/jobs", json=body).status_code == 202  # scripts loaded: the next RPUSH is RQ's
    connection.delete("rq:queue:default")
    cutter.cut_reply_to(b"RPUSH")  # in RQ's transaction (MULTI ... RPUSH ... EXEC), sent as one request
    answer = client.post("/jobs", json=body)
    assert cutter.cuts == 1
    assert answer.status_code == 202, answer.json
    assert connection.lrange("rq:queue:default", 0, -1) == [answer.json["id"].encode()], "queued once, run once"


def test_a_job_whose_outcome_redis_could_not_take_is_requeued_not_counted_abandoned(own_redis, tmp_path):
    """Redis goes down while a job runs, and is still down after the executor has
    tried to record its end for a few seconds: the worker waits for Redis and
    requeues the job (it runs again), rather than leave it to a sweep, which
    would count the outage against JOB_MAX_ABANDONS (0 here: fail it)."""
    import psutil

    from service.queues import ServiceQueue

    client = own_redis.client()
    log = tmp_path / "worker.log"
    with chaos.worker(own_redis.url, log, JOB_MAX_ABANDONS="0") as worker:
        job = ServiceQueue("default", connection=client).enqueue("jobs.demo.sleep", 1.5)
        wait_for(lambda: chaos.statuses(client, [job.id])[job.id] == "started", what="the job to start")
        [executor] = chaos.horses(worker.pid)
        own_redis.kill()
        gone = psutil.Process(executor)
        # It ends the job, tries for 3.5 s to record that, then gives up and exits.
        wait_for(lambda: chaos.ended(gone), timeout=30, what="the executor to give up on Redis")
        own_redis.start()
        client = own_redis.client()
        wait_for(lambda: chaos.statuses(client, [job.id])[job.id] in ("finished", "failed"), timeout=60,
                 what="the job to end")
        interrupted = chaos.meta(client, job.id).get("interrupted", {})
        assert chaos.statuses(client, [job.id])[job.id] == "finished", interrupted
        assert interrupted.get("abandoned", 0) == 0 and interrupted.get("count") == 1, interrupted
        assert interrupted["reason"].startswith("Redis refused to record the job's start or outcome")
        assert worker.poll() is None


def test_a_success_whose_record_lost_its_reply_is_recorded_once(client, settings, connection, cut_worker):
    """The script that writes a job's success runs, its reply is lost and the
    client sends it again: the second run must find the write its own, not
    store a second result for the one run."""
    from service.worker import _SUCCEED

    worker, cutter, _clock = cut_worker
    job_id, job = _posted_and_taken(client, settings, worker)
    execution = worker._claim(job)
    connection.script_load(_SUCCEED)  # so the reply lost is the script's, not a NOSCRIPT
    cutter.cut_reply_to(worker._succeed.sha.encode())
    worker.perform_job(job, worker._queue("default"), execution)
    assert cutter.cuts == 1
    assert client.get(f"/jobs/{job_id}").json["status"] == "finished"
    assert [result.return_value for result in job.results()] == [3], "one run, one result"
    assert not connection.exists(execution.key)


def test_a_success_with_dependents_whose_transaction_lost_its_reply_is_recorded_once(
    client, settings, connection, cut_worker
):
    """A job with dependents is recorded by RQ's own transaction, which also
    moves them to ready. Its EXEC runs and the reply is lost: redis-py reports a
    WatchError and RQ tries the transaction again. That second try must not
    store a second result, and the dependent must still be queued, not left in
    RQ's ready registry until its maintenance."""
    worker, cutter, _clock = cut_worker
    parent, job = _posted_and_taken(client, settings, worker)
    child = client.post("/jobs", json={"job": "demo.add", "args": [3, 4], "depends_on": [parent]}).json["id"]
    assert client.get(f"/jobs/{child}").json["status"] == "deferred"
    execution = worker._claim(job)
    cutter.cut_reply_to((b"successful_job_count", b"EXEC"))  # only in RQ's MULTI ... EXEC, sent as one request
    worker.perform_job(job, worker._queue("default"), execution)
    assert cutter.cuts == 1
    assert client.get(f"/jobs/{parent}").json["status"] == "finished"
    assert [result.return_value for result in job.results()] == [3], "one run, one result"
    assert client.get(f"/jobs/{child}").json["status"] == "queued"
    assert connection.lrange("rq:queue:default", 0, -1) == [child.encode()]


def test_a_success_kept_for_no_time_whose_transaction_lost_its_reply_is_counted_once(
    client, settings, connection, cut_worker
):
    """`result_ttl: 0` is recorded by RQ's transaction too, which deletes the job."""
    worker, cutter, _clock = cut_worker
    job_id, job = _posted_and_taken(client, settings, worker, {"job": "demo.add", "args": [1, 2], "result_ttl": 0})
    execution = worker._claim(job)
    cutter.cut_reply_to((b"successful_job_count", b"EXEC"))
    worker.perform_job(job, worker._queue("default"), execution)
    assert cutter.cuts == 1
    assert client.get(f"/jobs/{job_id}").status_code == 404
    assert connection.hget(worker.key, "successful_job_count") == b"1", "one run, counted once"


def test_a_failure_whose_record_lost_its_reply_is_recorded_once(client, settings, connection, cut_worker):
    """RQ writes a failure in one transaction: the worker's count, the job's
    status, its result and its place in the failed registry. It runs, its reply
    is lost and the client sends it again: still one result, counted once."""
    worker, cutter, _clock = cut_worker
    job_id, job = _posted_and_taken(client, settings, worker, {"job": "demo.fail", "retry": {"max": 0}})
    execution = worker._claim(job)
    connection.script_load(scripted.ONCE)  # so the reply lost is the write's, not a NOSCRIPT
    cutter.cut_reply_to(b"failed_job_count")  # only in the failure's write
    worker.perform_job(job, worker._queue("default"), execution)
    assert cutter.cuts == 1
    assert client.get(f"/jobs/{job_id}").json["status"] == "failed"
    assert [result.type.name for result in job.results()] == ["FAILED"], "one run, one result"
    assert connection.hget(worker.key, "failed_job_count") == b"1", "one run, counted once"


def test_a_retry_whose_record_lost_its_reply_is_queued_once(client, settings, connection, cut_worker):
    """A failing job with retries left goes back to its queue in the same kind
    of transaction: sent again, it must not queue the job twice (a second copy
    would spend a retry early, or run beside the first)."""
    worker, cutter, _clock = cut_worker
    job_id, job = _posted_and_taken(
        client, settings, worker, {"job": "demo.fail", "retry": {"max": 2, "backoff": [0]}}
    )
    execution = worker._claim(job)
    connection.script_load(scripted.ONCE)
    cutter.cut_reply_to(b"failed_job_count")
    worker.perform_job(job, worker._queue("default"), execution)
    assert cutter.cuts == 1
    assert client.get(f"/jobs/{job_id}").json["status"] == "queued"
    assert connection.lrange("rq:queue:default", 0, -1) == [job_id.encode()], "queued once"
    assert connection.hget(job.key, "retries_left") == b"1", "one retry spent"


def test_a_run_whose_retry_is_recorded_is_not_recorded_again_as_failed(client, settings, connection, cut_worker):
    """RQ hands a run to its failure handler when anything raises after the
    run's retry was written (a count that Redis refused, say). The run is
    recorded already: it stays queued for its retry, with one retry spent."""
    worker, _cutter, _clock = cut_worker
    job_id, job = _posted_and_taken(
        client, settings, worker, {"job": "demo.fail", "retry": {"max": 2, "backoff": [0]}}
    )
    execution = worker._claim(job)
    worker.perform_job(job, worker._queue("default"), execution)
    worker.handle_job_failure(job, worker._queue("default"), exc_string="Traceback ...\nRedisError: refused",
                              execution=execution)
    view = client.get(f"/jobs/{job_id}").json
    assert view["status"] == "queued"
    assert connection.lrange("rq:queue:default", 0, -1) == [job_id.encode()]
    assert connection.hget(job.key, "retries_left") == b"1"
    assert len(view["history"]) == 1, "one failed attempt in its history"
    assert connection.hget(worker.key, "failed_job_count") == b"1"


def test_a_run_its_worker_settled_is_settled_once(client, settings, connection, cut_worker):
    """The supervisor settles a run its executor died in, and tries again after
    a Redis error: a run settled already is no longer this worker's to settle."""
    import signal

    worker, _cutter, _clock = cut_worker
    job_id, job = _posted_and_taken(
        client, settings, worker, {"job": "demo.fail", "retry": {"max": 2, "backoff": [0]}}
    )
    worker._claim(job)
    for _ in range(2):
        worker._settle_once(job_id, signal.SIGKILL)  # the wait status of an executor killed by SIGKILL
        assert not connection.smembers(worker.executions_key), "the run is no longer the worker's"
    assert connection.lrange("rq:queue:default", 0, -1) == [job_id.encode()]
    assert connection.hget(job.key, "retries_left") == b"1"


@pytest.mark.parametrize("swept", [False, True])
def test_a_success_is_recorded_when_the_job_s_record_was_saved_before_it(
    client, settings, connection, cut_worker, monkeypatch, swept
):
    """A success callback may save the job, `ended_at` and all, before RQ records
    the success; a sweep may have taken the execution of a job that was only
    slow. Neither makes the record of a first success look like a resend."""
    from service.worker import ReliableWorker

    worker, _cutter, _clock = cut_worker
    parent, job = _posted_and_taken(client, settings, worker)
    child = None if swept else client.post(
        "/jobs", json={"job": "demo.add", "args": [3, 4], "depends_on": [parent]}
    ).json["id"]
    execution = worker._claim(job)
    if swept:  # by a sweeper that took it for a dead worker's (its requeue deletes the execution)
        connection.delete(execution.key)
    ended = ReliableWorker.handle_execution_ended

    def saving(self, job, queue, heartbeat_ttl):  # what a callback's `job.save()` writes
        ended(self, job, queue, heartbeat_ttl)
        job.save()

    monkeypatch.setattr(ReliableWorker, "handle_execution_ended", saving)
    worker.perform_job(job, worker._queue("default"), execution)
    assert [result.return_value for result in job.results()] == [3]
    assert connection.zscore("rq:finished:default", parent) is not None
    if child:
        assert client.get(f"/jobs/{child}").json["status"] == "queued"



def test_a_long_poll_whose_redis_goes_away_gets_a_503_and_following_works_once_it_is_back(own_redis, tmp_path):
    """Followers share one pub/sub connection a web process (`service.events`):
    its loss must reach each of them, and the next follower must connect again."""
    session = processes.session()
    redis = own_redis.client()
    answers: list[tuple[int, float]] = []

    def long_poll(job_id: str) -> None:
        started = time.monotonic()
        response = processes.session().get(f"{base}/jobs/{job_id}?wait=30", timeout=40)
        answers.append((response.status_code, time.monotonic() - started))

    def followed(job_id: str) -> bool:
        return redis.pubsub_numsub(f"jobservice:events:{job_id}")[0][1] == 1

    with chaos.web(own_redis.url, tmp_path / "web.log") as base:
        job_id = session.post(f"{base}/jobs", json={"job": "demo.add", "args": [1, 2]}, timeout=10).json()["id"]
        follower = threading.Thread(target=long_poll, args=(job_id,))
        follower.start()
        wait_for(lambda: followed(job_id), what="the long poll to subscribe")
        own_redis.kill()
        follower.join(20)
        assert [status for status, _ in answers] == [503]
        assert answers[0][1] < 10, answers  # told at once, not at the end of its wait

        own_redis.start()
        redis = own_redis.client()
        wait_for(lambda: session.post(f"{base}/jobs", json={"job": "demo.add", "args": [2, 3]}, timeout=10)
                 .status_code == 202, timeout=15, what="the API to accept jobs again")
        job_id = session.post(f"{base}/jobs", json={"job": "demo.add", "args": [3, 4]}, timeout=10).json()["id"]
        answers.clear()
        follower = threading.Thread(target=long_poll, args=(job_id,))
        follower.start()
        wait_for(lambda: followed(job_id), what="a long poll to subscribe again")
        with chaos.worker(own_redis.url, tmp_path / "worker.log"):
            follower.join(40)
        assert [status for status, _ in answers] == [200]
        assert session.get(f"{base}/jobs/{job_id}", timeout=10).json()["result"] == 7


def test_hundreds_of_clients_reading_at_the_same_moment_are_all_answered(own_redis, tmp_path):
    """redis-py's pool refuses a 101st connection at once ("Too many connections"):
    a gevent web process that many clients reach at the same moment must make
    the extra ones wait for a connection, not answer them 503."""
    import collections
    import http.client

    clients = 400
    statuses: collections.Counter = collections.Counter()
    with chaos.web(own_redis.url, tmp_path / "web.log") as base:
        session = processes.session()
        job_id = session.post(f"{base}/jobs", json={"job": "demo.add", "args": [1, 2]}, timeout=10).json()["id"]
        host = base.removeprefix("http://")
        everyone_connected = threading.Barrier(clients + 1)

        def read():
            connection = http.client.HTTPConnection(host, timeout=60)
            connection.connect()
            everyone_connected.wait(60)
            connection.request("GET", f"/jobs/{job_id}", headers=dict(session.headers))
            statuses[connection.getresponse().status] += 1
            connection.close()

        threads = [threading.Thread(target=read) for _ in range(clients)]
        for thread in threads:
            thread.start()
        everyone_connected.wait(60)
        for thread in threads:
            thread.join(60)
    assert statuses == {200: clients}
