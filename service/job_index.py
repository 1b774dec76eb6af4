"""An index of every job by creation time, newest first, for listing with a cursor.

RQ keeps jobs in per-queue lists and per-status registries; listing across them
newest first would mean reading them all. This sorted set is written in the same
transaction as the job, and entries whose record has expired are dropped as a
listing passes over them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

from redis import Redis

from .queues import ServiceJob

KEY = "jobservice:jobs"
_BATCH = 100


def add(pipe_or_connection, job: ServiceJob) -> None:
    pipe_or_connection.zadd(KEY, {job.id: job.created_at.timestamp()})


@dataclass(frozen=True)
class Cursor:
    """Where the next page starts: after the entry with this score and id."""

    score: float
    job_id: str

    def __str__(self) -> str:
        return f"{self.score!r}:{self.job_id}"

    @classmethod
    def parse(cls, text: str) -> "Cursor":
        score, sep, job_id = text.partition(":")
        if not sep or not job_id:
            raise ValueError("not a cursor from this API")
        return cls(float(score), job_id)


def page(
    connection: Redis,
    keep: Callable[[ServiceJob], bool],
    limit: int,
    after: Cursor | None = None,
    scan_limit: int = 2000,
) -> tuple[list[ServiceJob], Cursor | None]:
    """Up to `limit` jobs that `keep` accepts, newest first, starting after `after`.

    Reads at most `scan_limit` index entries, so a selective filter over a long
    history returns a short page and a cursor rather than taking long.
    """
    found: list[ServiceJob] = []
    last: Cursor | None = after
    scanned = 0
    for job_id, score, job in _walk(connection, after):
        scanned += 1
        last = Cursor(score, job_id)
        if job is not None and keep(job):
            found.append(job)
            if len(found) == limit:
                break
        if scanned >= scan_limit:
            break
    else:
        return found, None  # the index is exhausted
    return found, last


def _walk(connection: Redis, after: Cursor | None) -> Iterator[tuple[str, float, ServiceJob | None]]:
    high: str = "+inf" if after is None else repr(after.score)
    skip_until = after
    while True:
        rows = connection.zrevrangebyscore(KEY, high, "-inf", start=0, num=_BATCH, withscores=True)
        if not rows:
            return
        entries = []
        for member, score in rows:
            job_id = member.decode()
            # Entries with the cursor's score come in reverse id order; skip those
            # at or before the cursor.
            if skip_until is not None and score == skip_until.score and job_id >= skip_until.job_id:
                continue
            entries.append((job_id, score))
        jobs = ServiceJob.fetch_many([job_id for job_id, _ in entries], connection=connection) if entries else []
        expired = [job_id for (job_id, _), job in zip(entries, jobs) if job is None]
        if expired:
            connection.zrem(KEY, *expired)
        for (job_id, score), job in zip(entries, jobs):
            yield job_id, score, job
        last_id, last_score = rows[-1][0].decode(), rows[-1][1]
        if len(rows) < _BATCH:
            return
        high = repr(last_score)
        skip_until = Cursor(last_score, last_id)
