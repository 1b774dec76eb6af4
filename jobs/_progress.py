"""`progress(done, total, message)`: how a long job reports how far it has got."""
from __future__ import annotations

import time

from rq import get_current_job

from . import _events


def progress(done: float, total: float | None = None, message: str | None = None) -> None:
    """Record the current job's progress in its record and publish it to followers.

    Outside a worker (a direct call, a test) there is no current job and this
    does nothing, so job functions stay plain functions.
    """
    job = get_current_job()
    if job is None:
        return
    report = {
        "done": done,
        "total": total,
        "percent": round(100.0 * done / total, 1) if total else None,
        "message": message,
        "at": time.time(),
    }
    job.meta["progress"] = report
    job.save_meta()
    _events.publish(job.connection, job.id, "progress", {"progress": report})
