"""`/metrics`: the collector that reads, at each scrape, the job counts workers
keep in Redis (`service.metrics`), the queues, the registries and the workers."""
from __future__ import annotations

import logging
from datetime import datetime, timezone

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from redis import Redis
from redis.exceptions import RedisError
from rq.job import Job
from rq.queue import Queue
from rq.registry import FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry
from rq.utils import as_text, utcparse

from .heartbeats import worker_beats
from .metrics import COUNTERS, DURATION_BUCKETS, JOB_NAMES_KEY, counter_key, duration_key

log = logging.getLogger("service.metrics")


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
            for kind in (*COUNTERS, "requeued"):
                pipe.hgetall(counter_key(kind))
            for name in job_names:
                pipe.hgetall(duration_key(name))
            rows = pipe.execute()
        help_texts = {
            "finished": "Jobs that finished, by job name.",
            "failed": "Jobs that failed for good (no retry left), by job name.",
            "retried": "Failed attempts that were retried, by job name.",
        }
        for kind, counts in zip(COUNTERS, rows):
            family = CounterMetricFamily(f"rq_jobs_{kind}", help_texts[kind], labels=["job"])
            for name in job_names:
                family.add_metric([name], int(counts.get(name.encode(), 0)))
            yield family
        requeued = CounterMetricFamily(
            "rq_jobs_requeued",
            "Jobs put back on their queue because their worker stopped (shutdown) or died (abandoned).",
            labels=["job", "reason"],
        )
        for field, value in sorted(rows[len(COUNTERS)].items()):
            name, _, reason = as_text(field).partition("|")
            requeued.add_metric([name, reason], int(value))
        yield requeued
        duration = HistogramMetricFamily("rq_job_duration_seconds", "Run time of finished jobs.", labels=["job"])
        for name, raw in zip(job_names, rows[len(COUNTERS) + 1:]):
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
