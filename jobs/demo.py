"""Small jobs for trying the service out and for its tests."""
from __future__ import annotations

import time
from typing import Annotated

from pydantic import Field
from rq import get_current_job

from jobs import progress

# Bounds a worker can honour: a 64-bit integer (a longer one is no JSON number
# a client could read back, nor a float it could be added to), and a day at most.
Whole = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]
Seconds = Annotated[float, Field(ge=0, le=86400)]


def add(x: Whole | float, y: Whole | float) -> int | float:
    """Return x + y."""
    return x + y


def sleep(seconds: Seconds) -> float:
    """Sleep for `seconds`, then return how long it slept."""
    started = time.monotonic()
    time.sleep(seconds)
    return time.monotonic() - started


def fail(message: str = "this job always fails") -> None:
    """Raise RuntimeError(message), to see what a failed job looks like."""
    raise RuntimeError(message)


def flaky(fail_times: Annotated[int, Field(ge=0, le=100)] = 1) -> int:
    """Fail the first `fail_times` attempts, then return the number of the attempt that worked."""
    job = get_current_job()
    attempt = 1
    if job is not None:
        attempt = int(job.meta.get("attempt", 0)) + 1
        job.meta["attempt"] = attempt
        job.save_meta()
    if attempt <= fail_times:
        raise RuntimeError(f"attempt {attempt} of {fail_times + 1} fails on purpose")
    return attempt


def steps(count: Annotated[int, Field(ge=0, le=10_000)] = 5, pause: Seconds = 0.0) -> int:
    """Take `count` steps of `pause` seconds, reporting progress after each."""
    for step in range(1, count + 1):
        time.sleep(pause)
        progress(step, count, f"step {step} of {count}")
    return count


def tick() -> str:
    """Return the current UTC time; the demo cron schedule runs it."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
