"""Prometheus metrics, kept in Redis so that every process of the service adds to them.

Workers count jobs (finished, failed, retried, requeued) and time them into
small Redis hashes (finished jobs in batches, at most a second late:
`FinishedTally`); `/metrics` reads those and the queues themselves
at scrape time (`JobServiceCollector`), so any web process gives the same
numbers. Counts are kept under `rq:svc:metrics:*`, one field a job name; a
failure to write them never gets in the way of a job.
"""
from __future__ import annotations

import logging
import time
from datetime import datetime, timezone

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from redis import Redis
from redis.exceptions import RedisError
from rq.job import Job
from rq.queue import Queue
from rq.registry import FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry
from rq.utils import as_text, utcparse

log = logging.getLogger("service.metrics")

PREFIX = "rq:svc:metrics"
JOB_NAMES_KEY = f"{PREFIX}:jobs"
_COUNTERS = ("finished", "failed", "retried")
#: Upper bounds (seconds) of the job duration histogram's buckets.
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)


def _counter_key(kind: str) -> str:
    return f"{PREFIX}:{kind}"


def _duration_key(job_name: str) -> str:
    return f"{PREFIX}:duration:{job_name}"


def _bucket(seconds: float) -> str:
    for bound in DURATION_BUCKETS:
        if seconds <= bound:
            return repr(bound)
    return "+Inf"


def _safely(connection: Redis, write) -> None:
    try:
        with connection.pipeline(transaction=False) as pipe:
            write(pipe)
            pipe.execute()
    except RedisError as error:
        log.debug("metrics not recorded: %s", error)


class FinishedTally:
    """Finished jobs counted in memory, written to Redis in one batch.

    A worker that finishes hundreds of jobs a second would otherwise spend five
    Redis commands a job on its counts; it writes them at most once a `period`
    instead (and whenever it falls idle or stops), so `/metrics` lags by that much.
    """

    def __init__(self, period: float = 1.0, clock=time.monotonic):
        self.period, self._clock = period, clock
        self._finished: dict[str, int] = {}
        self._durations: dict[str, dict[str, float]] = {}
        self._work: dict[str, list] = {}
        self._since = clock()

    def add(self, job_name: str, duration: float | None) -> None:
        self._finished[job_name] = self._finished.get(job_name, 0) + 1
        if duration is not None:
            fields = self._durations.setdefault(job_name, {})
            bucket = _bucket(duration)
            fields[bucket] = fields.get(bucket, 0) + 1
            fields["count"] = fields.get("count", 0) + 1
            fields["sum"] = fields.get("sum", 0.0) + duration

    def add_work(self, worker_key: str, seconds: float) -> None:
        """A successful job of the worker at `worker_key`, for RQ's counts in the worker's hash."""
        done = self._work.setdefault(worker_key, [0, 0.0])
        done[0] += 1
        done[1] += seconds

    @property
    def pending(self) -> bool:
        return bool(self._finished or self._work)

    def due(self) -> bool:
        return self.pending and self._clock() - self._since >= self.period

    def write(self, pipe) -> None:
        """Queue the counts on `pipe` and start counting afresh."""
        if self._finished:
            pipe.sadd(JOB_NAMES_KEY, *self._finished)
            for job_name, count in self._finished.items():
                pipe.hincrby(_counter_key("finished"), job_name, count)
            for job_name, fields in self._durations.items():
                key = _duration_key(job_name)
                for field, amount in fields.items():
                    if field == "sum":
                        pipe.hincrbyfloat(key, field, amount)
                    else:
                        pipe.hincrby(key, field, int(amount))
        for worker_key, (jobs, seconds) in self._work.items():
            # RQ's `increment_successful_job_count` and `increment_total_working_time`, summed.
            pipe.hincrby(worker_key, "successful_job_count", jobs)
            pipe.hincrbyfloat(worker_key, "total_working_time", seconds)
        self._finished, self._durations, self._work, self._since = {}, {}, {}, self._clock()


def record_failed(connection: Redis, job_name: str) -> None:
    _count(connection, "failed", job_name)


def record_retried(connection: Redis, job_name: str) -> None:
    _count(connection, "retried", job_name)


def record_requeued(connection: Redis, job_name: str, reason: str) -> None:
    def write(pipe):
        pipe.sadd(JOB_NAMES_KEY, job_name)
        pipe.hincrby(_counter_key("requeued"), f"{job_name}|{reason}", 1)

    _safely(connection, write)


def _count(connection: Redis, kind: str, job_name: str) -> None:
    def write(pipe):
        pipe.sadd(JOB_NAMES_KEY, job_name)
        pipe.hincrby(_counter_key(kind), job_name, 1)

    _safely(connection, write)


class JobServiceCollector(Collector):
    """Reads the queues, registries, workers and job counts from Redis at each scrape."""

    def __init__(self, connection: Redis, queues: tuple[str, ...], worker_max_age: float):
        self.connection = connection
        self.queues = queues
        self.worker_max_age = worker_max_age

    def describe(self):
        return []

    def collect(self):
        up = GaugeMetricFamily("rq_redis_up", "1 when Redis answered this scrape, 0 when it did not.")
        try:
            families = list(self._collect())
        except RedisError as error:
            log.warning("metrics: Redis unavailable: %s", error)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _collect(self):
        from .heartbeats import worker_beats

        connection = self.connection
        names = self._queue_names()
        with connection.pipeline(transaction=False) as pipe:
            for name in names:
                queue_key = Queue.redis_queue_namespace_prefix + name
                pipe.llen(queue_key)
                pipe.lindex(queue_key, 0)
                pipe.zcard(StartedJobRegistry(name, connection=connection).key)
                pipe.zcard(FailedJobRegistry(name, connection=connection).key)
                pipe.zcard(ScheduledJobRegistry(name, connection=connection).key)
            rows = pipe.execute()
        depth = GaugeMetricFamily("rq_queue_depth", "Jobs waiting in the queue.", labels=["queue"])
        oldest = GaugeMetricFamily(
            "rq_queue_oldest_job_age_seconds",
            "Seconds since the job at the head of the queue was enqueued (0 when the queue is empty).",
            labels=["queue"],
        )
        running = GaugeMetricFamily("rq_jobs_running", "Jobs registered as started.", labels=["queue"])
        failed = GaugeMetricFamily("rq_jobs_failed_kept", "Failed jobs kept for inspection.", labels=["queue"])
        scheduled = GaugeMetricFamily("rq_jobs_scheduled", "Jobs scheduled for later (retries with backoff).", labels=["queue"])
        head_ids = []
        for index, name in enumerate(names):
            length, head, started, failed_count, scheduled_count = rows[5 * index: 5 * index + 5]
            depth.add_metric([name], length)
            running.add_metric([name], started)
            failed.add_metric([name], failed_count)
            scheduled.add_metric([name], scheduled_count)
            head_ids.append(as_text(head) if head else None)
        with connection.pipeline(transaction=False) as pipe:
            for job_id in head_ids:
                pipe.hget(Job.key_for(job_id) if job_id else "rq:svc:none", "enqueued_at")
            stamps = pipe.execute()
        now = datetime.now(timezone.utc)
        for name, stamp in zip(names, stamps):
            age = 0.0
            if stamp:
                try:
                    age = max(0.0, (now - utcparse(as_text(stamp))).total_seconds())
                except ValueError:
                    pass
            oldest.add_metric([name], age)
        yield from (depth, oldest, running, failed, scheduled)

        beats = worker_beats(connection)
        workers = GaugeMetricFamily("rq_workers", "Workers with a fresh heartbeat, by state.", labels=["state"])
        states: dict[str, int] = {}
        for beat in beats:
            if beat.fresh(self.worker_max_age):
                states[beat.state or "unknown"] = states.get(beat.state or "unknown", 0) + 1
        for state in ("idle", "busy", "started", "suspended"):
            states.setdefault(state, 0)
        for state, count in sorted(states.items()):
            workers.add_metric([state], count)
        yield workers

        yield from self._job_counts()

    def _queue_names(self) -> list[str]:
        prefix = Queue.redis_queue_namespace_prefix
        known = {as_text(key)[len(prefix):] for key in self.connection.smembers(Queue.redis_queues_keys)}
        return sorted(known | set(self.queues))

    def _job_counts(self):
        connection = self.connection
        job_names = sorted(as_text(name) for name in connection.smembers(JOB_NAMES_KEY))
        with connection.pipeline(transaction=False) as pipe:
            for kind in (*_COUNTERS, "requeued"):
                pipe.hgetall(_counter_key(kind))
            for name in job_names:
                pipe.hgetall(_duration_key(name))
            rows = pipe.execute()
        help_texts = {
            "finished": "Jobs that finished, by job name.",
            "failed": "Jobs that failed for good (no retry left), by job name.",
            "retried": "Failed attempts that were retried, by job name.",
        }
        for kind, counts in zip(_COUNTERS, rows):
            family = CounterMetricFamily(f"rq_jobs_{kind}", help_texts[kind], labels=["job"])
            for name in job_names:
                family.add_metric([name], int(counts.get(name.encode(), 0)))
            yield family
        requeued = CounterMetricFamily(
            "rq_jobs_requeued",
            "Jobs put back on their queue because their worker stopped (shutdown) or died (abandoned).",
            labels=["job", "reason"],
        )
        for field, value in sorted(rows[len(_COUNTERS)].items()):
            name, _, reason = as_text(field).partition("|")
            requeued.add_metric([name, reason], int(value))
        yield requeued
        duration = HistogramMetricFamily("rq_job_duration_seconds", "Run time of finished jobs.", labels=["job"])
        for name, raw in zip(job_names, rows[len(_COUNTERS) + 1:]):
            if not raw:
                continue
            fields = {as_text(key): value for key, value in raw.items()}
            cumulative, buckets = 0, []
            for bound in DURATION_BUCKETS:
                cumulative += int(fields.get(repr(bound), 0))
                buckets.append((repr(bound), cumulative))
            buckets.append(("+Inf", int(fields.get("count", 0))))
            duration.add_metric([name], buckets, float(fields.get("sum", 0.0)))
        yield duration
