"""Enqueue a job and follow it."""
from __future__ import annotations

from typing import Any

from apiflask import APIBlueprint
from flask import url_for
from pydantic import BaseModel, ConfigDict, Field
from rq.exceptions import NoSuchJobError

from .. import enqueue as enqueuing
from ..problems import problem
from ..queues import ServiceJob, fetch_job
from ..registry import InvalidArguments, UnknownJob
from ..times import iso
from . import service

bp = APIBlueprint("jobs", __name__)


class EnqueueBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    job: str = Field(description="Name of an allow-listed job, `<module>.<function>`.", examples=["demo.add"])
    args: list[Any] = Field(default_factory=list, description="Positional arguments.")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments.")
    queue: str | None = Field(default=None, description="Queue to put the job on.")


class JobError(BaseModel):
    type: str
    message: str


class JobOut(BaseModel):
    id: str
    job: str
    status: str
    queue: str
    args: list[Any]
    kwargs: dict[str, Any]
    result: Any = None
    error: JobError | None = None
    created_at: str | None = None
    enqueued_at: str | None = None
    started_at: str | None = None
    ended_at: str | None = None


@bp.post("/jobs")
@bp.input(EnqueueBody, location="json", arg_name="body")
@bp.output(JobOut, status_code=202, description="Accepted: the job is queued")
@bp.doc(summary="Enqueue a job", responses={404: "Unknown job name", 422: "Invalid arguments"})
def create_job(body: EnqueueBody):
    request = enqueuing.JobRequest(job=body.job, args=body.args, kwargs=body.kwargs, queue=body.queue)
    try:
        prepared = enqueuing.prepare(request, registry=service("registry"), settings=service("settings"))
    except UnknownJob:
        raise problem(404, f"There is no job called {body.job!r}; GET /jobs/registry lists them.") from None
    except InvalidArguments as error:
        raise problem(422, f"Invalid arguments for {body.job}: {error}", errors=error.problems) from None
    except enqueuing.InvalidRequest as error:
        raise problem(422, str(error), errors=[{"field": error.field, "problem": error.problem}]) from None
    job = enqueuing.enqueue(prepared, service("redis"))
    return describe(job), 202, {"Location": url_for(".get_job", job_id=job.id)}


@bp.get("/jobs/<job_id>")
@bp.output(JobOut)
@bp.doc(summary="A job's status, result or error", responses={404: "No such job"})
def get_job(job_id: str):
    try:
        job = fetch_job(job_id, service("redis"))
    except NoSuchJobError:
        raise problem(404, f"No job {job_id!r}: it never existed or its record has expired.") from None
    return describe(job)


def describe(job: ServiceJob) -> dict[str, Any]:
    """A job as the API shows it."""
    status = job.get_status(refresh=False)
    spec = service("registry").by_path(job.func_name)
    view: dict[str, Any] = {
        "id": job.id,
        "job": spec.name if spec else job.func_name,
        "status": status.value if status else "unknown",
        "queue": job.origin,
        "args": list(job.args),
        "kwargs": dict(job.kwargs),
        "created_at": iso(job.created_at),
        "enqueued_at": iso(job.enqueued_at),
        "started_at": iso(job.started_at),
        "ended_at": iso(job.ended_at),
    }
    if view["status"] == "finished":
        view["result"] = job.return_value()
    elif view["status"] == "failed":
        view["error"] = _error_of(job)
    return view


def _error_of(job: ServiceJob) -> dict[str, str]:
    result = job.latest_result()
    text = (result.exc_string if result else None) or ""
    last = next((line for line in reversed(text.strip().splitlines()) if line.strip()), "")
    kind, _, message = last.partition(": ")
    return {"type": kind or "Error", "message": message or last}
