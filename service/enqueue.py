"""The one path from a request to an RQ job.

HTTP, the command line and declared schedules all go through `prepare` and
`enqueue`, so the allow-list check, argument validation and job options exist once.
"""
from __future__ import annotations

import hashlib
import json
import random
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any, Callable, Sequence

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError, TimeoutError as RedisTimeoutError
from rq.exceptions import NoSuchJobError
from rq.job import JobStatus, Retry
from rq.queue import Queue
from rq.rate_limit import RateLimit
from rq.utils import now

from . import job_index, queues, webhooks
from .admission import Admission, QueueFull
from .queues import ServiceJob
from .rate_limits import Counter
from .registry import JobRegistry, JobSpec
from .settings import Settings

JobId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,100}$")]
#: How deep arguments may nest, and how long one string in them may be.
MAX_ARGUMENT_DEPTH = 32
MAX_STRING_LENGTH = 65_536
Seconds = Annotated[int, Field(ge=0, le=86400)]
#: How far ahead a job may ask to start (`delay` or `at`).
MAX_START_DELAY = timedelta(days=366)


class InvalidRequest(ValueError):
    """The request names something that does not exist or cannot be combined."""

    def __init__(self, field: str, problem: str):
        self.field, self.problem = field, problem
        super().__init__(f"{field}: {problem}")


class IdempotencyConflict(Exception):
    """The Idempotency-Key was used before with another body, or is still being used."""


class ExponentialBackoff(BaseModel):
    """Wait `base`, then `base*factor`, `base*factor²`… seconds, never more than `cap`."""

    model_config = ConfigDict(extra="forbid")

    base: float = Field(4, gt=0, le=86400, description="First delay, seconds.")
    factor: float = Field(4, ge=1, le=100)
    cap: float = Field(3600, gt=0, le=86400, description="Longest delay, seconds.")
    jitter: bool = Field(True, description="Spread each delay randomly over [delay/2, delay].")

    def delays(self, count: int, rng: random.Random) -> list[int]:
        delays = []
        for attempt in range(count):
            delay = min(self.cap, self.base * self.factor**attempt)
            if self.jitter:
                delay = rng.uniform(delay / 2, delay)
            delays.append(max(1, round(delay)))
        return delays


class RetryPolicy(BaseModel):
    """How often a failing job is tried again, and how long to wait between tries."""

    model_config = ConfigDict(extra="forbid")

    max: int = Field(3, ge=0, le=25, description="Retries after the first attempt.")
    backoff: list[Seconds] | ExponentialBackoff = Field(
        default_factory=lambda: [4, 16, 64],
        description="Seconds before each retry (the last repeats), or an exponential policy.",
    )

    def to_rq(self, rng: random.Random | None = None) -> Retry | None:
        if self.max == 0:
            return None
        if isinstance(self.backoff, ExponentialBackoff):
            intervals = self.backoff.delays(self.max, rng or random.Random())
        else:
            intervals = list(self.backoff) or [0]
        return Retry(max=self.max, interval=intervals)


class JobRequest(BaseModel):
    """What a client asks for: which job, with what arguments, where and when."""

    model_config = ConfigDict(extra="forbid")

    job: str = Field(max_length=200, description="An allow-listed job, `<module>.<function>`.", examples=["demo.add"])
    args: list[Any] = Field(default_factory=list, description="Positional arguments.", examples=[[1, 2]])
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments.")
    queue: str | None = Field(None, description="`high`, `default` or `low`; else the job's own or `default`.")
    delay: float | None = Field(
        None, ge=0, le=MAX_START_DELAY.total_seconds(), description="Run no sooner than this many seconds from now."
    )
    at: AwareDatetime | None = Field(
        None, description="Run no sooner than this time (ISO 8601 with a zone), at most 366 days ahead."
    )
    retry: RetryPolicy | None = Field(None, description="Default: the job's own, else 3 retries after 4, 16, 64 s.")
    timeout: int | None = Field(None, ge=1, le=7 * 86400, description="Seconds the job may run.")
    result_ttl: int | None = Field(None, ge=0, le=30 * 86400, description="Seconds the result is kept.")
    ttl: int | None = Field(None, ge=1, le=30 * 86400, description="Seconds the job may wait before it is dropped.")
    depends_on: list[JobId] = Field(default_factory=list, max_length=50, description="Run after these jobs finish.")
    description: str | None = Field(None, max_length=500)
    webhook: webhooks.WebhookRequest | None = Field(
        None, description="POST the job's outcome to this URL when it ends, signed (HMAC-SHA256) and retried."
    )

    @model_validator(mode="after")
    def _bounded_arguments(self) -> "JobRequest":
        _check_bounds([self.args, self.kwargs])
        return self

    @model_validator(mode="after")
    def _one_start_time(self) -> "JobRequest":
        if self.delay is not None and self.at is not None:
            raise ValueError("give `delay` or `at`, not both")
        if self.depends_on and (self.delay is not None or self.at is not None):
            raise ValueError("`depends_on` cannot be combined with `delay` or `at`")
        return self

    def fingerprint(self) -> str:
        """Equal for equal requests, whatever the order of their keys."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


def _check_bounds(value: Any) -> None:
    """Refuse arguments nested deeper than MAX_ARGUMENT_DEPTH or with an overlong string."""
    stack = [(value, 0)]
    while stack:  # iterative: a hostile body must not exhaust the interpreter's stack
        item, depth = stack.pop()
        if depth > MAX_ARGUMENT_DEPTH:
            raise ValueError(f"arguments nest deeper than {MAX_ARGUMENT_DEPTH} levels")
        if isinstance(item, str):
            if len(item) > MAX_STRING_LENGTH:
                raise ValueError(f"a string in the arguments is longer than {MAX_STRING_LENGTH} characters")
        elif isinstance(item, dict):
            stack.extend((key, depth + 1) for key in item)
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)


@dataclass(frozen=True)
class PreparedJob:
    """A request that passed every check; nothing has been written yet."""

    spec: JobSpec
    queue: str
    args: list[Any]
    kwargs: dict[str, Any]
    #: When to run it, or None for now.
    at: datetime | None
    #: Keyword arguments of RQ's `create_job` (timeout, TTLs, retry, ...).
    options: dict[str, Any]
    #: Jobs the queue may hold before enqueueing is refused.
    queue_limit: int
    #: The completion webhook to keep beside the job (url, secret), if any.
    webhook: dict[str, str] | None = None


def prepare(
    request: JobRequest, *, registry: JobRegistry, settings: Settings, now: datetime | None = None
) -> PreparedJob:
    """Validate `request` against the allow-list, the signature and the queues.

    Raises UnknownJob, InvalidArguments or InvalidRequest; writes nothing.
    """
    spec = registry.get(request.job)
    args, kwargs = spec.validate(list(request.args), dict(request.kwargs))
    own = spec.declared
    queue_name = request.queue or own.get("queue") or settings.default_queue
    if queue_name not in settings.queues:
        raise InvalidRequest("queue", f"unknown queue {queue_name!r}; one of {', '.join(settings.queues)}")
    retry = request.retry or (RetryPolicy.model_validate(own["retry"]) if "retry" in own else RetryPolicy())
    later = request.delay is not None or request.at is not None
    at = _start_time(request, now or datetime.now(timezone.utc)) if later else None
    options = {
        "timeout": request.timeout or own.get("timeout") or settings.job_timeout,
        "result_ttl": _first(request.result_ttl, own.get("result_ttl"), settings.result_ttl),
        "failure_ttl": settings.failure_ttl,
        "ttl": request.ttl,
        "retry": retry.to_rq(),
        "depends_on": list(request.depends_on) or None,
        "description": request.description,
    }
    if "concurrency" in own:
        limit = own["concurrency"](_arguments_by_name(spec, args, kwargs))
        if limit is not None:
            options["rate_limit"] = RateLimit(*limit)
    webhook = None
    if request.webhook is not None:
        try:
            webhook = webhooks.resolve(request.webhook, settings)
        except ValueError as error:
            raise InvalidRequest("webhook", str(error)) from None
    return PreparedJob(
        spec=spec, queue=queue_name, args=args, kwargs=kwargs, at=at, options=options,
        queue_limit=settings.max_queue_depth, webhook=webhook,
    )


def _start_time(request: JobRequest, now: datetime) -> datetime:
    """When a job asked to start later may start: UTC, in whole seconds, at most
    MAX_START_DELAY ahead (a time further out, up to year 9999, would overflow
    the arithmetic that schedules it, after its rate limits were counted)."""
    if request.delay is not None:
        at = now + timedelta(seconds=request.delay)
    else:
        try:
            at = request.at.astimezone(timezone.utc)  # type: ignore[union-attr]
        except OverflowError:  # 0001-01-01T00:00:00+14:00 is before the first UTC time
            raise InvalidRequest("at", "out of range") from None
        if at > now + MAX_START_DELAY:
            raise InvalidRequest("at", f"more than {MAX_START_DELAY.days} days ahead")
        # A time gone by means now. RQ's scheduler looks only at scores from 0
        # up, so one before 1970 would otherwise wait for ever.
        at = max(at, now)
    if at.microsecond:
        # RQ keeps a start time in whole seconds, truncated: without rounding
        # up, a job asked for 12:00:00.7 would run at 12:00:00, early.
        at = at.replace(microsecond=0) + timedelta(seconds=1)
    return at


def _arguments_by_name(spec: JobSpec, args: list[Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    bound = spec.signature.bind(*args, **kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


def _first(*values: Any) -> Any:
    return next(value for value in values if value is not None)


def enqueue(
    prepared: PreparedJob, connection: Redis, job_id: str | None = None, counters: Sequence[Counter] = ()
) -> ServiceJob:
    """Write the prepared job to its queue (or to the schedule, when it has a time).

    `counters` are the rate limits the request draws on (HTTP only). Raises
    RateLimited or QueueFull, writing nothing, when the request is refused.
    """
    dependencies = prepared.options["depends_on"] or []
    if dependencies:
        _check_dependencies(dependencies, connection)
    queue = queues.queue(prepared.queue, connection)
    job = queue.create_job(
        prepared.spec.func, args=prepared.args, kwargs=prepared.kwargs, job_id=job_id, **prepared.options
    )
    job.has_webhook = bool(prepared.webhook)  # in its record, which its worker reads as it takes it
    admission = Admission(connection)
    if not (dependencies or prepared.at is not None or job.has_rate_limit or prepared.webhook):
        # The common case, in one round trip: limits, cap, the job, its queue and index.
        job.origin = queue.name  # as RQ's Queue._prepare_for_queue does
        job.enqueued_at = now()
        job._status = JobStatus.QUEUED
        try:
            job.known_position = admission.enqueue(counters, job, queue.key, prepared.queue_limit)
        except QueueFull:
            raise _full(prepared) from None
        return job
    if _waiting(queue, prepared, bool(dependencies), connection) >= prepared.queue_limit:
        raise _full(prepared)
    admission.count(counters, job)
    if prepared.webhook:
        # Before the job can run, so it cannot end before its webhook is known.
        delay = (prepared.at - datetime.now(timezone.utc)).total_seconds() if prepared.at else 0
        webhooks.remember(connection, job.id, prepared.webhook, delay_seconds=max(0, delay))
    if dependencies or (job.has_rate_limit and prepared.at is None):
        # RQ watches the dependencies in a transaction of its own and parks the
        # job as `deferred` while any is unfinished; a rate-limited job takes a
        # slot (or waits as `rate_limited`) in RQ's own script, outside a pipeline.
        job = queue.enqueue_job(job)
        job_index.add(connection, job)
        return job
    # One transaction: the job, its place in the queue (or schedule) and in the index.
    def write(pipe) -> None:
        if prepared.at is not None:
            queue.schedule_job(job, prepared.at, pipeline=pipe)
        else:
            queue.enqueue_job(job, pipeline=pipe)
        job_index.add(pipe, job)

    queues.write_new_job(connection, job, write)
    return job


def _full(prepared: PreparedJob) -> QueueFull:
    return QueueFull(f"queue {prepared.queue!r} holds {prepared.queue_limit} jobs already")


#: Statuses a job leaves only when someone retries it: a job that depends on
#: one would wait, deferred, for as long as nobody does.
_UNFINISHABLE = {"failed", "stopped", "canceled"}


def _check_dependencies(ids: list[str], connection: Redis) -> None:
    found = queues.statuses(connection, ids)
    missing = [job_id for job_id, status in zip(ids, found) if status is None]
    if missing:
        raise InvalidRequest("depends_on", f"no job {', '.join(map(repr, missing))}")
    for job_id, status in zip(ids, found):
        if status in _UNFINISHABLE:
            raise InvalidRequest("depends_on", f"job {job_id!r} is {status}, so this one would never run; retry that one first")


def _waiting(queue: Queue, prepared: PreparedJob, dependent: bool, connection: Redis) -> int:
    """How many of the queue's jobs wait where this one would: its schedule (a
    job with a start time), its deferred jobs (one with dependencies, which may
    also go straight to the queue) or the queue itself. MAX_QUEUE_DEPTH caps
    each, so no way of enqueueing grows Redis without bound."""
    if prepared.at is not None:
        return connection.zcard(queue.scheduled_job_registry.key)
    if not dependent:
        return connection.llen(queue.key)
    with connection.pipeline(transaction=False) as pipe:
        pipe.llen(queue.key).zcard(queue.deferred_job_registry.key)
        return max(pipe.execute())


IDEMPOTENCY_PREFIX = "jobservice:idempotency:"
IDEMPOTENCY_TTL = 24 * 3600
#: Seconds after which a key's first request is over, whatever became of it: far
#: longer than any request waits on Redis (its socket timeouts are seconds).
IDEMPOTENCY_TAKEOVER = 60


def enqueue_once(
    request: JobRequest, prepared: PreparedJob, connection: Redis, key: str, *, owner: str,
    counters: Sequence[Counter] = (), clock: Callable[[], float] = time.time,
) -> tuple[ServiceJob, bool]:
    """Enqueue unless `owner` (a token's id) used `key` in the last 24 h; returns (job, created).

    The key is claimed atomically before the job is written, so two concurrent
    requests with one key enqueue one job. Each token has keys of its own: another
    client's request with the same key neither sees this job nor blocks it.
    Raises IdempotencyConflict when the key came with another body, or its first
    request has not finished enqueuing.

    A request refused (a rate limit, a full queue) gives its key back. One that
    lost Redis keeps it, since the job may have been written before the break:
    the client's retry then finds that job, or, once the first request is surely
    over and wrote nothing, enqueues it under the id the key holds.
    """
    redis_key = IDEMPOTENCY_PREFIX + hashlib.sha256(f"{owner}\n{key}".encode()).hexdigest()
    fingerprint = request.fingerprint()
    job_id = str(uuid.uuid4())
    claim = _claim_text(job_id, clock(), fingerprint)
    if not connection.set(redis_key, claim, nx=True, ex=IDEMPOTENCY_TTL):
        claim = (connection.get(redis_key) or b"").decode()
        job_id, claimed_at, first_fingerprint = _claim_parts(claim)
        if first_fingerprint != fingerprint:
            raise IdempotencyConflict("this Idempotency-Key was used with a different request body")
        try:
            return ServiceJob.fetch(job_id, connection=connection), False
        except NoSuchJobError:
            pass
        if clock() - claimed_at < IDEMPOTENCY_TAKEOVER or connection.zscore(job_index.KEY, job_id) is not None:
            # Under way; or it wrote its job, which has ended and expired since.
            raise IdempotencyConflict("the first request with this Idempotency-Key is still being processed, "
                                      "or its job has ended and expired")
        taken_over = _claim_text(job_id, clock(), fingerprint)
        if connection.set(redis_key, taken_over, xx=True, keepttl=True, get=True) != claim.encode():
            raise IdempotencyConflict("the first request with this Idempotency-Key is still being processed")
    try:
        return enqueue(prepared, connection, job_id=job_id, counters=counters), True
    except (RedisConnectionError, RedisTimeoutError):
        raise  # the job may be written: the key stays, for the retry to find it
    except BaseException:
        connection.delete(redis_key)
        raise


def _claim_text(job_id: str, claimed_at: float, fingerprint: str) -> str:
    return f"{job_id} {claimed_at:.3f} {fingerprint}"


def _claim_parts(claim: str) -> tuple[str, float, str]:
    """A key's claim: the job id, when it was claimed and the request's fingerprint."""
    job_id, _, rest = claim.partition(" ")
    claimed_at, _, fingerprint = rest.partition(" ")
    try:
        return job_id, float(claimed_at), fingerprint
    except ValueError:  # a claim written before claims were timed: "<id> <fingerprint>"
        return job_id, 0.0, rest
