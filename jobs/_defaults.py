"""`@defaults(...)`: a job's own queue, retry policy, timeout and result TTL."""
from __future__ import annotations

from typing import Any, Callable, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

ATTRIBUTE = "__job_defaults__"


def defaults(
    *,
    queue: str | None = None,
    retry: dict[str, Any] | None = None,
    timeout: int | None = None,
    result_ttl: int | None = None,
    rate_limit: str | None = None,
    concurrency: Callable[[dict[str, Any]], tuple[str, int] | None] | None = None,
    scope: str | None = None,
) -> Callable[[F], F]:
    """Declare what a job gets when a request does not say otherwise.

    The function is returned unchanged (only an attribute is set), so it stays
    a plain function: `retry` takes the same shape as in POST /jobs, e.g.
    `{"max": 5, "backoff": [1, 5, 30]}`. `rate_limit` caps how often one client
    (by IP) may enqueue this job, e.g. `"1 per 10 seconds"`.

    `concurrency` limits how many jobs that share a key may be queued or running
    at once, across all workers: it is called with the job's validated arguments
    by name (defaults filled in) when the job is enqueued, and returns
    `(key, limit)`, or None for no limit. Jobs over the limit wait as
    `rate_limited` until a slot frees (RQ's concurrency limit).

    `scope` is the API token scope a client needs to enqueue the job over HTTP
    (`enqueue` unless said): `"admin"` for a job that removes or changes what
    other clients own, such as the nightly clean-up.
    """
    given = dict(
        queue=queue, retry=retry, timeout=timeout, result_ttl=result_ttl, rate_limit=rate_limit, concurrency=concurrency,
        scope=scope,
    )
    declared = {key: value for key, value in given.items() if value is not None}

    def mark(func: F) -> F:
        setattr(func, ATTRIBUTE, declared)
        return func

    return mark
