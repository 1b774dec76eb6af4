"""`python -m tests.crashing_worker`: the service's worker, crashing (SIGKILL) right after a dequeue.

Its executor takes a job off the queues exactly as `worker.py`'s does, then the
whole worker (supervisor and executor) dies before it can register the job as
started: the moment at which plain RQ loses the job.
"""
from __future__ import annotations

import logging
import os
import signal

from service import logs
from service.settings import Settings
from service.worker import ReliableWorker, build_worker


class CrashingRightAfterDequeue(ReliableWorker):
    def _load(self, taken):
        logs.event(logging.getLogger("tests"), "test.crashing", job_id=taken.job_id)
        os.kill(os.getppid(), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    settings = Settings.from_env()
    logs.setup("worker", settings)
    build_worker(settings, worker_class=CrashingRightAfterDequeue).work()


if __name__ == "__main__":
    main()
