"""What a schedule is, how it is declared in a TOML file, and how it is validated.

A schedule is checked like any job sent over HTTP (the allow-list, the
arguments, the queue: `service.enqueue.prepare`), plus its cron expression, its
time zone and its missed-run policy. Nothing here touches Redis.
"""
from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .. import enqueue as enqueuing
from ..registry import JobRegistry
from ..settings import Settings
from .cron import Cron, InvalidCron, InvalidZone, cron

#: What happens to ticks that passed while no scheduler ran.
MISSED_POLICIES = ("skip", "once", "all")
DEFAULT_MISSED = "once"

#: Job ids: `schedule-<name>` is the schedule's own record in rq-scheduler;
#: `schedule-<name>-<YYYYMMDDTHHMMSSZ>` is the job of one tick.
ID_PREFIX = "schedule-"
_TICK_FORMAT = "%Y%m%dT%H%M%SZ"
# `\Z`, not `$`: `$` also matches before a final newline, which a name must not end with.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,99}\Z")
_TICK_SUFFIX = re.compile(r"-\d{8}T\d{6}Z\Z")

DEFAULT_FILE = Path(__file__).resolve().parents[2] / "jobs" / "schedules.toml"


class InvalidSchedule(ValueError):
    """A schedule field is wrong; `field` names it."""

    def __init__(self, field: str, problem: str):
        self.field, self.problem = field, problem
        super().__init__(f"{field}: {problem}")


@dataclass(frozen=True)
class Schedule:
    """A schedule as declared in the file or sent over HTTP."""

    name: str
    job: str
    cron: str
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    queue: str | None = None
    #: IANA zone the cron expression is read in; None for SCHEDULE_TIMEZONE.
    timezone: str | None = None
    missed: str = DEFAULT_MISSED


@dataclass(frozen=True)
class ValidSchedule:
    """A schedule that passed every check, its zone resolved; nothing written yet."""

    schedule: Schedule
    prepared: enqueuing.PreparedJob
    cron: Cron

    @property
    def name(self) -> str:
        return self.schedule.name

    def definition(self) -> dict[str, Any]:
        """The schedule as stored and shown: arguments as validated, queue resolved."""
        return {
            "job": self.schedule.job,
            "args": list(self.prepared.args),
            "kwargs": dict(self.prepared.kwargs),
            "queue": self.prepared.queue,
            "cron": self.cron.expression,
            "timezone": self.cron.timezone,
            "missed": self.schedule.missed,
        }


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidSchedule("name", "1 to 100 letters, digits, - or _, starting with a letter or digit")
    if _TICK_SUFFIX.search(name):
        raise InvalidSchedule("name", "may not end like a tick time (-YYYYMMDDTHHMMSSZ)")
    return name


def validate(schedule: Schedule, *, registry: JobRegistry, settings: Settings) -> ValidSchedule:
    """Check `schedule` as POST /jobs checks a job, plus its timing.

    Raises InvalidSchedule, or what `prepare` raises (UnknownJob,
    InvalidArguments, InvalidRequest). Writes nothing.
    """
    check_name(schedule.name)
    if schedule.missed not in MISSED_POLICIES:
        raise InvalidSchedule("missed", f"one of {', '.join(MISSED_POLICIES)}, not {schedule.missed!r}")
    zone_name = schedule.timezone or settings.schedule_timezone
    try:
        request = enqueuing.JobRequest(job=schedule.job, args=schedule.args, kwargs=schedule.kwargs, queue=schedule.queue)
    except ValidationError as error:
        first = error.errors()[0]
        raise InvalidSchedule(".".join(map(str, first["loc"])) or "job", first["msg"]) from None
    prepared = enqueuing.prepare(request, registry=registry, settings=settings)
    try:
        timing = cron(schedule.cron, zone_name)
    except InvalidZone as error:
        raise InvalidSchedule("timezone", str(error)) from None
    except InvalidCron as error:
        raise InvalidSchedule("cron", str(error)) from None
    return ValidSchedule(replace(schedule, timezone=zone_name), prepared, timing)


def load(path: str | Path | None = None) -> list[Schedule]:
    """The schedules declared in `path` (default: jobs/schedules.toml); InvalidSchedule if malformed."""
    path = Path(path) if path else DEFAULT_FILE
    try:
        with path.open("rb") as handle:
            document = tomllib.load(handle)
    except tomllib.TOMLDecodeError as error:
        raise InvalidSchedule("file", f"{path}: {error}") from None
    unknown = set(document) - {"schedule"}
    if unknown:
        raise InvalidSchedule("file", f"{path}: unknown table(s) {', '.join(sorted(unknown))}; use [[schedule]]")
    known = {f.name for f in fields(Schedule)}
    schedules: list[Schedule] = []
    for number, entry in enumerate(document.get("schedule", []), start=1):
        where = f"{path}: schedule {entry.get('name', number)!r}"
        extra = set(entry) - known
        if extra:
            raise InvalidSchedule("file", f"{where}: unknown key(s) {', '.join(sorted(extra))}")
        missing = {"name", "job", "cron"} - set(entry)
        if missing:
            raise InvalidSchedule("file", f"{where}: missing {', '.join(sorted(missing))}")
        schedule = Schedule(**entry)
        try:
            check_name(schedule.name)
        except InvalidSchedule as error:
            raise InvalidSchedule("file", f"{where}: name {error.problem}") from None
        schedules.append(schedule)
    names = [s.name for s in schedules]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InvalidSchedule("file", f"{path}: schedule names must be unique: {', '.join(duplicates)}")
    return schedules


def template_id(name: str) -> str:
    return ID_PREFIX + name


def name_of(template: str) -> str | None:
    """The schedule name of a `schedule-<name>` job id, else None."""
    return template[len(ID_PREFIX):] if template.startswith(ID_PREFIX) else None


def tick_id(name: str, tick: int) -> str:
    """The job id of one tick: the same for every scheduler, so a tick is one job."""
    return f"{ID_PREFIX}{name}-{datetime.fromtimestamp(tick, timezone.utc).strftime(_TICK_FORMAT)}"


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))
