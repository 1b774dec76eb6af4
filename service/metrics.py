"""Job counts for Prometheus, kept in Redis so that every process of the service adds to them.

Workers count jobs (finished, failed, retried, requeued) and time them into
small Redis hashes (finished jobs in batches, at most a second late:
`FinishedTally`); `/metrics` reads those and the queues themselves at scrape
time (`service.metrics_collector`), so any web process gives the same numbers.
Counts are kept under `rq:svc:metrics:*`, one field a job name; a failure to
write them never gets in the way of a job. Writing them takes nothing but
redis-py: a worker never loads prometheus_client.
"""
from __future__ import annotations

import logging
import time

from redis import Redis
from redis.exceptions import RedisError

log = logging.getLogger("service.metrics")

PREFIX = "rq:svc:metrics"
JOB_NAMES_KEY = f"{PREFIX}:jobs"
COUNTERS = ("finished", "failed", "retried")
#: Upper bounds (seconds) of the job duration histogram's buckets.
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)


def counter_key(kind: str) -> str:
    return f"{PREFIX}:{kind}"


def duration_key(job_name: str) -> str:
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
                pipe.hincrby(counter_key("finished"), job_name, count)
            for job_name, fields in self._durations.items():
                key = duration_key(job_name)
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
        pipe.hincrby(counter_key("requeued"), f"{job_name}|{reason}", 1)

    _safely(connection, write)


def _count(connection: Redis, kind: str, job_name: str) -> None:
    def write(pipe):
        pipe.sadd(JOB_NAMES_KEY, job_name)
        pipe.hincrby(counter_key(kind), job_name, 1)

    _safely(connection, write)
