"""A job as the API and the command line show it."""
from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any

from rq.exceptions import DeserializationError
from rq.registry import ScheduledJobRegistry

from .queues import ServiceJob, statuses
from .registry import JobRegistry
from .times import iso

def status_of(job: ServiceJob) -> str:
    status = job.get_status(refresh=False)
    return str(getattr(status, "value", status) or "unknown")


def describe(job: ServiceJob, registry: JobRegistry, *, detail: bool = True) -> dict[str, Any]:
    """The job's state; `detail` adds what costs more reads (history, traceback, position)."""
    status = status_of(job)
    try:
        spec = registry.by_path(job.func_name)
        name, args, kwargs = (spec.name if spec else job.func_name), list(job.args), dict(job.kwargs)
    except DeserializationError:
        # A record not written by this service (say, pickled): show it, never run it.
        name, args, kwargs = "<unreadable>", [], {}
    view: dict[str, Any] = {
        "id": job.id,
        "job": name,
        "status": status,
        "queue": job.origin,
        "args": args,
        "kwargs": kwargs,
        "description": job.description,
        "progress": job.meta.get("progress") if isinstance(job.meta, dict) else None,
        # Set when a worker stopped (SIGTERM past its grace, or died) and the job went back to its queue.
        "interrupted": job.meta.get("interrupted") if isinstance(job.meta, dict) else None,
        "retries_left": job.retries_left,
        "depends_on": list(job._dependency_ids),
        "created_at": iso(job.created_at),
        "enqueued_at": iso(job.enqueued_at),
        "started_at": iso(job.started_at),
        "ended_at": iso(job.ended_at),
    }
    if status == "finished":
        view["result"] = job.return_value()
    if not detail:
        return view
    history = [_attempt(entry) for entry in (job.meta.get("failures", []) if isinstance(job.meta, dict) else [])]
    if status == "finished":
        history.append({"outcome": "finished", "at": view["ended_at"]})
    view["attempts"] = len(history) + (1 if status == "started" else 0)
    view["history"] = history
    if status in ("failed", "stopped"):
        if history and history[-1].get("error"):
            view["error"] = history[-1]["error"]
        else:  # failed outside a worker's hands (recovery gave up on it): RQ's own result
            latest = job.latest_result()
            if latest is not None and latest.exc_string:
                view["error"] = parse_exception(latest.exc_string)
    if status == "queued":
        known = getattr(job, "known_position", None)
        view["position"] = known if known is not None else job.get_position()
    if status == "scheduled":
        view["scheduled_for"] = _scheduled_for(job)
    if status == "deferred" and job._dependency_ids:
        view["waiting_on"] = _waiting_on(job)
    return view


def _waiting_on(job: ServiceJob) -> list[dict[str, str]]:
    """The job's dependencies that have not finished, with their status: one that
    failed (or was stopped, canceled, or has expired) holds the job until it is
    retried and finishes, and the user must see which."""
    ids = list(job._dependency_ids)
    return [
        {"id": dependency, "status": status or "expired"}
        for dependency, status in zip(ids, statuses(job.connection, ids))
        if status != "finished"
    ]


def _attempt(entry: dict[str, Any]) -> dict[str, Any]:
    at = entry.get("at")
    return {
        "outcome": entry.get("outcome", "failed"),
        "at": iso(datetime.fromtimestamp(at, timezone.utc)) if isinstance(at, (int, float)) else None,
        "error": entry.get("error"),
    }


_TRACEBACK = "Traceback (most recent call last):"
_TYPE = re.compile(r"[A-Za-z_][\w.]*")


def parse_exception(text: str) -> dict[str, str]:
    """Exception type, message and traceback from RQ's formatted exception text.

    The exception is what follows the last traceback's frames (its indented
    lines), all of it: a message may run over several lines, one of which may
    look like `KeyError: x`. A text that is no traceback (a worker's own reason
    for failing a job, an `AbandonedJobError: …`) is read the same way."""
    lines = text.strip().rpartition(_TRACEBACK)[2].splitlines()  # all of it, without a traceback
    while lines and (not lines[0].strip() or lines[0][0].isspace()):  # the frames
        lines.pop(0)
    exception = "\n".join(lines).strip()
    kind, sep, message = exception.partition(": ")
    if not (sep and _TYPE.fullmatch(kind)):
        kind, message = (exception, "") if _TYPE.fullmatch(exception) else ("Error", exception)
    return {"type": kind, "message": message, "traceback": text}


def exception_line(text: str) -> str:
    """`Type: message` of RQ's formatted exception text, for a log line."""
    error = parse_exception(text)
    return f"{error['type']}: {error['message']}" if error["message"] else error["type"]


def _scheduled_for(job: ServiceJob) -> str | None:
    try:
        moment = ScheduledJobRegistry(job.origin, connection=job.connection).get_scheduled_time(job)
    except Exception:  # no longer in the schedule: it is being enqueued right now
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return iso(moment)


def age_seconds(moment: datetime | None, now: datetime) -> float | None:
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return max(0.0, (now - moment).total_seconds())
