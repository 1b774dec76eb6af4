"""Transient or permanent: how a job says whether retrying can help.

RQ retries any exception while the job has retries left. A job that knows
better raises one of these inside `with classified():`

    from jobs._failures import PermanentFailure, TransientFailure, classified

    with classified():
        if response.status_code == 404:
            raise PermanentFailure("no such page")   # fails now, retries or not
        if response.status_code == 429:
            raise TransientFailure("busy", retry_after=30)  # next try in >= 30 s

`classified()` adjusts the running job's own retry state before the exception
reaches the worker: a permanent failure sets `retries_left` to 0, so RQ marks the
job failed at once; a transient one with `retry_after` lengthens the wait before
the next retry (never shortens it). Everything else is left to the job's retry
policy, as usual. Outside a worker (a direct call) the exceptions simply propagate.

RQ 3 also lets a job *return* `rq.Retry(...)`, but that keeps a second retry
counter beside the job's policy (its own `max`), records the attempt as a result
rather than a failure (a JSON record keeps only a placeholder for the Retry
object), and skips the worker's failure history; adjusting the policy in place
keeps one count, one history and the job's `retries_left` honest.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator

from rq import get_current_job


class PermanentFailure(Exception):
    """Retrying cannot help (a 5xx SMTP reply, an HTTP 404): fail now."""


class TransientFailure(Exception):
    """Worth another try (a timeout, a 4xx SMTP reply, an HTTP 503), perhaps after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


@contextmanager
def classified() -> Iterator[None]:
    """Apply a PermanentFailure or TransientFailure raised in the block to the current job's retries."""
    try:
        yield
    except PermanentFailure:
        give_up()
        raise
    except TransientFailure as failure:
        if failure.retry_after:
            delay_next_retry(failure.retry_after)
        raise


def give_up() -> None:
    """Leave the current job no retries, so this attempt is its last."""
    job = get_current_job()
    if job is not None and job.retries_left:
        job.retries_left = 0


def delay_next_retry(seconds: float) -> None:
    """Wait at least `seconds` before the current job's next retry.

    RQ picks a retry's delay from `retry_intervals` by how many retries are left
    (the first interval repeating when there are more retries than intervals).
    The remaining schedule is written out in full, one interval a retry left, so
    only the next delay changes and the later ones stay as the policy said. RQ
    schedules to the whole second (rounding down), hence the extra second.
    """
    job = get_current_job()
    if job is None or not job.retries_left:
        return
    intervals = list(job.retry_intervals or [0])
    left = job.retries_left
    remaining = [intervals[max(len(intervals) - (left - k), 0)] for k in range(left)]
    remaining[0] = max(remaining[0], math.ceil(seconds) + 1)
    job.retry_intervals = remaining
