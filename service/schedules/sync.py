"""Make Redis hold the declared schedules: upsert each by name, remove the undeclared.

`scheduler.py` runs this at start. Restarting or deploying with the same file
changes nothing that matters: a schedule keeps its next tick, so no tick fires
twice and none is forgotten. A declared schedule replaces a run-time schedule of
the same name; run-time schedules of other names are left alone.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

from redis import Redis

from ..enqueue import InvalidRequest
from ..registry import InvalidArguments, JobRegistry, UnknownJob
from ..settings import Settings
from . import store
from .definition import InvalidSchedule, Schedule, ValidSchedule, name_of, validate

log = logging.getLogger("service.schedules")


@dataclass
class SyncReport:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    #: Run-time schedules that a declared one of the same name replaced.
    replaced: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        parts = [f"{label} {', '.join(names)}" for label, names in vars(self).items() if names]
        return "; ".join(parts) or "no schedules"


def sync(
    connection: Redis, declared: list[Schedule], *, registry: JobRegistry, settings: Settings, now: datetime
) -> SyncReport:
    """Upsert `declared`, drop declared schedules no longer listed.

    Validates all before writing any; InvalidSchedule names the first bad one.
    """
    valid: list[ValidSchedule] = []
    for schedule in declared:
        try:
            valid.append(validate(schedule, registry=registry, settings=settings))
        except UnknownJob:
            raise InvalidSchedule("job", f"schedule {schedule.name!r}: there is no job called {schedule.job!r}") from None
        except (InvalidArguments, InvalidRequest, InvalidSchedule) as error:
            raise InvalidSchedule("schedule", f"schedule {schedule.name!r}: {error}") from None
    report = SyncReport()
    for schedule, saved in zip(valid, store.save_many(connection, valid, source=store.DECLARED, now=now)):
        getattr(report, saved.outcome).append(schedule.name)
        if saved.previous_source == store.API:
            report.replaced.append(schedule.name)
            log.warning("declared schedule %s replaces the run-time schedule of that name", schedule.name)
    wanted = {schedule.name for schedule in valid}
    for stored in store.all_schedules(connection):
        # A schedule changed since it was read (a PUT made it a run-time one) stays.
        if stored.source == store.DECLARED and stored.name not in wanted:
            if store.delete(connection, stored.name, revision=stored.revision) == store.DELETED:
                report.removed.append(stored.name)
    # Schedules registered by earlier versions: an rq-scheduler entry without a state record.
    known = store.names(connection)
    for job in connection.zrange(store.SCHEDULED, 0, -1):
        name = name_of(job.decode())
        # Not if its state record was written since `known` was read (a POST /schedules).
        if name is not None and name not in known:
            if store.delete(connection, name, unrecorded=True) == store.DELETED:
                report.removed.append(name)
    return report

