"""Cron schedules: list, create or change at run time, pause, resume, run now, delete.

Schedules declared in the schedules file are the scheduler's to keep: the API
may pause, resume and run them, but not change or delete them (409).
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Literal

from apiflask import APIBlueprint
from flask import url_for
from pydantic import BaseModel, ConfigDict, Field

from .. import enqueue as enqueuing
from .. import schedules
from ..job_view import describe
from ..problems import problem
from ..registry import InvalidArguments, UnknownJob
from ..schedules import store
from ..schedules.definition import check_name
from ..times import iso
from . import service
from .schemas import JobOut

bp = APIBlueprint("schedules", __name__)

#: Next run times shown for each schedule.
NEXT_RUNS = 3


class ScheduleBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    job: str = Field(max_length=200, description="An allow-listed job, `<module>.<function>`.", examples=["demo.add"])
    cron: str = Field(
        max_length=200,
        description="Five fields (minute hour day month weekday), or seven with seconds first and years last.",
        examples=["0 9 * * 1-5"],
    )
    args: list[Any] = Field(default_factory=list, description="Positional arguments.")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments.")
    queue: str | None = Field(None, description="Queue of each run; else the job's own or `default`.")
    timezone: str | None = Field(None, max_length=100, description="IANA zone of the cron expression; default SCHEDULE_TIMEZONE.", examples=["Europe/Berlin"])
    missed: Literal["skip", "once", "all"] = Field(
        "once", description="Ticks missed while no scheduler ran: `skip` them, run `once`, or run `all` (at most 100)."
    )


class RunTime(BaseModel):
    utc: str = Field(examples=["2025-03-30T01:30:00Z"])
    local: str = Field(description="The same instant in the schedule's zone.", examples=["2025-03-30T03:30:00+02:00"])


class LastRun(BaseModel):
    job_id: str
    at: str = Field(description="When it was enqueued (UTC).")
    tick: RunTime | None = Field(None, description="The tick it ran for; null for a run asked for over the API.")


class ScheduleOut(BaseModel):
    name: str
    job: str
    args: list[Any]
    kwargs: dict[str, Any]
    queue: str
    cron: str
    timezone: str
    missed: str
    source: Literal["declared", "api"] = Field(description="`declared` in the schedules file (it wins), or `api`.")
    paused: bool
    next_runs: list[RunTime] = Field(description="The next ticks, soonest first; empty while paused.")
    last_run: LastRun | None = None
    error: str | None = Field(None, description="Why the scheduler paused it, if it did.")


class ScheduleList(BaseModel):
    schedules: list[ScheduleOut]


@bp.get("/schedules")
@bp.output(ScheduleList)
@bp.doc(summary="Every schedule, with its next runs and its last run")
def list_schedules():
    return {"schedules": [_view(stored) for stored in store.all_schedules(service("redis"))]}


@bp.get("/schedules/<name>")
@bp.output(ScheduleOut)
@bp.doc(summary="One schedule", responses={404: "No such schedule"})
def get_schedule(name: str):
    return _view(_stored_or_404(name))


@bp.put("/schedules/<name>")
@bp.input(ScheduleBody, location="json", arg_name="body")
@bp.output(ScheduleOut, description="Replaced")
@bp.doc(
    summary="Create or replace a run-time schedule",
    description="It survives restarts. A schedule declared in the schedules file cannot be replaced (409).",
    responses={
        201: "Created",
        400: "No body, or not valid JSON",
        404: "Unknown job name",
        409: "Declared in the schedules file",
        413: "Body too large",
        415: "Body not JSON",
        422: "Invalid schedule",
    },
)
def put_schedule(name: str, body: ScheduleBody):
    try:
        check_name(name)
    except schedules.InvalidSchedule as error:
        raise problem(422, f"Invalid schedule name {name!r}: {error.problem}.", errors=[_error(error)]) from None
    _refuse_if_declared(name, "replace", store.get(service("redis"), name))
    schedule = schedules.Schedule(name=name, **body.model_dump())
    try:
        valid = schedules.validate(schedule, registry=service("registry"), settings=service("settings"))
    except UnknownJob:
        raise problem(404, f"There is no job called {body.job!r}; GET /jobs/registry lists them.") from None
    except InvalidArguments as error:
        raise problem(422, f"Invalid arguments for {body.job}: {error}", errors=error.problems) from None
    except (enqueuing.InvalidRequest, schedules.InvalidSchedule) as error:
        raise problem(422, str(error), errors=[_error(error)]) from None
    now = _now()
    if valid.cron.next_after(now) is None:  # it matched once, in a year gone by (`0 0 0 1 1 * 1999`)
        raise problem(422, f"The cron expression {body.cron!r} never fires again.",
                      errors=[{"field": "cron", "problem": "no tick after now"}])
    saved = store.save(service("redis"), valid, source=store.API, now=now)
    status = 201 if saved.outcome == "created" else 200
    return _view(saved.schedule), status, {"Location": url_for(".get_schedule", name=name)}


@bp.post("/schedules/<name>/pause")
@bp.output(ScheduleOut)
@bp.doc(summary="Stop firing until resumed", responses={404: "No such schedule"})
def pause_schedule(name: str):
    if not store.pause(service("redis"), name):
        raise _not_found(name)
    return _view(_stored_or_404(name))


@bp.post("/schedules/<name>/resume")
@bp.output(ScheduleOut)
@bp.doc(summary="Fire again from the next tick (ticks passed while paused do not run)", responses={404: "No such schedule"})
def resume_schedule(name: str):
    if not store.resume(service("redis"), name, now=_now()):
        raise _not_found(name)
    return _view(_stored_or_404(name))


@bp.post("/schedules/<name>/run")
@bp.output(JobOut, status_code=202, description="Accepted: one extra run is queued")
@bp.doc(summary="Run the schedule's job once now, besides its ticks", responses={404: "No such schedule"})
def run_schedule(name: str):
    job = store.run_now(service("redis"), name, now=_now())
    if job is None:
        raise _not_found(name)
    return describe(job, service("registry")), 202, {"Location": url_for("jobs.get_job", job_id=job.id)}


@bp.delete("/schedules/<name>")
@bp.output({}, status_code=204)
@bp.doc(summary="Delete a run-time schedule (jobs it queued stay)",
        responses={404: "No such schedule", 409: "Declared in the schedules file, or changed while being deleted"})
def delete_schedule(name: str):
    stored = _stored_or_404(name)
    _refuse_if_declared(name, "delete", stored)
    # As read: a schedule the scheduler declared (or a PUT replaced) since is not deleted unseen.
    outcome = store.delete(service("redis"), name, revision=stored.revision)
    if outcome == store.ABSENT:
        raise _not_found(name)
    if outcome == store.CHANGED:
        raise problem(409, f"Schedule {name!r} changed while it was being deleted; read it and try again.")
    return ""


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _stored_or_404(name: str) -> store.StoredSchedule:
    stored = store.get(service("redis"), name)
    if stored is None:
        raise _not_found(name)
    return stored


def _not_found(name: str):
    return problem(404, f"No schedule called {name!r}; GET /schedules lists them.")


def _refuse_if_declared(name: str, action: str, stored: store.StoredSchedule | None) -> None:
    """409 for a schedule that is declared (`stored` as read, or in the file)."""
    if (stored is not None and stored.source == store.DECLARED) or name in _declared_names():
        raise problem(
            409,
            f"Schedule {name!r} is declared in the schedules file, and declared schedules win over run-time ones: "
            f"{action} it there. The API may pause, resume or run it.",
            declared=True,
        )


def _declared_names() -> set[str]:
    """Names in the schedules file, so a conflict is refused even before the scheduler has synced."""
    try:
        return {schedule.name for schedule in schedules.load(service("settings").schedules_file or None)}
    except (OSError, schedules.InvalidSchedule):
        return set()


def _error(error: Exception) -> dict[str, str]:
    return {"field": getattr(error, "field", "schedule"), "problem": getattr(error, "problem", str(error))}


def _run_time(stored: store.StoredSchedule, tick: int) -> dict[str, str]:
    return {"utc": iso(datetime.fromtimestamp(tick, timezone.utc)), "local": stored.cron.local(tick).isoformat()}


def _view(stored: store.StoredSchedule) -> dict[str, Any]:
    definition = stored.definition
    last_run = None
    if stored.last_job_id:
        last_run = {
            "job_id": stored.last_job_id,
            "at": iso(datetime.fromtimestamp(stored.last_run_at or 0, timezone.utc)),
            "tick": None,
        }
        if stored.last_tick is not None and stored.last_job_id == schedules.tick_id(stored.name, stored.last_tick):
            last_run["tick"] = _run_time(stored, stored.last_tick)
    return {
        "name": stored.name,
        "job": definition["job"],
        "args": definition["args"],
        "kwargs": definition["kwargs"],
        "queue": definition["queue"],
        "cron": definition["cron"],
        "timezone": definition["timezone"],
        "missed": definition["missed"],
        "source": stored.source,
        "paused": stored.paused,
        "next_runs": [] if stored.paused else [_run_time(stored, tick) for tick in stored.next_ticks(NEXT_RUNS)],
        "last_run": last_run,
        "error": stored.error,
    }
