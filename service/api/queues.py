"""Queues and workers: what waits, what runs, what failed."""
from __future__ import annotations

from datetime import datetime, timezone

from apiflask import APIBlueprint
from pydantic import BaseModel, Field
from rq import Worker

from ..job_view import age_seconds
from ..queues import ServiceQueue
from ..times import iso
from . import service

bp = APIBlueprint("queues", __name__)


class QueueOut(BaseModel):
    name: str
    depth: int = Field(description="Jobs waiting to run.")
    oldest_age_seconds: float | None = Field(None, description="How long the oldest waiting job has waited.")
    started: int
    scheduled: int
    deferred: int
    failed: int
    finished: int
    canceled: int


class QueueList(BaseModel):
    queues: list[QueueOut]


class WorkerOut(BaseModel):
    name: str
    state: str = Field(description="idle, busy, suspended or started")
    queues: list[str]
    current_job: str | None = None
    last_heartbeat: str | None = None
    birth: str | None = None
    successful_jobs: int
    failed_jobs: int
    pid: int | None = None
    hostname: str | None = None


class WorkerList(BaseModel):
    workers: list[WorkerOut]


@bp.get("/queues")
@bp.output(QueueList)
@bp.doc(summary="Each queue: depth, oldest waiting job, and jobs by status")
def list_queues():
    connection = service("redis")
    now = datetime.now(timezone.utc)
    return {"queues": [_queue(ServiceQueue(name, connection=connection), now) for name in service("settings").queues]}


def _queue(queue: ServiceQueue, now: datetime) -> dict:
    oldest_id = queue.get_job_ids(0, 1)
    oldest = queue.fetch_job(oldest_id[0]) if oldest_id else None
    return {
        "name": queue.name,
        "depth": queue.count,
        "oldest_age_seconds": age_seconds(oldest.enqueued_at, now) if oldest else None,
        "started": queue.started_job_registry.count,
        "scheduled": queue.scheduled_job_registry.count,
        "deferred": queue.deferred_job_registry.count,
        "failed": queue.failed_job_registry.count,
        "finished": queue.finished_job_registry.count,
        "canceled": queue.canceled_job_registry.count,
    }


@bp.get("/workers")
@bp.output(WorkerList)
@bp.doc(summary="Each worker: state, current job, last heartbeat")
def list_workers():
    workers = Worker.all(connection=service("redis"))
    return {
        "workers": [
            {
                "name": worker.name,
                "state": str(getattr(worker.get_state(), "value", worker.get_state())),
                "queues": worker.queue_names(),
                "current_job": worker.get_current_job_id(),
                "last_heartbeat": iso(worker.last_heartbeat),
                "birth": iso(worker.birth_date),
                "successful_jobs": worker.successful_job_count or 0,
                "failed_jobs": worker.failed_job_count or 0,
                "pid": worker.pid,
                "hostname": worker.hostname,
            }
            for worker in sorted(workers, key=lambda w: w.name)
        ]
    }
