"""Response bodies of the jobs API, as they appear in the OpenAPI document."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class JobError(BaseModel):
    type: str = Field(examples=["RuntimeError"])
    message: str
    traceback: str | None = None


class Attempt(BaseModel):
    outcome: str = Field(description="finished, failed, retried or stopped")
    at: str | None = None
    error: JobError | None = None


class Progress(BaseModel):
    done: float
    total: float | None = None
    percent: float | None = None
    message: str | None = None
    at: float | None = Field(None, description="Unix time of the report.")


class Dependency(BaseModel):
    id: str
    status: str = Field(description="Its status, or expired when its record is gone.")


class JobOut(BaseModel):
    id: str
    job: str = Field(examples=["demo.add"])
    status: str = Field(description="queued, started, deferred, scheduled, finished, failed, stopped or canceled")
    queue: str
    args: list[Any]
    kwargs: dict[str, Any]
    description: str | None = None
    result: Any = Field(None, description="The return value, once finished.")
    error: JobError | None = Field(None, description="The last exception, once failed or stopped.")
    progress: Progress | None = None
    interrupted: dict[str, Any] | None = Field(
        None, description="Set when the job's worker stopped or died and the job went back to its queue."
    )
    attempts: int | None = Field(None, description="Executions so far, including the running one.")
    retries_left: int | None = None
    history: list[Attempt] | None = Field(None, description="Each attempt's outcome, oldest first.")
    scheduled_for: str | None = Field(None, description="When a scheduled job (or its next retry) is due.")
    position: int | None = Field(None, description="Place in the queue while queued, from 0.")
    depends_on: list[str] = Field(default_factory=list)
    waiting_on: list[Dependency] | None = Field(
        None, description="While deferred: the jobs it depends on that have not finished (a failed one holds it "
        "until that one is retried and finishes)."
    )
    created_at: str | None = None
    enqueued_at: str | None = None
    started_at: str | None = None
    ended_at: str | None = None


class JobPage(BaseModel):
    jobs: list[JobOut]
    next_cursor: str | None = Field(None, description="Pass as `cursor` for the next page; null on the last.")


class CancelOut(BaseModel):
    id: str
    status: str = Field(description="canceled, or stopping while the worker stops a running job")


class JobType(BaseModel):
    name: str = Field(examples=["demo.add"])
    description: str | None = None
    scope: str = Field("enqueue", description="The token scope that enqueueing it takes.")
    parameters: dict[str, Any] = Field(description="JSON Schema of the keyword arguments.")


class JobTypes(BaseModel):
    jobs: list[JobType]
