"""rq-scheduler, made exact: each tick enqueued once, on time, in its own zone.

`ServiceScheduler` keeps rq-scheduler's data (its sorted set of due times, its
job records, its birth and death records, its lock) and replaces the parts that
go wrong:

- **Exactly once.** A tick is fired by one Lua script that checks the schedule
  is still due at the tick the scheduler read (and still at the revision it
  read), writes the tick's job, pushes it onto its queue and moves the schedule
  to its next tick. Redis runs a script whole or not at all, so two schedulers
  racing for a tick, or a scheduler killed mid-pass (SIGKILL included), can
  neither enqueue a tick twice nor lose one: the loser's script sees the moved
  score and does nothing, and a script that never ran leaves the tick due for
  the next look. Each tick's job id is `schedule-<name>-<tick in UTC>`, and the
  script never overwrites an existing job, so a tick is one job whatever happens.
- **On time.** After each look it sleeps until the next due time (at most
  `interval` seconds, so run-time changes are seen), not a fixed 60 s.
- **Zones.** Next ticks come from `service.schedules.cron` (zoneinfo, DST rules),
  never from the process's local time.
- **Missed runs.** Ticks that passed while no scheduler ran follow the
  schedule's policy (`service.schedules.plan`).

The lock is now only an economy (one scheduler does a pass while the others
wait); it is leased for a few seconds and renewed as a pass goes, so a killed
scheduler holds up the others for at most the lease.
"""
from __future__ import annotations

import json
import logging
import math
import os
import socket
import time
import uuid
from datetime import datetime, timezone
from typing import Any, Callable

from redis import Redis
from rq.job import JobStatus
from rq.rate_limit import RateLimitRegistry
from rq.scripts import acquire_or_refresh_lock, release_lock
from rq_scheduler import Scheduler

from .. import job_index
from ..queues import ServiceJob, ServiceQueue
from ..settings import Settings
from . import store
from .cron import cron
from .definition import name_of, tick_id
from .plan import CATCH_UP_LIMIT, GRACE, plan

log = logging.getLogger("service.schedules")

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


# Claim a due entry of the scheduled set and enqueue its jobs, in one step.
_FIRE = """
-- KEYS: 1 scheduled set, 2 schedule state, 3 queue, 4 set of queues, 5 job index, 6.. job records
-- ARGV: 1 member, 2 score it must still have, 3 revision it must still have ('' = any),
--       4 next score ('' = leave the set), 5 'L' or 'R' (queue end), or 'W': KEYS[3] is the
--       job's concurrency limit's waiting set (rq.rate_limit), 6 job ttl (<= 0: none),
--       7 'new' (write only absent records) or 'move' (rewrite the record),
--       8 number of jobs, then per job: id, index score, field count, fields...,
--       then the number of state values, then the state values (field, value, ...)
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if (not score) or tonumber(score) ~= tonumber(ARGV[2]) then return -1 end
if ARGV[3] ~= '' and redis.call('HGET', KEYS[2], 'revision') ~= ARGV[3] then return -2 end
local written = 0
local at = 9
local ttl = tonumber(ARGV[6])
for n = 1, tonumber(ARGV[8]) do
  local id, indexed, count = ARGV[at], ARGV[at + 1], tonumber(ARGV[at + 2])
  local key = KEYS[5 + n]
  if ARGV[7] == 'move' or redis.call('EXISTS', key) == 0 then
    if ARGV[7] == 'move' then redis.call('DEL', key) end
    redis.call('HSET', key, unpack(ARGV, at + 3, at + 2 + count))
    if ttl > 0 then redis.call('EXPIRE', key, ttl) end
    if ARGV[5] == 'W' then redis.call('ZADD', KEYS[3], indexed, id)
    elseif ARGV[5] == 'L' then redis.call('LPUSH', KEYS[3], id) else redis.call('RPUSH', KEYS[3], id) end
    redis.call('ZADD', KEYS[5], indexed, id)
    written = written + 1
  end
  at = at + 3 + count
end
if written > 0 and ARGV[5] ~= 'W' then redis.call('SADD', KEYS[4], KEYS[3]) end
if ARGV[4] == '' then
  redis.call('ZREM', KEYS[1], ARGV[1])
else
  redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1])
end
local values = tonumber(ARGV[at])
if values > 0 then redis.call('HSET', KEYS[2], unpack(ARGV, at + 1, at + values)) end
return written
"""

# Results of _FIRE besides the number of jobs written.
_LOST = -1  # another scheduler fired it, or it was changed, paused or deleted
_STALE = -2  # the schedule changed since it was read


class ServiceScheduler(Scheduler):
    """rq-scheduler with atomic ticks, time zones, missed-run policies and prompt wake-ups."""

    #: Entries of the scheduled set read and fired per round trip.
    batch_size = 500

    def __init__(
        self,
        connection: Redis,
        *,
        interval: float = 1.0,
        clock: Clock = utc_now,
        grace: int = GRACE,
        catch_up_limit: int = CATCH_UP_LIMIT,
        lock_lease: int | None = None,
        name: str | None = None,
    ):
        name = name or f"{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        super().__init__(
            connection=connection, interval=interval, job_class=ServiceJob, queue_class=ServiceQueue, name=name
        )
        self.clock = clock
        self.grace = max(grace, math.ceil(2 * interval))
        self.catch_up_limit = catch_up_limit
        #: Seconds the lock outlives a scheduler that dies holding it.
        self.lock_lease = lock_lease or max(2, math.ceil(2 * interval))
        self._fire_script = connection.register_script(_FIRE)

    # -- one look at the scheduled set ------------------------------------------------

    def enqueue_jobs(self) -> int:
        """Fire everything due now; returns the number of jobs enqueued."""
        enqueued = 0
        for _ in range(100_000):  # bounded: each round moves or drops what it read
            now = self.clock()
            rows = self.connection.zrangebyscore(
                self.scheduled_jobs_key, "-inf", math.floor(now.timestamp()), start=0, num=self.batch_size, withscores=True
            )
            if not rows:
                break
            if self._lock_acquired:
                self._renew_lock()
            enqueued += self._fire_due([(member.decode(), int(score)) for member, score in rows], now)
        return enqueued

    def _fire_due(self, due: list[tuple[str, int]], now: datetime) -> int:
        return self._fire(due, self._read(due), now)

    def _read(self, due: list[tuple[str, int]]) -> list[tuple[dict[str, str] | None, dict]]:
        """Each due entry's state and job record, as of one moment."""
        with self.connection.pipeline(transaction=True) as pipe:
            for member, _ in due:
                name = name_of(member)
                if name is not None:
                    pipe.hgetall(store.state_key(name))
                pipe.hgetall(self.job_class.redis_job_namespace_prefix + member)
            replies = iter(pipe.execute())
        return [
            (store.decode(next(replies)) if name_of(member) is not None else None, next(replies))
            for member, _ in due
        ]

    def _fire(self, due: list[tuple[str, int]], records, now: datetime) -> int:
        """Fire what was read; an entry changed since is left alone (its script finds it moved)."""
        #: The fire scripts' places among the pipeline's replies.
        self._fired: set[int] = set()
        with self.connection.pipeline(transaction=False) as pipe:
            for (member, score), (state, record) in zip(due, records):
                name = name_of(member)
                try:
                    if name is None:
                        self._queue_one_off(pipe, member, score, record, now)
                    elif not state or not record:
                        self._drop(pipe, member, score)
                    else:
                        self._queue_ticks(pipe, name, member, score, state, record, now)
                except Exception as error:  # one broken schedule must not stop the others
                    log.exception("schedule entry %s cannot fire", member)
                    self._park(pipe, member, score, name, f"{type(error).__name__}: {error}")
            results = pipe.execute(raise_on_error=False)
        enqueued = 0
        for index, result in enumerate(results):
            if isinstance(result, Exception):
                log.error("firing a schedule failed: %s", result)
            elif index in self._fired and result > 0:
                enqueued += result
        return enqueued

    def _queue_ticks(self, pipe, name: str, member: str, due: int, state: dict[str, str], record, now: datetime) -> None:
        definition = json.loads(state["definition"])
        timing = cron(definition["cron"], definition["timezone"])
        decision = plan(
            timing, due, math.floor(now.timestamp()), definition.get("missed", "once"),
            grace=self.grace, limit=self.catch_up_limit,
        )
        if decision.dropped:
            log.warning("schedule %s: %d missed tick(s) not run (policy %s)", name, decision.dropped, definition.get("missed"))
        jobs = [
            store.job_from_template(record, tick_id(name, tick), self.connection, now=now, meta=_tick_meta(name, tick))
            for tick in decision.run
        ]
        values: dict[str, Any] = {}
        if jobs:
            values = {
                "last_tick": decision.run[-1],
                "last_job_id": jobs[-1].id,
                "last_run_at": repr(now.timestamp()),
            }
        self._call(pipe, member, due, state.get("revision", ""), decision.next, jobs, "new", values, name)
        for tick, job in zip(decision.run, jobs):
            log.info("schedule %s: tick %s -> job %s on %s", name, _iso(tick), job.id, job.origin)

    def _queue_one_off(self, pipe, member: str, due: int, record, now: datetime) -> None:
        """An rq-scheduler job enqueued at a time (enqueue_at/enqueue_in): moved to its queue once."""
        if not record:
            self._drop(pipe, member, due)
            return
        job = self.job_class(member, connection=self.connection)
        job.restore(record)
        job.enqueued_at = now
        job._status = JobStatus.QUEUED
        if job.meta.get("interval") or job.meta.get("cron_string"):
            log.warning("job %s repeats in rq-scheduler's own way; it runs once: declare a schedule instead", member)
        self._call(pipe, member, due, "", None, [job], "move", {}, None)

    def _drop(self, pipe, member: str, due: int) -> None:
        """An entry whose records are gone (a deleted schedule, a foreign job that expired)."""
        self._call(pipe, member, due, "", None, [], "new", {}, None)

    def _park(self, pipe, member: str, due: int, name: str | None, error: str) -> None:
        """Take a schedule that cannot fire out of the set, paused, with the error to show."""
        values = {"paused": "1", "error": error} if name else {}
        self._call(pipe, member, due, "", None, [], "new", values, name)

    def _call(self, pipe, member, due, revision, next_tick, jobs, mode, values, name) -> None:
        queue = ServiceQueue.redis_queue_namespace_prefix + (jobs[0].origin if jobs else "default")
        limit = RateLimitRegistry.from_job(jobs[0]) if jobs and jobs[0].has_rate_limit else None
        if limit is not None:
            # A job with a concurrency limit waits for a slot as RQ's own enqueue
            # has it wait: written `rate_limited`, then promoted by RQ's script
            # (sent with this one) if a slot is free, else when one is released.
            limit.register(jobs[0].rate_limit_concurrency, pipe)
            pipe.sadd(ServiceQueue.redis_queues_keys, queue)
            for job in jobs:
                job._status = JobStatus.RATE_LIMITED
        args: list[Any] = [
            member, due, revision, "" if next_tick is None else next_tick,
            "W" if limit else "L" if jobs and jobs[0].enqueue_at_front else "R",
            (jobs[0].ttl or 0) if jobs else 0,
            mode, len(jobs),
        ]
        for job in jobs:
            fields = store.flat(job.to_dict())
            args += [job.id, repr(job.created_at.timestamp()), len(fields), *fields]
        flat = [item for pair in values.items() for item in pair]
        args += [len(flat), *flat]
        keys = [
            self.scheduled_jobs_key,
            store.state_key(name) if name else store.STATE_PREFIX,
            limit.rate_limited_key if limit else queue,
            ServiceQueue.redis_queues_keys,
            job_index.KEY,
            *(job.key for job in jobs),
        ]
        self._fired.add(len(pipe))
        self._fire_script(keys=keys, args=args, client=pipe)
        if limit is not None:
            limit.acquire_and_enqueue(jobs[0].rate_limit_concurrency, pipeline=pipe)

    # -- the lock: an economy, never what keeps a tick single -----------------------

    def acquire_lock(self) -> bool:
        outcome = acquire_or_refresh_lock(self.connection, self.scheduler_lock_key, self.name, self.lock_lease)
        self._lock_acquired = outcome in ("acquired", "refreshed")
        return self._lock_acquired

    def _renew_lock(self) -> None:
        acquire_or_refresh_lock(self.connection, self.scheduler_lock_key, self.name, self.lock_lease)

    def remove_lock(self) -> None:
        if self._lock_acquired:
            release_lock(self.connection, self.scheduler_lock_key, self.name)
            self._lock_acquired = False

    # -- the loop ---------------------------------------------------------------------

    def seconds_until_due(self) -> float:
        """Seconds until the earliest entry is due, at most `interval`; 0 if one is due."""
        head = self.connection.zrange(self.scheduled_jobs_key, 0, 0, withscores=True)
        if not head:
            return self._interval
        wait = head[0][1] - self.clock().timestamp()
        return min(self._interval, max(0.0, wait))

    def run(self, burst: bool = False) -> None:
        """Look for due ticks until stopped: whenever one is due, and every `interval` seconds."""
        self.register_birth()
        self._install_signal_handlers()
        log.info("scheduler %s started (interval %ss, lock lease %ss)", self.name, self._interval, self.lock_lease)
        try:
            while True:
                self.heartbeat()
                if self.acquire_lock():
                    try:
                        enqueued = self.enqueue_jobs()
                    finally:
                        self.remove_lock()
                    if burst:
                        break
                    wait = self.seconds_until_due()
                    if wait == 0 and not enqueued:
                        wait = min(self._interval, 0.1)  # something due will not fire: do not spin
                else:
                    # Another scheduler is in a pass; look again soon in case it dies.
                    wait = min(self._interval, 0.1)
                if wait > 0:
                    time.sleep(wait)
        finally:
            self.remove_lock()
            self.register_death()


def _tick_meta(name: str, tick: int) -> dict[str, Any]:
    return {"schedule": name, "tick": _iso(tick)}


def _iso(tick: int) -> str:
    return datetime.fromtimestamp(tick, timezone.utc).isoformat().replace("+00:00", "Z")


def make_scheduler(connection: Redis, settings: Settings, *, clock: Clock = utc_now) -> ServiceScheduler:
    """The scheduler of `scheduler.py`: JSON jobs of the allow-list, looking every SCHEDULER_INTERVAL s at most."""
    return ServiceScheduler(connection, interval=settings.scheduler_interval, clock=clock)
