"""The scheduler process: `python scheduler.py`.

Makes Redis hold the declared schedules (jobs/schedules.toml, or SCHEDULES_FILE),
then fires each schedule's ticks once, on time; see `service.schedules`. Any
number of these may run against one Redis.
"""
from __future__ import annotations

import logging
from datetime import datetime, timezone

from service import schedules
from service.connection import connect
from service.queues import job_registry
from service.settings import Settings


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s scheduler %(levelname)s %(message)s")
    settings = Settings.from_env()
    connection = connect(settings)
    try:
        declared = schedules.load(settings.schedules_file or None)
        report = schedules.sync(
            connection, declared, registry=job_registry(), settings=settings, now=datetime.now(timezone.utc)
        )
    except schedules.InvalidSchedule as error:
        raise SystemExit(f"scheduler: declared schedules not loaded, nothing changed: {error.problem}") from None
    logging.info("declared schedules: %s", report)
    schedules.make_scheduler(connection, settings).run()


if __name__ == "__main__":
    main()
