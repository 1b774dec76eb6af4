"""What an operator does to a job: cancel or stop it, retry it, list jobs."""
from __future__ import annotations

from rq.command import send_stop_job_command
from redis import Redis

from . import events, job_index, webhooks
from .job_view import status_of
from .queues import ServiceJob

CANCELLABLE = frozenset({"queued", "scheduled", "deferred", "rate_limited"})
RETRYABLE = frozenset({"failed", "stopped"})
STATUSES = ("queued", "started", "deferred", "scheduled", "rate_limited", "finished", "failed", "stopped", "canceled")


class NotAllowed(Exception):
    """The job's status does not allow this action."""


def cancel(job: ServiceJob, connection: Redis) -> str:
    """Cancel a waiting job (`canceled`) or ask its worker to stop a running one (`stopping`)."""
    status = status_of(job)
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
    status = status_of(job)
    if status not in RETRYABLE:
        raise NotAllowed(f"job {job.id} is {status}; only a failed or stopped job can be retried")
    job.requeue()
    events.status_changed(connection, job, "queued")
    return job


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
