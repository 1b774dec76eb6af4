"""`python -m tests.misbehaving_worker`: the service's worker, also running `tests.misbehaving_jobs`.

`EXECUTOR_SLOW_START=<seconds>` makes each executor take that long to start,
as a heavy import in a job module would. `SIGTERM_WHILE_STARTING=1` runs RQ's
scheduler too, and sends the worker SIGTERM the moment it has started it.
"""
from __future__ import annotations

import os
import signal
import time

from service import executor, logs
from service.queues import ServiceJob, job_registry
from service.settings import Settings
from service.worker import build_worker
from tests import misbehaving_jobs

PREFIX = "tests.misbehaving_jobs."


class MisbehavingJob(ServiceJob):
    @property
    def func(self):
        if self.func_name.startswith(PREFIX):
            return getattr(misbehaving_jobs, self.func_name[len(PREFIX):])
        return super().func


def _slow_start(seconds: float) -> None:
    run = executor.run

    def slow_run(*args, **kwargs):
        time.sleep(seconds)
        return run(*args, **kwargs)

    executor.run = slow_run


def _stopped_while_starting(worker) -> None:
    start = worker._start_scheduler

    def start_then_stop(*args, **kwargs):
        start(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)

    worker._start_scheduler = start_then_stop


def main() -> None:
    if os.environ.get("EXECUTOR_SLOW_START"):
        _slow_start(float(os.environ["EXECUTOR_SLOW_START"]))
    settings = Settings.from_env()
    logs.setup("worker", settings)
    job_registry()
    worker = build_worker(settings, job_class=MisbehavingJob)
    stop_while_starting = bool(os.environ.get("SIGTERM_WHILE_STARTING"))
    if stop_while_starting:
        _stopped_while_starting(worker)
    worker.work(with_scheduler=stop_while_starting)


if __name__ == "__main__":
    main()
