"""Where a job's events are published: one Redis pub/sub channel a job.

The worker publishes status changes and `progress()` publishes progress reports;
the web service relays them to clients (Server-Sent Events, long polls).
"""
from __future__ import annotations

import json
from typing import Any

CHANNEL_PREFIX = "jobservice:events:"


def channel(job_id: str) -> str:
    return CHANNEL_PREFIX + job_id


def publish(connection: Any, job_id: str, event: str, data: dict[str, Any], pipeline: Any = None) -> None:
    """Publish `{"event": event, **data}` on the job's channel (through `pipeline` if given)."""
    (pipeline or connection).publish(channel(job_id), json.dumps({"event": event, **data}))
