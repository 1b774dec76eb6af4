"""A job's events as the web service receives them (Redis pub/sub).

Subscribe first, then read the job's state: an event published in between is
then never missed.
"""
from __future__ import annotations

import json
import time
from typing import Any, Iterator

from redis import Redis

from jobs import _events

#: Statuses after which a job changes no more (unless someone retries it).
TERMINAL = frozenset({"finished", "failed", "canceled", "stopped"})


def status_changed(connection: Redis, job, status: str | None = None) -> None:
    """Tell followers of `job` that its status is now `status` (default: as stored)."""
    status = status or job.get_status(refresh=False)
    _events.publish(connection, job.id, "status", {"status": str(getattr(status, "value", status))})


class Subscription:
    """The events of one job, from the moment this is created."""

    def __init__(self, connection: Redis, job_id: str):
        self._pubsub = connection.pubsub(ignore_subscribe_messages=True)
        self._pubsub.subscribe(_events.channel(job_id))

    def next(self, timeout: float) -> dict[str, Any] | None:
        """The next event, or None when `timeout` seconds pass without one."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            message = self._pubsub.get_message(timeout=remaining)
            if message and message["type"] == "message":
                return json.loads(message["data"])

    def events(self, idle_timeout: float) -> Iterator[dict[str, Any] | None]:
        """Events as they come; None after each `idle_timeout` seconds of quiet."""
        while True:
            yield self.next(idle_timeout)

    def close(self) -> None:
        self._pubsub.close()

    def __enter__(self) -> "Subscription":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
