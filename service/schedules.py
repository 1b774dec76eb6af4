"""Declared schedules: read from a TOML file, registered with rq-scheduler by name."""
from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import crontab
from rq_scheduler import Scheduler

from . import enqueue as enqueuing
from .queues import ServiceJob
from .registry import JobRegistry
from .settings import Settings

#: Job ids of declared schedules start with this, so stale ones can be found.
ID_PREFIX = "schedule-"
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,100}$")
DEFAULT_FILE = Path(__file__).resolve().parent.parent / "jobs" / "schedules.toml"


class InvalidSchedule(ValueError):
    pass


@dataclass(frozen=True)
class Schedule:
    name: str
    job: str
    cron: str
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    queue: str | None = None

    @property
    def job_id(self) -> str:
        return ID_PREFIX + self.name


def load(path: str | Path | None = None) -> list[Schedule]:
    """The schedules declared in `path` (default: jobs/schedules.toml)."""
    path = Path(path) if path else DEFAULT_FILE
    with path.open("rb") as handle:
        document = tomllib.load(handle)
    schedules = []
    for entry in document.get("schedule", []):
        try:
            schedule = Schedule(**entry)
        except TypeError as error:
            raise InvalidSchedule(f"{path}: {error}") from None
        if not _NAME.match(schedule.name):
            raise InvalidSchedule(f"{path}: schedule name {schedule.name!r} must be letters, digits, - or _")
        try:
            crontab.CronTab(schedule.cron)
        except ValueError as error:
            raise InvalidSchedule(f"{path}: schedule {schedule.name!r}: bad cron {schedule.cron!r}: {error}") from None
        schedules.append(schedule)
    names = [s.name for s in schedules]
    if len(names) != len(set(names)):
        raise InvalidSchedule(f"{path}: schedule names must be unique")
    return schedules


def register(scheduler: Scheduler, schedules: list[Schedule], *, registry: JobRegistry, settings: Settings) -> None:
    """Make rq-scheduler hold exactly `schedules`: upsert each by name, drop the rest.

    Each schedule goes through the same validation as a job sent over HTTP, so a
    bad declaration stops the scheduler at start instead of failing every tick.
    """
    prepared = {
        schedule.job_id: (schedule, enqueuing.prepare(
            enqueuing.JobRequest(job=schedule.job, args=schedule.args, kwargs=schedule.kwargs, queue=schedule.queue),
            registry=registry,
            settings=settings,
        ))
        for schedule in schedules
    }
    for job in scheduler.get_jobs():
        if job.id.startswith(ID_PREFIX) and job.id not in prepared:
            scheduler.cancel(job)
            job.delete()
    for job_id, (schedule, job) in prepared.items():
        scheduler.cancel(job_id)
        scheduler.cron(
            schedule.cron,
            job.spec.func,
            args=job.args,
            kwargs=job.kwargs,
            id=job_id,
            queue_name=job.queue,
            timeout=job.options["timeout"],
            result_ttl=job.options["result_ttl"],
        )


def make_scheduler(connection, settings: Settings) -> Scheduler:
    """rq-scheduler, creating JSON jobs of the allow-list (it has no serializer option)."""
    from .queues import ServiceQueue

    return Scheduler(
        connection=connection,
        interval=settings.scheduler_interval,
        job_class=ServiceJob,
        queue_class=ServiceQueue,
    )
