"""Jobs that misbehave as real ones sometimes do: crash the interpreter, leak, balloon;
and one that reports what a job and the programs it starts find in their environment.

Not in `jobs/` (no client may enqueue them): `tests.misbehaving_worker` runs
them for the isolation tests.
"""
from __future__ import annotations

import ctypes
import os
import subprocess
import time

#: What `leak` and `balloon` hold on to: module state lives as long as the process.
_kept: list[bytes] = []


def segfault() -> None:
    """Read address 0, as a buggy C extension might: SIGSEGV."""
    ctypes.string_at(0)


def leak(mb: int = 40) -> int:
    """Keep `mb` MiB for good and return how many such blocks this process now holds."""
    _kept.append(b"\x01" * (mb * 2**20))  # written, so resident
    return len(_kept)


def balloon(step_mb: int = 10, pause: float = 0.1) -> None:
    """Grow without end, `step_mb` MiB at a time."""
    while True:
        _kept.append(b"\x01" * (step_mb * 2**20))
        time.sleep(pause)


def environment() -> dict[str, str]:
    """`RQ_JOB_ID` and `RQ_WORKER_ID` as this job sees them and as a program it starts does."""
    names = ("RQ_JOB_ID", "RQ_WORKER_ID")
    started = subprocess.run(["sh", "-c", 'echo "$RQ_JOB_ID $RQ_WORKER_ID"'], capture_output=True, text=True, check=True)
    return {**{name: os.environ.get(name, "") for name in names},
            **dict(zip((f"program's {name}" for name in names), started.stdout.split()))}
