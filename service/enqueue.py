"""The one path from a request to an RQ job.

HTTP, the command line and declared schedules all go through `prepare`, so the
allow-list check, argument validation and job options exist once.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from redis import Redis

from .queues import ServiceJob, queue
from .registry import JobRegistry, JobSpec
from .settings import Settings


class InvalidRequest(ValueError):
    """The request names something that does not exist (say, a queue)."""

    def __init__(self, field: str, problem: str):
        self.field, self.problem = field, problem
        super().__init__(f"{field}: {problem}")


@dataclass(frozen=True)
class JobRequest:
    """What a client asks for: which job, with what arguments, where."""

    job: str
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    queue: str | None = None


@dataclass(frozen=True)
class PreparedJob:
    """A request that passed every check; nothing has been written yet."""

    spec: JobSpec
    queue: str
    args: list[Any]
    kwargs: dict[str, Any]
    #: Keyword arguments of RQ's `enqueue_call` (timeout, TTLs, ...).
    options: dict[str, Any]


def prepare(request: JobRequest, *, registry: JobRegistry, settings: Settings) -> PreparedJob:
    """Validate `request` against the allow-list, the signature and the queues.

    Raises UnknownJob, InvalidArguments or InvalidRequest; touches no Redis.
    """
    spec = registry.get(request.job)
    args, kwargs = spec.validate(list(request.args), dict(request.kwargs))
    queue_name = request.queue or settings.default_queue
    if queue_name not in settings.queues:
        raise InvalidRequest("queue", f"unknown queue {queue_name!r}; one of {', '.join(settings.queues)}")
    options = {
        "timeout": settings.job_timeout,
        "result_ttl": settings.result_ttl,
        "failure_ttl": settings.failure_ttl,
    }
    return PreparedJob(spec=spec, queue=queue_name, args=args, kwargs=kwargs, options=options)


def enqueue(prepared: PreparedJob, connection: Redis) -> ServiceJob:
    """Write the prepared job to its queue."""
    return queue(prepared.queue, connection).enqueue_call(
        prepared.spec.func, args=prepared.args, kwargs=prepared.kwargs, **prepared.options
    )
