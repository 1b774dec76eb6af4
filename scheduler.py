"""The scheduler process: `python scheduler.py`.

Registers the declared schedules (jobs/schedules.toml, or SCHEDULES_FILE), then
runs rq-scheduler, which moves due jobs onto their queues.
"""
from __future__ import annotations

import logging

from service import logs, redis_checks, schedules
from service.connection import connect
from service.queues import job_registry
from service.settings import Settings


def main() -> None:
    settings = Settings.from_env()
    logs.setup("scheduler", settings)
    connection = connect(settings)
    redis_checks.startup(connection, settings)  # waits for Redis; refuses an evicting one
    scheduler = schedules.make_scheduler(connection, settings)
    declared = schedules.load(settings.schedules_file or None)
    schedules.register(scheduler, declared, registry=job_registry(), settings=settings)
    logging.info("registered %d declared schedule(s): %s", len(declared), ", ".join(s.name for s in declared))
    # rq-scheduler's loop ends on the first Redis error: run a fresh one once Redis is back.
    redis_checks.keep_running(lambda: schedules.make_scheduler(connection, settings).run(), connection)


if __name__ == "__main__":
    main()
