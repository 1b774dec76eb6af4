"""`flask --app service jobs …`: the operator's command line, on the same paths as HTTP."""
from __future__ import annotations

import json
import sys

import click
from flask import current_app
from flask.cli import AppGroup
from pydantic import ValidationError
from rq.exceptions import NoSuchJobError

from . import enqueue as enqueuing
from . import job_actions
from .job_view import describe
from .queues import fetch_job
from .registry import InvalidArguments, UnknownJob


def _service(name: str):
    return current_app.extensions["jobservice"][name]


def _print(data) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def _json(value: str, what: str):
    try:
        return json.loads(value)
    except json.JSONDecodeError as error:
        raise click.BadParameter(f"not JSON: {error}", param_hint=what) from None


jobs = AppGroup("jobs", help="Enqueue, inspect and retry jobs.")


@jobs.command("enqueue")
@click.argument("name")
@click.option("--args", "args", default="[]", help="Positional arguments, a JSON list.")
@click.option("--kwargs", "kwargs", default="{}", help="Keyword arguments, a JSON object.")
@click.option("--queue", default=None, help="high, default or low.")
@click.option("--delay", type=float, default=None, help="Seconds to wait before running.")
def enqueue_command(name: str, args: str, kwargs: str, queue: str | None, delay: float | None) -> None:
    """Enqueue job NAME (e.g. demo.add) and print it."""
    try:
        request = enqueuing.JobRequest(
            job=name, args=_json(args, "--args"), kwargs=_json(kwargs, "--kwargs"), queue=queue, delay=delay
        )
        prepared = enqueuing.prepare(request, registry=_service("registry"), settings=_service("settings"))
        job = enqueuing.enqueue(prepared, _service("redis"))
    except ValidationError as error:
        _fail(str(error))
    except UnknownJob:
        _fail(f"there is no job called {name!r}")
    except (InvalidArguments, enqueuing.InvalidRequest) as error:
        _fail(str(error))
    _print(describe(job, _service("registry")))


@jobs.command("status")
@click.argument("job_id")
def status_command(job_id: str) -> None:
    """Print job JOB_ID."""
    _print(describe(_fetch(job_id), _service("registry")))


@jobs.command("retry")
@click.argument("job_id")
def retry_command(job_id: str) -> None:
    """Requeue failed or stopped job JOB_ID."""
    try:
        job = job_actions.retry(_fetch(job_id), _service("redis"))
    except job_actions.NotAllowed as error:
        _fail(str(error))
    _print(describe(job, _service("registry")))


@jobs.command("list")
@click.option("--status", type=click.Choice(job_actions.STATUSES), default=None)
@click.option("--queue", default=None)
@click.option("--limit", type=click.IntRange(1, 100), default=20)
def list_command(status: str | None, queue: str | None, limit: int) -> None:
    """List jobs, newest first."""
    found, _ = job_actions.listing(_service("redis"), status=status, queue=queue, limit=limit)
    for job in found:
        view = describe(job, _service("registry"), detail=False)
        click.echo(f"{view['id']}  {view['status']:<9}  {view['queue']:<8}  {view['job']}")


def _fetch(job_id: str):
    try:
        return fetch_job(job_id, _service("redis"))
    except NoSuchJobError:
        _fail(f"no job {job_id!r}: it never existed or its record has expired")
