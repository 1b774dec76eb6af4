"""Cron expressions read in an IANA time zone, with one rule for each DST change.

A cron expression names wall-clock times ("09:00 every day"); a scheduler needs
instants. Most wall-clock times are one instant, but a DST change makes some
times happen twice (the hour repeated when clocks go back) and others never (the
hour skipped when clocks go forward). The rules, as Vixie cron and cronie have
them:

- An expression that names its hours (`30 2 * * *`, `0 9-17 * * 1-5`) fires once
  per matching wall-clock time: a repeated time at its first occurrence, a
  skipped time as many minutes after the change as it lay after the start of
  the gap (02:30 in a 02:00→03:00 gap fires at 03:30), unless that instant
  fires anyway.
- An expression for every hour (`*/15 * * * *`, `* * * * * * *`) fires at every
  instant whose local time matches: twice in a repeated hour, never in a
  skipped one, so it keeps its real-time rhythm.

Instants are whole seconds since the epoch (`int`), the resolution of cron.
"""
from __future__ import annotations

import math
from bisect import bisect_left
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from crontab import CronTab

_SECOND = timedelta(seconds=1)
_MINUTE = timedelta(minutes=1)
_HOUR = timedelta(hours=1)
_DAY_DELTA = timedelta(days=1)
_DAY = 86400
#: crontab reads years up to 2099.
_LAST_YEAR = 2099
_EPOCH = datetime(1970, 1, 1)


class InvalidCron(ValueError):
    """The expression is not a cron expression crontab can read."""


class InvalidZone(ValueError):
    """The name is not an IANA time zone."""


def zone(name: str) -> ZoneInfo:
    """The IANA time zone called `name` (`Europe/Berlin`); InvalidZone if there is none."""
    if not isinstance(name, str) or not name or name != name.strip():
        raise InvalidZone(f"{name!r} is not an IANA time zone name")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise InvalidZone(f"{name!r} is not an IANA time zone (like UTC, Europe/Berlin, Asia/Tokyo)") from None


@lru_cache(maxsize=4096)
def cron(expression: str, timezone_name: str) -> "Cron":
    """A shared, immutable Cron for this expression and zone."""
    return Cron(expression, timezone_name)


class Cron:
    """`Cron("0 9 * * *", "Asia/Tokyo").next_after(moment)`: the next tick after a moment.

    Five fields (minute hour day month weekday), six (plus year) or seven
    (second first, year last), with crontab's extensions (`L`, names, ranges).
    """

    def __init__(self, expression: str, timezone_name: str = "UTC"):
        if not isinstance(expression, str) or not expression.strip():
            raise InvalidCron("a cron expression is required")
        self.expression = expression
        self.timezone = timezone_name
        self.zone = zone(timezone_name)
        try:
            self._tab = CronTab(expression)
        except ValueError as error:
            raise InvalidCron(f"{expression!r} is not a cron expression: {error}") from None
        fields = self._tab.matchers
        self._allowed = (
            _allowed(fields.hour, range(24)),
            _allowed(fields.minute, range(60)),
            _allowed(fields.second, range(60)),
        )
        self.every_hour = len(self._allowed[0]) == 24
        # An expression that never matches (30 February) is refused up front.
        if self._match_after(datetime(1970, 1, 1)) is None:
            raise InvalidCron(f"{expression!r} never matches a date before 2100")

    def __repr__(self) -> str:
        return f"Cron({self.expression!r}, {self.timezone!r})"

    # -- public surface, in datetimes -------------------------------------------------

    def next_after(self, moment: datetime) -> datetime | None:
        """The first tick strictly after `moment` (aware), in UTC; None after 2099."""
        tick = self.next_tick(math.floor(moment.timestamp()))
        return None if tick is None else datetime.fromtimestamp(tick, timezone.utc)

    def local(self, tick: int) -> datetime:
        """A tick as the wall-clock time of this schedule's zone."""
        return datetime.fromtimestamp(tick, self.zone)

    # -- ticks as epoch seconds -------------------------------------------------------

    def next_tick(self, after: int) -> int | None:
        """The first tick strictly after epoch second `after`."""
        if self.every_hour:
            return self._next_instant_matching(after + 1)
        return self._next_wall_time(after)

    def ticks(self, start: int, end: int, limit: int) -> list[int]:
        """Up to `limit` ticks in [start, end], oldest first."""
        found: list[int] = []
        tick = self.next_tick(start - 1)
        while tick is not None and tick <= end and len(found) < limit:
            found.append(tick)
            tick = self.next_tick(tick)
        return found

    def last_tick(self, end: int, start: int) -> int | None:
        """The latest tick in [start, end], or None; cheap however many ticks lie between."""
        span = 1
        while True:
            low = max(end - span, start - 1)
            first = self.next_tick(low)
            if first is not None and first <= end:
                break
            if low <= start - 1:
                return None
            span *= 2
        # next_tick(low) <= end < next_tick(end): find the last `low` with a tick left in (low, end].
        high = end
        while high - low > 1:
            middle = (low + high) // 2
            tick = self.next_tick(middle)
            if tick is not None and tick <= end:
                low = middle
            else:
                high = middle
        return self.next_tick(low)

    def previous_ticks(self, end: int, start: int, limit: int) -> list[int]:
        """Up to `limit` of the latest ticks in [start, end], oldest first."""
        found: list[int] = []
        while len(found) < limit:
            tick = self.last_tick(end, start)
            if tick is None:
                break
            found.append(tick)
            end = tick - 1
        return found[::-1]

    # -- the two rules ----------------------------------------------------------------

    def _next_instant_matching(self, start: int) -> int | None:
        """First instant >= start whose local wall-clock time matches (every-hour rule)."""
        while True:
            offset = self._offset(start)
            wall = self._match_at_or_after(self._wall(start))
            if wall is None:
                return None
            candidate = _seconds(wall) - offset
            change = self._next_change(start, candidate)
            if change is None:
                return candidate
            # No local time in [start, change) matches; go on in the next offset.
            start = change

    def _next_wall_time(self, after: int) -> int | None:
        """First first-occurrence instant of a matching wall time, after `after` (named-hours rule)."""
        here = datetime.fromtimestamp(after, self.zone)
        wall = here.replace(tzinfo=None)
        if here.fold:
            # In the repeated hour, second time round: every wall time up to the end
            # of the repetition fired at its first occurrence, before `after`.
            wall = self._wall(self._end_of_repetition(after)) - _SECOND
        candidates = []
        match = self._match_after(wall)
        if match is not None:
            candidates.append(self._first_occurrence(match))
            gap_end = self._gap_end(match)
            if gap_end is not None:
                # A time in a gap fires shifted; a later real time may fire earlier.
                after_gap = self._match_at_or_after(gap_end)
                if after_gap is not None:
                    candidates.append(self._first_occurrence(after_gap))
        shifted = self._gap_time_after(after)
        if shifted is not None:
            candidates.append(shifted)
        return min(candidates) if candidates else None

    def _gap_time_after(self, after: int) -> int | None:
        """A skipped wall time that fires after `after`, when clocks went forward just before it."""
        offset = self._offset(after)
        shift = offset - self._offset(after - _DAY)
        if shift <= 0 or self._offset(after - shift) == offset:
            return None  # no forward change in the last `shift` seconds
        change = self._change_between(after - shift, after)
        before = offset - shift
        match = self._match_after(_wall_at(after, before))
        if match is None or _seconds(match) >= change + offset:
            return None  # the first match after `after` is a real time; handled elsewhere
        return _seconds(match) - before

    # -- the zone ---------------------------------------------------------------------

    def _offset(self, instant: int) -> int:
        return int(datetime.fromtimestamp(instant, self.zone).utcoffset().total_seconds())

    def _wall(self, instant: int) -> datetime:
        return datetime.fromtimestamp(instant, self.zone).replace(tzinfo=None)

    def _first_occurrence(self, wall: datetime) -> int:
        """The instant of a wall time: its first occurrence if repeated, shifted forward if skipped."""
        return int(wall.replace(tzinfo=self.zone, fold=0).timestamp())

    def _gap_end(self, wall: datetime) -> datetime | None:
        """The first real wall time after a skipped `wall`; None when `wall` is real."""
        early = int(wall.replace(tzinfo=self.zone, fold=1).timestamp())
        late = self._first_occurrence(wall)
        if late <= early:
            return None
        change = self._change_between(early, late)
        return self._wall(change)

    def _end_of_repetition(self, instant: int) -> int:
        """The first instant after the repeated hour that `instant` is the second pass of."""
        wall = self._wall(instant)
        first = self._first_occurrence(wall)
        shift = instant - first
        return self._change_between(first, instant) + shift

    def _next_change(self, start: int, end: int) -> int | None:
        """The first instant in (start, end] whose offset differs from start's, if any."""
        offset = self._offset(start)
        low = start
        while low < end:
            high = min(low + _DAY, end)
            if self._offset(high) != offset:
                return self._change_between(low, high)
            low = high
        return None

    def _change_between(self, low: int, high: int) -> int:
        """The first instant in (low, high] with another offset than `low` (one change between)."""
        offset = self._offset(low)
        while high - low > 1:
            middle = (low + high) // 2
            if self._offset(middle) == offset:
                low = middle
            else:
                high = middle
        return high

    # -- crontab's fields, on naive wall-clock times -----------------------------------

    def _match_after(self, wall: datetime) -> datetime | None:
        """The first wall time strictly after `wall` that the expression matches.

        crontab's own `next()` walks second by second through each field; this
        jumps straight to the next allowed hour, minute and second, and asks
        crontab's matchers about days (which have `L`, `Z` and weekday rules).
        """
        fields = self._tab.matchers
        hours, minutes, seconds = self._allowed
        moment = wall.replace(microsecond=0) + _SECOND
        while moment.year <= _LAST_YEAR:
            if not (fields.year.any or moment.year in fields.year.allowed):
                moment = datetime(moment.year + 1, 1, 1)
            elif not (fields.month.any or moment.month in fields.month.allowed):
                moment = _next_month(moment)
            elif not (fields.day(moment.day, moment) and fields.weekday(moment.isoweekday() % 7, moment)):
                moment = _next_day(moment)
            else:
                hour = _first_at_least(hours, moment.hour)
                if hour is None:
                    moment = _next_day(moment)
                    continue
                if hour != moment.hour:
                    moment = moment.replace(hour=hour, minute=0, second=0)
                minute = _first_at_least(minutes, moment.minute)
                if minute is None:
                    moment = moment.replace(minute=0, second=0) + _HOUR
                    continue
                if minute != moment.minute:
                    moment = moment.replace(minute=minute, second=0)
                second = _first_at_least(seconds, moment.second)
                if second is None:
                    moment = moment.replace(second=0) + _MINUTE
                    continue
                return moment.replace(second=second)
        return None

    def _match_at_or_after(self, wall: datetime) -> datetime | None:
        return self._match_after(wall - _SECOND)


def _allowed(matcher, values: range) -> tuple[int, ...]:
    return tuple(values) if matcher.any else tuple(sorted(matcher.allowed))


def _first_at_least(allowed: tuple[int, ...], value: int) -> int | None:
    index = bisect_left(allowed, value)
    return allowed[index] if index < len(allowed) else None


def _next_day(moment: datetime) -> datetime:
    return datetime(moment.year, moment.month, moment.day) + _DAY_DELTA


def _next_month(moment: datetime) -> datetime:
    if moment.month == 12:
        return datetime(moment.year + 1, 1, 1)
    return datetime(moment.year, moment.month + 1, 1)


def _seconds(wall: datetime) -> int:
    """A naive wall time as seconds on a clock that starts at 1970-01-01 00:00."""
    return (wall - _EPOCH) // _SECOND


def _wall_at(instant: int, offset: int) -> datetime:
    return _EPOCH + timedelta(seconds=instant + offset)
