"""Small jobs for trying the service out and for its tests."""
from __future__ import annotations

import time


def add(x: int | float, y: int | float) -> int | float:
    """Return x + y."""
    return x + y


def sleep(seconds: float) -> float:
    """Sleep for `seconds`, then return how long it slept."""
    started = time.monotonic()
    time.sleep(seconds)
    return time.monotonic() - started


def fail(message: str = "this job always fails") -> None:
    """Raise RuntimeError(message), to see what a failed job looks like."""
    raise RuntimeError(message)


def tick() -> str:
    """Return the current UTC time; the demo cron schedule runs it."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
