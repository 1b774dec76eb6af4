"""The worker class: RQ's forking worker, telling followers when a job's status changes."""
from __future__ import annotations

from rq import Worker

from . import events
from .worker_scheduler import PromptScheduling


class ServiceWorker(PromptScheduling, Worker):
    """Publishes `started`, `finished`, `failed`, retry and stop transitions of each job.

    Its scheduler (with_scheduler=True) enqueues jobs given a time or a delay
    when they are due, not up to a second later (`service.worker_scheduler`).
    """

    def prepare_job_execution(self, job, *args, **kwargs):
        super().prepare_job_execution(job, *args, **kwargs)
        events.status_changed(self.connection, job, "started")

    def handle_job_success(self, job, *args, **kwargs):
        super().handle_job_success(job, *args, **kwargs)
        events.status_changed(self.connection, job)

    def handle_job_failure(self, job, *args, **kwargs):
        super().handle_job_failure(job, *args, **kwargs)
        events.status_changed(self.connection, job)
