"""`python -m tests.misbehaving_worker`: the service's worker, also running `tests.misbehaving_jobs`."""
from __future__ import annotations

from service import logs
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


def main() -> None:
    settings = Settings.from_env()
    logs.setup("worker", settings)
    job_registry()
    build_worker(settings, job_class=MisbehavingJob).work()


if __name__ == "__main__":
    main()
