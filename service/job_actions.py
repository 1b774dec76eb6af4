"""What an operator does to a job: cancel or stop it, retry it, list jobs."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from redis import Redis
from redis.exceptions import LockError
from rq.command import send_stop_job_command

from . import events, job_index, webhooks
from .job_view import status_of
from .queues import ServiceJob
from .schedules import store

CANCELLABLE = frozenset({"queued", "scheduled", "deferred", "rate_limited"})
RETRYABLE = frozenset({"failed", "stopped"})
STATUSES = ("queued", "started", "deferred", "scheduled", "rate_limited", "finished", "failed", "stopped", "canceled")


class NotAllowed(Exception):
    """The job's status does not allow this action."""


@contextmanager
def _turn(job: ServiceJob, connection: Redis) -> Iterator[str]:
    """The job's status as of now, while no other cancel or retry of it runs.

    RQ's cancel and requeue read the status, then write: two at once (a client
    that sends its DELETE twice) would both act, and a canceled job's webhook
    go out twice. Each waits its turn and sees what the one before it left."""
    try:
        with connection.lock(f"jobservice:job-action:{job.id}", timeout=30, blocking_timeout=10):
            job.get_status(refresh=True)
            yield status_of(job)
    except LockError:
        raise NotAllowed(f"another cancel or retry of job {job.id} is still under way; try again") from None


def _not_a_template(job: ServiceJob, connection: Redis) -> None:
    """A schedule's template is a `scheduled` job record its ticks are copied
    from, never run itself: canceling it would not stop the schedule, and
    would leave it a template the clean-up may delete."""
    name = store.template_of(connection, job.id)
    if name:
        raise NotAllowed(f"job {job.id} is the template of schedule {name!r}: pause or delete /schedules/{name} instead")


def cancel(job: ServiceJob, connection: Redis) -> str:
    """Cancel a waiting job (`canceled`) or ask its worker to stop a running one (`stopping`)."""
    _not_a_template(job, connection)
    with _turn(job, connection) as status:
        if status in CANCELLABLE:
            job.cancel()
            events.status_changed(connection, job, "canceled")
            webhooks.job_ended(job, "canceled")
            return "canceled"
        if status == "started":
            send_stop_job_command(connection, job.id)
            return "stopping"
    raise NotAllowed(
        f"job {job.id} is {status}; only a queued, scheduled, deferred, rate_limited or started job can be cancelled"
    )


def retry(job: ServiceJob, connection: Redis) -> ServiceJob:
    """Put a failed or stopped job back on its queue."""
    _not_a_template(job, connection)
    with _turn(job, connection) as status:
        if status in RETRYABLE:
            job.requeue()
            events.status_changed(connection, job, "queued")
            return job
    raise NotAllowed(f"job {job.id} is {status}; only a failed or stopped job can be retried")


def listing(
    connection: Redis,
    *,
    status: str | None = None,
    queue: str | None = None,
    limit: int = 20,
    cursor: str | None = None,
) -> tuple[list[ServiceJob], str | None]:
    """Jobs newest first, filtered by status and queue; returns the page and the next cursor."""

    def keep(job: ServiceJob) -> bool:
        return (status is None or status_of(job) == status) and (queue is None or job.origin == queue)

    after = job_index.Cursor.parse(cursor) if cursor else None
    jobs, next_cursor = job_index.page(connection, keep, limit, after)
    return jobs, (str(next_cursor) if next_cursor else None)
