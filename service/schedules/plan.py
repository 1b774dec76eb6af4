"""Which ticks of a due schedule to run now, and when it is next due.

A tick is on time while it is at most `grace` seconds old: the scheduler may be
a little behind (a burst of due jobs, a restart), and on-time ticks always run,
each once. A tick older than that was missed (no scheduler ran), and the
schedule's policy says what happens to the missed ones:

- `skip`: they do not run;
- `once`: one run stands for all of them (the latest), unless an on-time tick runs anyway;
- `all`:  each runs, up to `limit` of the latest.
"""
from __future__ import annotations

from dataclasses import dataclass

from .cron import Cron

#: Seconds a tick may be late and still count as on time.
GRACE = 60
#: Most runs one schedule gets from a single look (policy `all`, or a long stall);
#: on-time ticks beyond it run in the next look.
CATCH_UP_LIMIT = 100


@dataclass(frozen=True)
class Plan:
    #: Ticks to run now, oldest first (epoch seconds).
    run: list[int]
    #: The next tick after now, or None when the expression has no more.
    next: int | None
    #: Missed ticks that do not run.
    dropped: int


def plan(cron: Cron, due: int, now: int, missed: str, *, grace: int = GRACE, limit: int = CATCH_UP_LIMIT) -> Plan:
    """What to do with a schedule whose tick `due` (<= now) has come."""
    on_time_from = max(due, now - grace)
    on_time = cron.ticks(on_time_from, now, limit)
    late: list[int] = []
    if due < on_time_from:
        if missed == "all":
            late = cron.previous_ticks(on_time_from - 1, due, max(0, limit - len(on_time)))
        elif missed == "once" and not on_time:
            last = cron.last_tick(on_time_from - 1, due)
            late = [last] if last is not None else []
    run = late + on_time
    dropped = max(0, _count_missed(cron, due, on_time_from - 1) - len(late))
    # More on-time ticks than one look runs (per-second ticks, a long grace): the
    # rest are due at once and run in the next look, not dropped.
    after = on_time[-1] if len(on_time) == limit else now
    return Plan(run=run, next=cron.next_tick(after), dropped=dropped)


def _count_missed(cron: Cron, start: int, end: int) -> int:
    """How many ticks lie in [start, end], counted up to a bound (for the log)."""
    if end < start:
        return 0
    return len(cron.ticks(start, end, 10 * CATCH_UP_LIMIT))
