"""The worker process: `python worker.py`.

Runs an RQ worker over the queues in `RQ_QUEUES` (highest priority first), with
RQ's own scheduler for jobs enqueued with a delay or a time.
"""
from __future__ import annotations

from rq.serializers import JSONSerializer

from service.connection import connect
from service.queues import ServiceJob, ServiceQueue, job_registry
from service.settings import Settings
from service.workers import ServiceWorker


def build_worker(settings: Settings, **options) -> ServiceWorker:
    connection = connect(settings)
    queues = [ServiceQueue(name, connection=connection) for name in settings.queues]
    worker = ServiceWorker(
        queues,
        connection=connection,
        job_class=ServiceJob,
        queue_class=ServiceQueue,
        serializer=JSONSerializer,
        **options,
    )
    worker.scheduler_poll = settings.scheduler_interval
    return worker


def main() -> None:
    settings = Settings.from_env()
    job_registry()  # import every job module before forking, once
    build_worker(settings).work(with_scheduler=True)


if __name__ == "__main__":
    main()
