"""The scheduler process: `python scheduler.py`.

Makes Redis hold the declared schedules (jobs/schedules.toml, or SCHEDULES_FILE),
then fires each schedule's ticks once, on time; see `service.schedules`. Any
number of these may run against one Redis.
"""
from __future__ import annotations

import logging
from datetime import datetime, timezone

from service import logs, redis_checks, schedules
from service.connection import connect
from service.queues import job_registry
from service.settings import Settings


def main() -> None:
    settings = Settings.from_env()
    logs.setup("scheduler", settings)
    connection = connect(settings)
    redis_checks.startup(connection, settings)  # waits for Redis; refuses an evicting one

    def sync() -> None:
        declared = schedules.load(settings.schedules_file or None)
        report = schedules.sync(
            connection, declared, registry=job_registry(), settings=settings, now=datetime.now(timezone.utc)
        )
        logging.info("declared schedules: %s", report)

    try:
        # Redis may go between the check above and the writes: wait, then write
        # again (the writes are upserts by name).
        redis_checks.keep_running(sync, connection)
    except schedules.InvalidSchedule as error:
        raise SystemExit(f"scheduler: declared schedules not loaded, nothing changed: {error.problem}") from None
    # The scheduler's loop ends on the first Redis error: run a fresh one once Redis is back.
    redis_checks.keep_running(lambda: schedules.make_scheduler(connection, settings).run(), connection)


if __name__ == "__main__":
    main()
