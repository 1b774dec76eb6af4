"""Maintenance: the nightly clean-up (declared in jobs/schedules.toml).

Settings: `JOB_RETENTION_DAYS` (30), how long an ended job's record and a job's
artifacts are kept; `ARTIFACTS_DIR` as for every job.
"""
from __future__ import annotations

import os
import shutil
from collections import Counter
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any

from pydantic import Field
from redis import Redis
from rq import Queue, get_current_job
from rq.job import Job
from rq.registry import CanceledJobRegistry, FailedJobRegistry, FinishedJobRegistry, clean_registries
from rq.serializers import JSONSerializer
from rq.worker_registration import clean_worker_registry
from rq_scheduler import Scheduler

from jobs import _artifacts, defaults, progress

#: The service's newest-first index of jobs (service/job_index.py `KEY`; a test
#: checks the two agree, since jobs/ does not import the web service).
JOB_INDEX_KEY = "jobservice:jobs"
ENDED = frozenset({"finished", "failed", "stopped", "canceled"})
_BATCH = 200


def _now() -> datetime:
    """The clock the retention period is measured by (tests move it)."""
    return datetime.now(timezone.utc)


@defaults(queue="low", timeout=3600, retry={"max": 2, "backoff": [300]}, scope="admin")
def cleanup(
    retention_days: Annotated[float, Field(gt=0, le=3650)] | None = None,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Remove ended jobs and artifacts older than the retention period; clean RQ's registries.

    A job's record (finished, failed, stopped or canceled) goes once it ended
    more than `retention_days` ago (default `JOB_RETENTION_DAYS`, 30), whatever
    TTL it was given; an artifact folder once its newest file is that old.
    Cron-scheduled jobs are kept. RQ's registries are cleaned of expired entries
    and abandoned jobs. `dry_run` reports what would go and removes nothing.
    """
    days = retention_days if retention_days is not None else float(os.environ.get("JOB_RETENTION_DAYS") or 30)
    cutoff = _now() - timedelta(days=days)
    connection = _connection()
    queues = Queue.all(connection=connection, serializer=JSONSerializer)
    if not dry_run:
        # First, so expired registry entries are not counted as jobs below.
        for queue in queues:
            clean_registries(queue)
            CanceledJobRegistry(queue.name, connection=connection, serializer=JSONSerializer).cleanup()
            clean_worker_registry(queue)
    progress(1, 3, "cleaned RQ's registries")
    removed, index_entries = _remove_old_jobs(connection, queues, cutoff, dry_run)
    progress(2, 3, f"removed {sum(removed.values())} job record(s)")
    folders, files, freed = _remove_old_artifacts(cutoff, dry_run)
    progress(3, 3, f"removed {folders} artifact folder(s)")
    return {
        "cutoff": cutoff.isoformat().replace("+00:00", "Z"),
        "retention_days": days,
        "dry_run": dry_run,
        "jobs_removed": sum(removed.values()),
        "jobs_removed_by_status": dict(sorted(removed.items())),
        "index_entries_removed": index_entries,
        "artifact_folders_removed": folders,
        "artifact_files_removed": files,
        "artifact_bytes_freed": freed,
        "registries_cleaned": sorted(queue.name for queue in queues) if not dry_run else [],
    }


def _connection() -> Redis:
    job = get_current_job()
    if job is not None:
        return job.connection
    return Redis.from_url(os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0")


def _remove_old_jobs(
    connection: Redis, queues: list[Queue], cutoff: datetime, dry_run: bool
) -> tuple[Counter, int]:
    candidates: set[str] = set()
    for queue in queues:
        for registry_class in (FinishedJobRegistry, FailedJobRegistry, CanceledJobRegistry):
            registry = registry_class(queue.name, connection=connection, serializer=JSONSerializer)
            candidates.update(registry.get_job_ids())
    # The index is scored by creation time: nothing created after the cutoff can have ended before it.
    candidates.update(m.decode() for m in connection.zrangebyscore(JOB_INDEX_KEY, "-inf", cutoff.timestamp()))
    # A schedule keeps a template job record in the scheduled set; it must stay.
    keep = {m.decode() for m in connection.zrange(Scheduler.scheduled_jobs_key, 0, -1)}
    current = get_current_job()
    if current is not None:
        keep.add(current.id)
    removed: Counter = Counter()
    gone: list[str] = []
    ids = sorted(candidates - keep)
    for start in range(0, len(ids), _BATCH):
        batch = ids[start : start + _BATCH]
        jobs = Job.fetch_many(batch, connection=connection, serializer=JSONSerializer)
        for job_id, job in zip(batch, jobs):
            if job is None:
                gone.append(job_id)
                continue
            status = job.get_status(refresh=False)
            status = str(getattr(status, "value", status))
            if status not in ENDED or _ended(job) >= cutoff:
                continue
            removed[status] += 1
            gone.append(job_id)
            if not dry_run:
                job.delete(remove_from_queue=True, delete_dependents=False)
    index_entries = 0
    if gone:
        if dry_run:
            index_entries = sum(1 for job_id in gone if connection.zscore(JOB_INDEX_KEY, job_id) is not None)
        else:
            index_entries = sum(connection.zrem(JOB_INDEX_KEY, *gone[i : i + _BATCH]) for i in range(0, len(gone), _BATCH))
    return removed, index_entries


def _ended(job: Job) -> datetime:
    moment = job.ended_at or job.enqueued_at or job.created_at
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _remove_old_artifacts(cutoff: datetime, dry_run: bool) -> tuple[int, int, int]:
    root = _artifacts.root()
    if not root.is_dir():
        return 0, 0, 0
    folders = files = freed = 0
    limit = cutoff.timestamp()
    for folder in root.iterdir():
        if not folder.is_dir() or folder.is_symlink():
            continue
        contents = [entry for entry in folder.rglob("*") if entry.is_file() and not entry.is_symlink()]
        newest = max((entry.stat().st_mtime for entry in contents), default=folder.stat().st_mtime)
        if newest >= limit:
            continue
        folders += 1
        files += len(contents)
        freed += sum(entry.stat().st_size for entry in contents)
        if not dry_run:
            shutil.rmtree(folder, ignore_errors=True)
    return folders, files, freed
