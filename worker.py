"""The worker process: `python worker.py`.

Runs the service's worker (`service.worker`) over the queues in `RQ_QUEUES`,
highest priority first, with RQ's scheduler for retries and delayed jobs. It
survives Redis outages, stops gracefully on SIGTERM, and runs jobs in an
executor that it replaces after WORKER_MAX_JOBS jobs or WORKER_MAX_MEMORY_MB.
"""
from __future__ import annotations

from service import logs
from service.queues import job_registry
from service.settings import Settings
from service.worker import ReliableWorker
from service.worker import build_worker as _build_worker
from service.worker import run


def build_worker(settings: Settings, **options) -> ReliableWorker:
    return _build_worker(settings, **options)


def main() -> None:
    settings = Settings.from_env()
    logs.setup("worker", settings)
    job_registry()  # import every job module before forking, once
    run(settings)


if __name__ == "__main__":
    main()
