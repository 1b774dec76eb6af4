"""RQ as this service uses it: JSON job records and allow-listed functions only.

Every process (web, worker, scheduler, dashboard) builds its jobs and queues
from here, so no code path of ours or of rq-scheduler falls back to pickle.
"""
from __future__ import annotations

import importlib
import weakref
from functools import lru_cache
from typing import Any, Callable, NamedTuple

from redis import Redis
from redis.client import Pipeline
from redis.exceptions import ConnectionError as RedisConnectionError, WatchError
from rq.exceptions import NoSuchJobError
from rq.job import JOB_ID_PATTERN, Job
from rq.queue import Queue
from rq.registry import FinishedJobRegistry, StartedJobRegistry
from rq.serializers import JSONSerializer

from .registry import JobRegistry


#: Functions the service itself runs as jobs (webhook deliveries). They are not
#: in the allow-list, so no client can enqueue them.
INTERNAL_JOBS = frozenset({"service.webhooks.deliver"})


class ForbiddenJob(RuntimeError):
    """A job record names a function outside the allow-list."""


@lru_cache(maxsize=1)
def job_registry() -> JobRegistry:
    """The allow-list of this process, built once from the `jobs` package."""
    return JobRegistry.from_package("jobs")


class RecoveredStartedRegistry(StartedJobRegistry):
    """The started registry, as the service's workers keep it: each running job
    in it never expires.

    RQ scores an entry with its heartbeat's expiry, and RQ's cleanup of the
    registry, which rq-dashboard, `rq info` and every count of it run, fails a
    job whose score has passed. A killed worker's job would then fail (or use up
    a retry) whenever no worker had run for longer than that, where
    `service.recovery` requeues it with its retries untouched. Recovery reads the
    execution's own heartbeat, so the score can stay out of RQ's reach.
    """

    def add_execution(self, execution, pipeline, ttl: int = 0, xx: bool = False) -> int:
        return super().add_execution(execution, pipeline, ttl=-1, xx=xx)  # -1: a score of +inf


class _QueueOf(NamedTuple):
    """What RQ's registries take from a queue when given one (`queue=`)."""

    name: str
    connection: Redis
    serializer: Any


class ServiceJob(Job):
    """An RQ job that is JSON by default and runs only allow-listed functions.

    rq-scheduler creates and fetches jobs through `job_class` without passing a
    serializer, so the default has to live in the class itself.
    """

    #: The job's place in its queue, when this process has just put it there
    #: and learnt it for free (a later look costs an O(n) LPOS).
    known_position: int | None = None
    #: Whether a webhook waits for this job's outcome (None: look it up). The
    #: record says so in a `webhook` field RQ leaves alone ("1", or "" for none),
    #: so a worker learns it from the record it reads anyway. A record without
    #: the field (written by plain RQ, rq-scheduler or an earlier version)
    #: leaves it unknown.
    has_webhook: bool | None = None

    def __init__(self, id=None, connection=None, serializer=None):
        if serializer is None or serializer is JSONSerializer:
            # RQ would check JSONSerializer against its runtime typing.Protocol for
            # every job built or fetched: about 20 µs on Python 3.11, as much as
            # the rest of building the job. It is known to be one.
            super().__init__(id, connection=connection)
            self.serializer = JSONSerializer
        else:
            super().__init__(id, connection=connection, serializer=serializer)

    def to_dict(self, include_meta: bool = True, include_result: bool = True) -> dict:
        record = super().to_dict(include_meta=include_meta, include_result=include_result)
        if self.has_webhook is not None:
            record["webhook"] = "1" if self.has_webhook else ""
        return record

    def restore(self, raw_data) -> None:
        super().restore(raw_data)
        known = raw_data.get(b"webhook", raw_data.get("webhook"))  # "" (none) is an answer too
        self.has_webhook = None if known is None else known in (b"1", "1")

    # RQ builds the job's started and finished registries each time it runs
    # one, checking the serializer again each time (see `__init__`); the job's
    # own is checked already, so they are given it as a queue would give it.
    @property
    def started_job_registry(self):
        return RecoveredStartedRegistry(queue=self._as_queue(), job_class=type(self))

    @property
    def finished_job_registry(self):
        return FinishedJobRegistry(queue=self._as_queue(), job_class=type(self))

    def _as_queue(self) -> _QueueOf:
        return _QueueOf(self.origin, self.connection, self.serializer)

    @property
    def func(self):
        # A record written straight into Redis may name any importable callable
        # (`os.system`); the worker resolves it only through the allow-list.
        if self.instance is not None:
            raise ForbiddenJob("job records may not carry an instance")
        spec = job_registry().by_path(self.func_name)
        if spec is None:
            if self.func_name in INTERNAL_JOBS:
                module, _, name = self.func_name.rpartition(".")
                return getattr(importlib.import_module(module), name)
            raise ForbiddenJob(f"{self.func_name!r} is not an allow-listed job")
        return spec.func

    def send_webhooks(self, status, *, exc_string=None) -> None:
        # RQ calls this wherever a job ends for good (finished, failed, or
        # abandoned by a dead worker); the service's own webhooks start here.
        super().send_webhooks(status, exc_string=exc_string)
        from . import webhooks

        webhooks.job_ended(self, str(getattr(status, "value", status)))


    # Callbacks are import paths in the record too; only the job authors' helper
    # modules (`jobs._*`) may hold one, so a planted record cannot name `os.system`.
    @property
    def success_callback(self):
        _check_callback(self._success_callback_name)
        return super().success_callback

    @property
    def failure_callback(self):
        _check_callback(self._failure_callback_name)
        return super().failure_callback

    @property
    def stopped_callback(self):
        _check_callback(self._stopped_callback_name)
        return super().stopped_callback


CALLBACK_MODULE_PREFIX = "jobs._"


def _check_callback(name: str | None) -> None:
    if name and not name.startswith(CALLBACK_MODULE_PREFIX):
        raise ForbiddenJob(f"callback {name!r} is not in a jobs._* module")


class ServiceQueue(Queue):
    """A queue of ServiceJob records, serialized as JSON."""

    job_class = ServiceJob

    def __init__(self, name="default", connection: Redis | None = None, **kwargs):
        # rq passes serializer=None and job_class=None explicitly in places.
        kwargs["serializer"] = kwargs.get("serializer") or JSONSerializer
        kwargs["job_class"] = kwargs.get("job_class") or ServiceJob
        super().__init__(name, connection=connection, **kwargs)


_queues: "weakref.WeakKeyDictionary[Redis, dict[str, ServiceQueue]]" = weakref.WeakKeyDictionary()


def queue(name: str, connection: Redis) -> ServiceQueue:
    """The queue `name` on `connection`, built once per process.

    A Queue holds nothing that changes, and building one (RQ checks its
    serializer against a runtime Protocol) costs about as much as the job
    record the enqueue builds with it.
    """
    named = _queues.get(connection)
    if named is None:
        named = _queues.setdefault(connection, {})
    found = named.get(name)
    if found is None:
        found = named[name] = ServiceQueue(name, connection=connection)
    return found


def fetch_job(job_id: str, connection: Redis) -> ServiceJob:
    """The job with this id; rq.exceptions.NoSuchJobError when it does not exist."""
    # An id RQ could never have made (`;`, `:`) names no job; RQ itself would
    # raise ValueError for some and read a different key for others.
    if not JOB_ID_PATTERN.fullmatch(job_id):
        raise NoSuchJobError(job_id)
    return ServiceJob.fetch(job_id, connection=connection)


def statuses(connection: Redis, job_ids: list[str]) -> list[str | None]:
    """The status of each job, in one round trip; None for one whose record is gone."""
    with connection.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.hget(ServiceJob.key_for(job_id), "status")
        return [raw.decode() if raw else None for raw in pipe.execute()]


def write_new_job(connection: Redis, job: Job, write: Callable[[Pipeline], object]) -> None:
    """Run `write` (the new job's record, its place in a queue, ...) as one transaction.

    It watches the job's new key so that redis-py, whose client resends a
    transaction after a broken connection, cannot run it twice (a job queued
    twice runs twice): a resend is refused with a WatchError, and the job's
    record then tells whether the first one ran."""
    with connection.pipeline() as pipe:
        pipe.watch(job.key)
        pipe.multi()
        write(pipe)
        try:
            pipe.execute()
        except WatchError:
            if not connection.exists(job.key):
                raise RedisConnectionError("the connection broke while the job was written, and it was not") from None
