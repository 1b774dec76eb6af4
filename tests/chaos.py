"""Helpers for the reliability scenarios: start the real processes, kill them, count runs.

Runs are counted by the jobs' own records (`jobs/canary.py`): each run of a
canary job appends a start and, if it got that far, a finish record in Redis.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import psutil
from redis import Redis
from rq import Retry

from service import enqueue as enqueuing
from service.queues import job_registry
from service.settings import Settings
from tests import processes

#: Settings that make a worker notice a dead one within seconds instead of a
#: minute: the scenarios scaled down (the production values are the defaults).
FAST = {
    "WORKER_HEARTBEAT_INTERVAL": "1",
    "ORPHAN_TIMEOUT": "4",
    "RECOVERY_INTERVAL": "1",
    "DEQUEUE_POLL_INTERVAL": "0.1",
}


def full_size() -> bool:
    return bool(os.environ.get("RELIABILITY_FULL_SIZE"))


def enqueue_canaries(
    connection: Redis,
    settings: Settings,
    count: int,
    *,
    token: str,
    seconds: float = 0.0,
    queue: str | None = None,
    retry: Retry | None = None,
) -> list[str]:
    """Enqueue `count` canary jobs through the service's one enqueue path."""
    prepared = enqueuing.prepare(
        enqueuing.JobRequest(job="canary.run", kwargs={"seconds": seconds, "token": token}, queue=queue),
        registry=job_registry(),
        settings=settings,
    )
    if retry is not None:
        prepared = replace(prepared, options={**prepared.options, "retry": retry})
    return [enqueuing.enqueue(prepared, connection).id for _ in range(count)]


class Records:
    """The start and finish records canary jobs of one token wrote."""

    def __init__(self, connection: Redis, token: str):
        self.connection, self.token = connection, token

    def _read(self, what: str) -> list[dict]:
        return [json.loads(raw) for raw in self.connection.lrange(f"rq:svc:canary:{self.token}:{what}", 0, -1)]

    def started(self) -> list[dict]:
        return self._read("started")

    def finished(self) -> list[dict]:
        return self._read("finished")

    def runs(self) -> Counter:
        """Job id -> how many times it started."""
        return Counter(record["job_id"] for record in self.started())

    def running(self) -> list[dict]:
        """Start records of runs that have not finished (yet, or ever)."""
        done = Counter(record["job_id"] for record in self.finished())
        pending = []
        for record in reversed(self.started()):
            if done[record["job_id"]]:
                done[record["job_id"]] -= 1
            else:
                pending.append(record)
        return pending


def statuses(connection: Redis, job_ids: list[str]) -> dict[str, str | None]:
    with connection.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.hget(f"rq:job:{job_id}", "status")
        return {
            job_id: raw.decode() if raw else None for job_id, raw in zip(job_ids, pipe.execute())
        }


def meta(connection: Redis, job_id: str) -> dict:
    raw = connection.hget(f"rq:job:{job_id}", "meta")
    return json.loads(raw) if raw else {}


def worker_env(redis_url: str, **overrides: str) -> dict[str, str]:
    return processes.process_env(redis_url, **{**FAST, **overrides})


@contextlib.contextmanager
def worker(redis_url: str, log_path: Path, **env: str):
    """`python worker.py` as the Procfile runs it, until the block ends."""
    with processes.running([sys.executable, "worker.py"], worker_env(redis_url, **env), log_path) as process:
        yield process


@contextlib.contextmanager
def scheduler(redis_url: str, log_path: Path, **env: str):
    with processes.running([sys.executable, "scheduler.py"], worker_env(redis_url, **env), log_path) as process:
        yield process


def tree(pid: int) -> list[psutil.Process]:
    """The process and all its descendants (a worker: main, work-horse, RQ's scheduler)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def signal_all(pid: int, sig: int) -> int:
    """Send `sig` to every process of the tree, as Heroku does to every process of a dyno."""
    sent = 0
    for process in tree(pid):
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(sig)
            sent += 1
    return sent


def horses(worker_pid: int) -> list[int]:
    """The work-horses of a worker: children that lead their own process group."""
    found = []
    try:
        children = psutil.Process(worker_pid).children()
    except psutil.NoSuchProcess:
        return found
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError):
            if os.getpgid(child.pid) == child.pid:
                found.append(child.pid)
    return found


def ended(process: psutil.Process | int) -> bool:
    """Whether a process (or pid) has exited: gone, or a zombie its parent has not reaped."""
    try:
        process = process if isinstance(process, psutil.Process) else psutil.Process(process)
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def kill(pid: int, sig: int = signal.SIGKILL) -> bool:
    try:
        os.kill(pid, sig)
        return True
    except ProcessLookupError:
        return False


def log_events(log_path: Path) -> list[dict]:
    """The JSON log lines of a process (other lines are left out)."""
    events = []
    for line in log_path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict):
                events.append(record)
    return events


def elapsed(since: float) -> float:
    return round(time.monotonic() - since, 2)


@contextlib.contextmanager
def web(redis_url: str, log_path: Path, **env: str):
    """gunicorn as the Procfile runs it (two workers); yields the API's base URL."""
    with web_server(redis_url, log_path, **env) as (base, _master):
        yield base


@contextlib.contextmanager
def web_server(redis_url: str, log_path: Path, **env: str):
    """The same; yields the API's base URL and gunicorn's master process."""
    from service.embedded_redis import free_port
    from tests.conftest import wait_for

    port = free_port()
    command = [sys.executable, "-m", "gunicorn", "service:create_app()", "--bind", f"127.0.0.1:{port}", "--workers", "2"]
    with processes.running(command, worker_env(redis_url, **env), log_path) as process:
        base = f"http://127.0.0.1:{port}"
        session = processes.session()

        def up():
            assert process.poll() is None, log_path.read_text()[-3000:]
            try:
                return session.get(f"{base}/health", timeout=1).ok
            except OSError:
                return False

        wait_for(up, timeout=30, what="gunicorn to answer /health")
        yield base, process
