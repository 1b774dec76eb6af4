"""Cron schedules: declared in a file or created over HTTP, fired once per tick.

- `definition`: a schedule, the TOML file that declares schedules, validation;
- `cron`: cron expressions in an IANA time zone, with the DST rules;
- `plan`: which ticks of a due schedule run (missed-run policies);
- `store`: schedules in Redis (rq-scheduler's layout plus a state record);
- `sync`: the declared schedules made current at start;
- `engine`: `ServiceScheduler`, rq-scheduler with atomic, prompt, zoned ticks.
"""
from .cron import Cron, InvalidCron, InvalidZone
from .definition import DEFAULT_FILE, MISSED_POLICIES, InvalidSchedule, Schedule, ValidSchedule, load, tick_id, validate
from .engine import ServiceScheduler, make_scheduler
from .sync import SyncReport, sync

__all__ = [
    "DEFAULT_FILE",
    "MISSED_POLICIES",
    "Cron",
    "InvalidCron",
    "InvalidSchedule",
    "InvalidZone",
    "Schedule",
    "ServiceScheduler",
    "SyncReport",
    "ValidSchedule",
    "load",
    "make_scheduler",
    "sync",
    "tick_id",
    "validate",
]
