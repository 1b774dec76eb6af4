"""How late are ticks enqueued? Our scheduler against the defaults, in one run.

    .venv/bin/python bench/scheduler_lateness.py            # 100 ticks, one a second (~3 min)
    .venv/bin/python bench/scheduler_lateness.py --ticks 20  # quicker, rougher

Starts its own Redis on loopback and measures, side by side (one database each):

- cron ticks: `scheduler.py` against rq-scheduler's `rqscheduler` in its default
  configuration (a look every 60 s), each given the same 100 schedules that fire
  once each, one second apart;
- jobs given a time (`Queue.enqueue_at`, what POST /jobs does with `at`/`delay`):
  the worker's scheduler (`service.worker_scheduler`) against RQ's own.

Lateness is a job's `enqueued_at` minus the time it was due. Not a test: the
figures depend on the machine; the ratios are what to compare.
"""
from __future__ import annotations

import argparse
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# rq-scheduler reads cron expressions in the process's local time: run everything in
# UTC so that both schedulers are given the same ticks.
os.environ["TZ"] = "UTC"
time.tzset()

from redis import Redis  # noqa: E402
from rq.scheduler import RQScheduler  # noqa: E402
from rq.serializers import JSONSerializer  # noqa: E402
from rq_scheduler import Scheduler  # noqa: E402

from service.embedded_redis import EmbeddedRedis  # noqa: E402
from service.queues import ServiceQueue, fetch_job, job_registry  # noqa: E402
from service.schedules import Schedule, store, tick_id, validate  # noqa: E402
from service.settings import Settings  # noqa: E402
from service.worker_scheduler import PromptRQScheduler  # noqa: E402

UTC = timezone.utc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ticks", type=int, default=100, help="ticks per contender (default 100)")
    parser.add_argument("--spacing", type=float, default=1.0, help="seconds between ticks (default 1)")
    options = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch, EmbeddedRedis(Path(scratch) / "redis") as url:
        base = url.rsplit("/", 1)[0]
        ours_url, theirs_url, prompt_url, rq_url = (f"{base}/{db}" for db in range(4))
        start = math.ceil(time.time()) + 6
        due = [start + math.ceil(i * options.spacing) for i in range(options.ticks)]
        print(f"{options.ticks} ticks from {_clock(due[0])} to {_clock(due[-1])} UTC; "
              f"rq-scheduler looks every 60 s, so allow a minute after the last.", flush=True)

        procs = []
        try:
            declare_ours(ours_url, due)
            declare_theirs(theirs_url, due)
            empty = Path(scratch) / "schedules.toml"
            empty.write_text("")
            env = {**os.environ, "REDIS_URL": ours_url, "SCHEDULES_FILE": str(empty), "PYTHONPATH": str(ROOT)}
            procs.append(_spawn([sys.executable, str(ROOT / "scheduler.py")], env, Path(scratch) / "ours.log"))
            rqscheduler = shutil.which("rqscheduler", path=str(Path(sys.executable).parent)) or "rqscheduler"
            procs.append(_spawn(
                [rqscheduler, "--url", theirs_url, "--job-class", "service.queues.ServiceJob",
                 "--queue-class", "service.queues.ServiceQueue", "--path", str(ROOT)],
                env, Path(scratch) / "theirs.log",
            ))
            at_jobs = {
                "prompt": enqueue_at_jobs(prompt_url, due),
                "rq": enqueue_at_jobs(rq_url, due),
            }
            schedulers = [
                start_worker_scheduler(PromptRQScheduler, prompt_url, poll=1.0),
                start_worker_scheduler(RQScheduler, rq_url),
            ]

            results = {
                "cron: scheduler.py": wait_for_lateness(ours_url, [tick_id(f"bench-{i}", t) for i, t in enumerate(due)], due),
                "cron: rqscheduler (defaults)": wait_for_lateness(theirs_url, [f"bench-{i}" for i in range(len(due))], due),
                "at: worker, service.worker_scheduler": wait_for_lateness(prompt_url, at_jobs["prompt"], due),
                "at: worker, RQ's scheduler": wait_for_lateness(rq_url, at_jobs["rq"], due),
            }
            for scheduler in schedulers:
                os.kill(scheduler._process.pid, signal.SIGTERM)
                scheduler._process.join(10)
        finally:
            for process in procs:
                process.send_signal(signal.SIGTERM)
                process.wait(10)

    print()
    print(f"{'lateness of ' + str(options.ticks) + ' ticks':40} {'median':>10} {'worst':>10}")
    for label, values in results.items():
        print(f"{label:40} {_seconds(statistics.median(values)):>10} {_seconds(max(values)):>10}")
    print()
    for ours, theirs in (("cron: scheduler.py", "cron: rqscheduler (defaults)"),
                         ("at: worker, service.worker_scheduler", "at: worker, RQ's scheduler")):
        a, b = results[ours], results[theirs]
        print(f"{theirs} / {ours}: median {_ratio(statistics.median(b), statistics.median(a))}, "
              f"worst {_ratio(max(b), max(a))}")
    return 0


def declare_ours(url: str, due: list[int]) -> None:
    connection = Redis.from_url(url)
    settings = Settings(redis_url=url)
    valid = [
        validate(Schedule(name=f"bench-{i}", job="demo.add", args=[i, 0], cron=_pinned(tick)), registry=job_registry(), settings=settings)
        for i, tick in enumerate(due)
    ]
    store.save_many(connection, valid, source=store.API, now=datetime.now(UTC))


def declare_theirs(url: str, due: list[int]) -> None:
    scheduler = Scheduler(connection=Redis.from_url(url), job_class="service.queues.ServiceJob", queue_class="service.queues.ServiceQueue")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        for i, tick in enumerate(due):
            scheduler.cron(_pinned(tick), "jobs.demo.add", args=[i, 0], id=f"bench-{i}", queue_name="default")


def enqueue_at_jobs(url: str, due: list[int]) -> list[str]:
    queue = ServiceQueue("default", connection=Redis.from_url(url))
    return [queue.enqueue_at(datetime.fromtimestamp(tick, UTC), "jobs.demo.add", i, 0).id for i, tick in enumerate(due)]


def start_worker_scheduler(kind, url: str, **options):
    """The scheduler a worker runs with `work(with_scheduler=True)`, in its own process, as RQ starts it."""
    scheduler = kind(["default"], connection=Redis.from_url(url), serializer=JSONSerializer, logging_level="WARNING", **options)
    scheduler.acquire_locks()
    scheduler.start()
    return scheduler


def wait_for_lateness(url: str, job_ids: list[str], due: list[int]) -> list[float]:
    """Seconds each job was enqueued after its tick, once all are enqueued."""
    connection = Redis.from_url(url)
    deadline = due[-1] + 120
    while True:
        lateness = []
        for job_id, tick in zip(job_ids, due):
            try:
                enqueued = fetch_job(job_id, connection).enqueued_at
            except Exception:
                enqueued = None
            if enqueued is None:
                break
            lateness.append(enqueued.replace(tzinfo=UTC).timestamp() - tick)
        if len(lateness) == len(job_ids):
            return lateness
        if time.time() > deadline:
            raise SystemExit(f"{url}: only {len(lateness)} of {len(job_ids)} jobs enqueued by {_clock(deadline)}")
        time.sleep(1)


def _pinned(tick: int) -> str:
    """Seven-field cron for this second of this day, every year."""
    moment = datetime.fromtimestamp(tick, UTC)
    return f"{moment.second} {moment.minute} {moment.hour} {moment.day} {moment.month} * *"


def _spawn(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)


def _clock(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%H:%M:%S")


def _seconds(value: float) -> str:
    return f"{value:.3f} s"


def _ratio(baseline: float, ours: float) -> str:
    return f"{baseline / ours:,.0f}x" if ours > 0 else "n/a"


if __name__ == "__main__":
    sys.exit(main())
