"""The worker class as RQ sees it: keeping each failed attempt and telling
followers when a job's status changes (`service.worker` runs it)."""
from __future__ import annotations

import time

from rq import Worker
from rq.job import JobStatus

from . import events, webhooks
from .job_view import parse_exception
from .worker_scheduler import PromptScheduling

#: Failed attempts kept on a job (its retry history); older ones are dropped.
HISTORY_LIMIT = 25
TRACEBACK_LIMIT = 20_000


class ServiceWorker(PromptScheduling, Worker):
    """Publishes `started`, `finished`, `failed`, retry and stop transitions of each job.

    Its scheduler (with_scheduler=True) enqueues jobs given a time or a delay
    when they are due, not up to a second later (`service.worker_scheduler`).
    """

    # `started` is published with the claim (`ReliableWorker._claim`).

    def cleanup_execution(self, job, pipeline, execution=None):
        super().cleanup_execution(job, pipeline, execution)
        if job.get_status(refresh=False) == JobStatus.FINISHED:
            # In the transaction that records the success (`handle_job_success`):
            # published when, and only if, the job is finished for all to see.
            events.status_changed(pipeline, job, "finished")

    def handle_job_failure(self, job, queue, started_job_registry=None, exc_string="", execution=None):
        stopped = self._stopped_job_id == job.id
        self._record_failure(job, exc_string)
        super().handle_job_failure(
            job, queue, started_job_registry=started_job_registry, exc_string=exc_string, execution=execution
        )
        events.status_changed(self.connection, job)
        if stopped:
            # RQ sends webhooks for finished and failed jobs only.
            webhooks.job_ended(job, "stopped")

    def _record_failure(self, job, exc_string: str) -> None:
        # RQ keeps a result only for an attempt that ends the job, so a retried
        # attempt's exception would be lost; keep every one in the job's meta.
        # Written before RQ requeues the job, so no other worker can be running it.
        if self._stopped_job_id == job.id:
            outcome = "stopped"
        else:
            outcome = "retried" if job.should_retry else "failed"
        job.meta = job.get_meta(refresh=True) or {}
        failures = list(job.meta.get("failures", []))[-(HISTORY_LIMIT - 1):]
        error = parse_exception(exc_string[-TRACEBACK_LIMIT:]) if exc_string else None
        failures.append({"outcome": outcome, "at": time.time(), "error": error})
        job.meta["failures"] = failures
        job.save_meta()
