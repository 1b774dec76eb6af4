"""`python -m tests.misbehaving_worker`: the service's worker, also running `tests.misbehaving_jobs`.

`EXECUTOR_SLOW_START=<seconds>` makes each executor take that long to start,
as a heavy import in a job module would.
"""
from __future__ import annotations

import os
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


def main() -> None:
    if os.environ.get("EXECUTOR_SLOW_START"):
        _slow_start(float(os.environ["EXECUTOR_SLOW_START"]))
    settings = Settings.from_env()
    logs.setup("worker", settings)
    job_registry()
    build_worker(settings, job_class=MisbehavingJob).work()


if __name__ == "__main__":
    main()
