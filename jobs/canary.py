"""Canary jobs: check end to end that jobs are delivered and run.

`canary.run` sleeps, then returns. Given a `token`, each time a worker runs it
(once, or more often: delivery is at-least-once) it appends a start record and
then a finish record to two Redis lists, `rq:svc:canary:<token>:started` and
`...:finished` (kept a day), so that a check, or a test, can count runs by the
jobs' own records: which ran, how often, and which never finished.
"""
from __future__ import annotations

import json
import os
import time
from typing import Annotated

from pydantic import Field

#: How long the records of a token are kept, in seconds.
RECORD_TTL = 24 * 3600


def run(seconds: Annotated[float, Field(ge=0, le=86400)] = 0.0, token: str = "") -> float:
    """Sleep `seconds`; with a `token`, record this run's start and finish. Returns the seconds slept."""
    record = _recorder(token)
    record("started")
    started = time.monotonic()
    if seconds > 0:
        time.sleep(seconds)
    record("finished")
    return time.monotonic() - started


def _recorder(token: str):
    if not token:
        return lambda what: None
    from rq import get_current_job  # only when a worker runs it

    job = get_current_job()
    if job is None:
        return lambda what: None

    def record(what: str) -> None:
        key = f"rq:svc:canary:{token}:{what}"
        entry = json.dumps({"job_id": job.id, "pid": os.getpid(), "at": time.time()})
        with job.connection.pipeline(transaction=False) as pipe:
            pipe.rpush(key, entry)
            pipe.expire(key, RECORD_TTL)
            pipe.execute()

    return record
