"""Enqueue jobs, follow them (JSON, long poll, Server-Sent Events) and act on them."""
from __future__ import annotations

import inspect
import json
import time
from typing import Literal

from apiflask import APIBlueprint
from flask import Response, g, request, stream_with_context
from pydantic import BaseModel, ConfigDict, Field
from pydantic_core import PydanticSerializationError
from rq.exceptions import NoSuchJobError

from .. import enqueue as enqueuing
from .. import job_actions, rate_limits
from ..events import TERMINAL, Subscription
from ..job_view import describe
from ..problems import problem
from ..auth import requires
from ..queues import ServiceJob, fetch_job
from ..registry import InvalidArguments, UnknownJob
from ..shared_reads import SharedReads
from . import service, services
from .schemas import CancelOut, JobOut, JobPage, JobTypes, Progress

bp = APIBlueprint("jobs", __name__)

#: Seconds between keep-alive comments on an event stream.
KEEPALIVE = 15.0


class ListQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: Literal[job_actions.STATUSES] | None = None  # type: ignore[valid-type]
    queue: str | None = Field(None, max_length=100, description="Only jobs of this queue (none match an unknown one).")
    limit: int = Field(20, ge=1, le=100)
    cursor: str | None = Field(None, max_length=200, pattern=r"^[0-9]{1,17}(\.[0-9]{1,17})?:[A-Za-z0-9_-]{1,100}$")


class WaitQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    wait: float = Field(0, ge=0, le=60, description="Seconds to wait for the job to end before answering.")


@bp.post("/jobs")
@requires("enqueue")
@bp.input(enqueuing.JobRequest, location="json", arg_name="body")
@bp.output(JobOut, status_code=202, description="Accepted: the job is queued, scheduled or deferred")
@bp.doc(
    summary="Enqueue a job",
    responses={
        200: "The job an earlier request with the same Idempotency-Key created",
        400: "No body, malformed JSON or a bad Idempotency-Key",
        404: "Unknown job name",
        409: "Idempotency-Key reused with another body",
        429: "Over a rate limit; see Retry-After",
        503: "The queue is full; see Retry-After",
        413: "Body larger than MAX_BODY_BYTES",
        415: "Body not JSON",
        422: "Invalid arguments or options",
    },
)
def create_job(body: enqueuing.JobRequest):
    req, token, found = request._get_current_object(), g.token, services()  # one look through each proxy
    key = req.headers.get("Idempotency-Key")
    if key is not None and not 1 <= len(key) <= 200:
        raise problem(400, "Idempotency-Key must be 1 to 200 characters.")
    settings, connection, registry = found["settings"], found["redis"], found["registry"]
    try:
        prepared = enqueuing.prepare(body, registry=registry, settings=settings)
        scopes = prepared.spec.scopes(prepared.args, prepared.kwargs)
        if body.depends_on:
            scopes += ("read",)  # its answer tells whether the jobs named exist, and how they ended
        for scope in scopes:
            if not token.allows(scope):
                raise problem(403, f"Enqueueing {body.job} as asked takes the {scope!r} scope, "
                              "which this token lacks.", title="Forbidden")
        counters = rate_limits.for_enqueue(settings, token.id, prepared.spec, req.remote_addr)
        if key is None:
            job, created = enqueuing.enqueue(prepared, connection, counters=counters), True
        else:
            job, created = enqueuing.enqueue_once(body, prepared, connection, key, owner=token.id, counters=counters)
    except UnknownJob:
        raise problem(404, f"There is no job called {body.job!r}; GET /jobs/registry lists them.") from None
    except InvalidArguments as error:
        raise problem(422, f"Invalid arguments for {body.job}: {error}", errors=error.problems) from None
    except enqueuing.InvalidRequest as error:
        raise problem(422, str(error), errors=[{"field": error.field, "problem": error.problem}]) from None
    except enqueuing.IdempotencyConflict as error:
        raise problem(409, str(error)) from None
    except enqueuing.QueueFull as error:
        raise problem(503, f"{error}; try again later.", headers={"Retry-After": "30"}) from None
    except rate_limits.RateLimited as error:
        raise problem(
            429,
            f"Too many requests: {error}. Try again in {error.retry_after} s.",
            title="Too Many Requests",
            headers={"Retry-After": str(error.retry_after)},
        ) from None
    # Spelled out rather than url_for, which builds a URL adapter on every call;
    # an id is letters, digits, - and _ (a uuid or `JobId`), so nothing to quote.
    location = {"Location": f"{req.script_root}/jobs/{job.id}"}
    return _answer(JobOut, describe(job, registry), 202 if created else 200, location)


@bp.get("/jobs")
@bp.input(ListQuery, location="query", arg_name="query")
@bp.output(JobPage)
@bp.doc(summary="List jobs, newest first")
def list_jobs(query: ListQuery):
    try:
        jobs, cursor = job_actions.listing(
            service("redis"), status=query.status, queue=query.queue, limit=query.limit, cursor=query.cursor
        )
    except ValueError:
        raise problem(422, "The cursor is not one this API returned.", errors=[{"field": "cursor", "problem": "invalid"}]) from None
    registry = service("registry")
    return {"jobs": [describe(job, registry, detail=False) for job in jobs], "next_cursor": cursor}


@bp.get("/jobs/registry")
@bp.output(JobTypes)
@bp.doc(summary="The jobs that may be enqueued, with their parameters as JSON Schema")
def job_types():
    return {
        "jobs": [
            {"name": spec.name, "description": inspect.getdoc(spec.func), "scope": spec.scope,
             "parameters": spec.parameters_schema()}
            for spec in service("registry")
        ]
    }


@bp.get("/jobs/<job_id>")
@bp.input(WaitQuery, location="query", arg_name="query")
@bp.output(JobOut)
@bp.doc(summary="A job's status, progress, result or error", responses={404: "No such job, or it expired"})
def get_job(job_id: str, query: WaitQuery):
    if query.wait <= 0:
        return _answer(JobOut, describe(_job_or_404(job_id), service("registry")))
    deadline = time.monotonic() + query.wait
    # Subscribe before reading the job, so an end in between is not missed.
    with Subscription(service("redis"), job_id) as subscription:
        view = describe(_job_or_404(job_id), service("registry"))
        while view["status"] not in TERMINAL:
            event = subscription.next(deadline - time.monotonic())
            if event is None:
                break
            if event.get("event") == "status":
                view = _after(view, event, subscription.received_at)
                if view is None:
                    raise _no_job(job_id)
        return _answer(JobOut, view)


@bp.get("/jobs/<job_id>/events")
@bp.doc(
    summary="Follow a job: Server-Sent Events until it ends",
    description="`status` events carry the whole job, `progress` events its progress report. "
    "The stream closes once the job is finished, failed, stopped or canceled.",
    responses={200: {"description": "text/event-stream", "content": {"text/event-stream": {}}}, 404: "No such job"},
)
def job_events(job_id: str):
    subscription = Subscription(service("redis"), job_id)
    try:
        job = _job_or_404(job_id)
    except Exception:
        subscription.close()
        raise
    registry = service("registry")

    def stream():
        with subscription:
            view = describe(job, registry)
            yield _sse("status", JobOut, view)
            if view["status"] in TERMINAL:
                return
            for event in subscription.events(idle_timeout=KEEPALIVE):
                if event is None:
                    yield ": keep-alive\n\n"
                elif event.get("event") == "progress":
                    yield _sse("progress", Progress, event["progress"])
                elif event.get("event") == "status":
                    view = _after(view, event, subscription.received_at)
                    if view is None:
                        return
                    yield _sse("status", JobOut, view)
                    if view["status"] in TERMINAL:
                        return

    response = Response(
        stream_with_context(stream()),
        mimetype="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
    # A client gone before the stream began never enters `stream`'s `with`.
    response.call_on_close(subscription.close)
    return response


@bp.delete("/jobs/<job_id>")
@bp.output(CancelOut)
@bp.doc(summary="Cancel a waiting job, or stop a running one", responses={404: "No such job", 409: "Already ended"})
def cancel_job(job_id: str):
    job = _job_or_404(job_id)
    try:
        outcome = job_actions.cancel(job, service("redis"))
    except job_actions.NotAllowed as error:
        raise problem(409, str(error)) from None
    return _answer(CancelOut, {"id": job.id, "status": outcome})


@bp.post("/jobs/<job_id>/retry")
@bp.output(JobOut, status_code=202)
@bp.doc(summary="Requeue a failed or stopped job", responses={404: "No such job", 409: "Not failed or stopped"})
def retry_job(job_id: str):
    job = _job_or_404(job_id)
    try:
        job_actions.retry(job, service("redis"))
    except job_actions.NotAllowed as error:
        raise problem(409, str(error)) from None
    return _answer(JobOut, describe(fetch_job(job_id, service("redis")), service("registry")), 202)


def _answer(schema: type[BaseModel], view: dict, status: int = 200, headers: dict | None = None) -> Response:
    """`view` as the response, checked against `schema`; the job it is about is
    named for the request's log line (`ops._log_request`).

    What the view's `@bp.output` would do (validate, dump to plain values, then
    encode with Flask's JSON provider) in one pass of pydantic's serializer:
    about 4 % of an enqueue's CPU less. `@bp.output` still documents the answer;
    APIFlask passes a Response through as it is.
    """
    g.job = (view["id"], view.get("job"))
    return Response(_json(schema, view), status, headers, mimetype="application/json")


def _json(schema: type[BaseModel], view: dict) -> str:
    """`view` checked against `schema`, as JSON: a float JSON has no word for
    (a result of `Infinity`) is written as `null`."""
    answer = schema.model_validate(view)
    try:
        return answer.model_dump_json(by_alias=True)
    except PydanticSerializationError:
        # pydantic will not write half a surrogate pair, which a job's result or
        # error may hold (text decoded with `surrogateescape`); json escapes it.
        return json.dumps(answer.model_dump(mode="json", by_alias=True))


#: The followers of a job read it again together after a status event.
_views_after_events = SharedReads()


def _after(view: dict, event: dict, received_at: float) -> dict | None:
    """The job as it is after a status event that reached this process at
    `received_at`; None if its record is gone for another reason.

    A job that keeps no result (`result_ttl: 0`) is deleted as it ends, so its
    last state is the one the event tells, over the last one seen.
    """
    connection, registry = service("redis"), service("registry")
    try:
        return _views_after_events.read(
            (connection, registry, view["id"]), lambda: describe(fetch_job(view["id"], connection), registry),
            received_at,
        )
    except NoSuchJobError:
        status = event.get("status")
        return {**view, "status": status, "position": None} if status in TERMINAL else None


def _job_or_404(job_id: str) -> ServiceJob:
    try:
        return fetch_job(job_id, service("redis"))
    except NoSuchJobError:
        raise _no_job(job_id) from None


def _no_job(job_id: str):
    return problem(404, f"No job {job_id!r}: it never existed or its record has expired.")


def _sse(event: str, schema: type[BaseModel], data: dict) -> str:
    """One Server-Sent Event, its data written as the same answer over GET would be."""
    return f"event: {event}\ndata: {_json(schema, data)}\n\n"
