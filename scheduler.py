"""The scheduler process: `python scheduler.py`.

Registers the declared schedules (jobs/schedules.toml, or SCHEDULES_FILE), then
runs rq-scheduler, which moves due jobs onto their queues.
"""
from __future__ import annotations

import logging

from service import schedules
from service.connection import connect
from service.queues import job_registry
from service.settings import Settings


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s scheduler %(levelname)s %(message)s")
    settings = Settings.from_env()
    connection = connect(settings)
    scheduler = schedules.make_scheduler(connection, settings)
    declared = schedules.load(settings.schedules_file or None)
    schedules.register(scheduler, declared, registry=job_registry(), settings=settings)
    logging.info("registered %d declared schedule(s): %s", len(declared), ", ".join(s.name for s in declared))
    scheduler.run()


if __name__ == "__main__":
    main()
