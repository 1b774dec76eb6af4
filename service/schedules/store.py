"""Schedules in Redis, in rq-scheduler's own layout plus a state record each.

- `rq:scheduler:scheduled_jobs` (rq-scheduler's sorted set): `schedule-<name>`
  scored by the epoch second of its next tick; a paused schedule is not in it.
- `rq:job:schedule-<name>`: the job every tick copies, an RQ job record with
  status `scheduled`, written from `service.enqueue.prepare` (so its options are
  the ones a POST /jobs would get).
- `jobservice:schedule:<name>`: the definition (JSON), where it came from
  (`declared` or `api`), paused or not, a revision bumped by every change, and
  the last run. `jobservice:schedules` holds the names.

Every change is one Redis transaction; the scheduler fires a tick only if the
revision it read is still the current one, so a tick never mixes two versions.
"""
from __future__ import annotations

import json
import math
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from redis import Redis
from rq.job import JobStatus
from rq_scheduler import Scheduler

from .. import job_index
from ..queues import ServiceJob, ServiceQueue, write_new_job
from .cron import Cron, cron
from .definition import ValidSchedule, canonical, name_of, template_id

SCHEDULED = Scheduler.scheduled_jobs_key
NAMES = "jobservice:schedules"
STATE_PREFIX = "jobservice:schedule:"

DECLARED = "declared"
API = "api"


def state_key(name: str) -> str:
    return STATE_PREFIX + name


def template_key(name: str) -> str:
    return ServiceJob.redis_job_namespace_prefix + template_id(name)


def template_of(connection: Redis, job_id: str) -> str | None:
    """The name of the schedule whose template job `job_id` is; None for any other job."""
    name = name_of(job_id)
    return name if name and connection.exists(state_key(name)) else None


@dataclass(frozen=True)
class StoredSchedule:
    """A schedule as Redis holds it."""

    name: str
    definition: dict[str, Any]
    source: str
    paused: bool
    revision: int
    #: Epoch second of the next tick; None when paused or the expression has ended.
    next_tick: int | None
    last_tick: int | None
    last_job_id: str | None
    last_run_at: float | None
    error: str | None

    @property
    def cron(self) -> Cron:
        return cron(self.definition["cron"], self.definition["timezone"])

    def next_ticks(self, count: int) -> list[int]:
        ticks: list[int] = []
        tick = self.next_tick
        while tick is not None and len(ticks) < count:
            ticks.append(tick)
            tick = self.cron.next_tick(tick)
        return ticks


def decode(raw: dict[bytes, bytes]) -> dict[str, str]:
    return {key.decode(): value.decode() for key, value in raw.items()}


def _stored(name: str, state: dict[str, str], score: float | None) -> StoredSchedule:
    return StoredSchedule(
        name=name,
        definition=json.loads(state["definition"]),
        source=state.get("source", API),
        paused=state.get("paused") == "1",
        revision=int(state.get("revision", 0)),
        next_tick=None if score is None else int(score),
        last_tick=int(state["last_tick"]) if state.get("last_tick") else None,
        last_job_id=state.get("last_job_id") or None,
        last_run_at=float(state["last_run_at"]) if state.get("last_run_at") else None,
        error=state.get("error") or None,
    )


def get(connection: Redis, name: str) -> StoredSchedule | None:
    with connection.pipeline() as pipe:
        pipe.hgetall(state_key(name))
        pipe.zscore(SCHEDULED, template_id(name))
        state, score = pipe.execute()
    return _stored(name, decode(state), score) if state else None


def all_schedules(connection: Redis) -> list[StoredSchedule]:
    names = sorted(member.decode() for member in connection.smembers(NAMES))
    with connection.pipeline() as pipe:
        for name in names:
            pipe.hgetall(state_key(name))
            pipe.zscore(SCHEDULED, template_id(name))
        replies = pipe.execute()
    found = []
    for index, name in enumerate(names):
        state, score = replies[2 * index], replies[2 * index + 1]
        if state:
            found.append(_stored(name, decode(state), score))
    return found


def names(connection: Redis) -> set[str]:
    return {member.decode() for member in connection.smembers(NAMES)}


def build_template(valid: ValidSchedule, connection: Redis) -> ServiceJob:
    """The job record each tick copies, not yet written."""
    prepared = valid.prepared
    queue = ServiceQueue(prepared.queue, connection=connection)
    return queue.create_job(
        prepared.spec.func,
        args=prepared.args,
        kwargs=prepared.kwargs,
        job_id=template_id(valid.name),
        status=JobStatus.SCHEDULED,
        meta={"schedule": valid.name},
        **prepared.options,
    )


@dataclass(frozen=True)
class Saved:
    #: `created`, `updated` (timing or job changed) or `unchanged`.
    outcome: str
    #: The source the schedule had before, None if it is new.
    previous_source: str | None
    schedule: StoredSchedule


def save(connection: Redis, valid: ValidSchedule, *, source: str, now: datetime) -> Saved:
    """Create or replace the schedule `valid.name`, keeping its pause and last run
    (a schedule parked by the scheduler for an error is resumed).

    The next tick is kept when the cron expression and zone are unchanged (so a
    restart neither fires a tick again nor forgets a missed one); otherwise it is
    the first tick after now and after the last tick that ran.
    """
    return save_many(connection, [valid], source=source, now=now)[0]


# Write a schedule only if it is still as it was read (revision and next tick):
# a tick fired or a change made in between sends the write back to be redone.
_WRITE = """
-- KEYS: 1 state, 2 job record, 3 scheduled set, 4 names
-- ARGV: 1 revision read ('' = none), 2 score read ('' = none), 3 member, 4 name, 5 next score ('' = none),
--       6 definition, 7 source, 8 paused, then the job record's fields
if (redis.call('HGET', KEYS[1], 'revision') or '') ~= ARGV[1] then return 0 end
local score = redis.call('ZSCORE', KEYS[3], ARGV[3])
if (score and tonumber(score) or '') ~= (ARGV[2] ~= '' and tonumber(ARGV[2]) or '') then return 0 end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], unpack(ARGV, 9))
redis.call('HSET', KEYS[1], 'definition', ARGV[6], 'source', ARGV[7], 'paused', ARGV[8])
redis.call('HDEL', KEYS[1], 'error')
redis.call('HINCRBY', KEYS[1], 'revision', 1)
if ARGV[5] == '' then redis.call('ZREM', KEYS[3], ARGV[3]) else redis.call('ZADD', KEYS[3], ARGV[5], ARGV[3]) end
redis.call('SADD', KEYS[4], ARGV[4])
return 1
"""


def save_many(connection: Redis, valids: list[ValidSchedule], *, source: str, now: datetime) -> list[Saved]:
    """`save` for many schedules, in a few round trips however many there are."""
    script = connection.register_script(_WRITE)
    templates = {valid.name: flat(build_template(valid, connection).to_dict()) for valid in valids}
    saved: dict[str, Saved] = {}
    pending = list(valids)
    while pending:
        with connection.pipeline(transaction=False) as pipe:
            for valid in pending:
                pipe.hgetall(state_key(valid.name))
                pipe.zscore(SCHEDULED, template_id(valid.name))
            replies = pipe.execute()
        plans = [
            _plan_write(valid, decode(replies[2 * i]), replies[2 * i + 1], source=source, now=now)
            for i, valid in enumerate(pending)
        ]
        with connection.pipeline(transaction=False) as pipe:
            for valid, (args, _) in zip(pending, plans):
                keys = [state_key(valid.name), template_key(valid.name), SCHEDULED, NAMES]
                script(keys=keys, args=args + templates[valid.name], client=pipe)
            written = pipe.execute()
        retry = []
        for valid, (_, result), ok in zip(pending, plans, written):
            if ok:
                saved[valid.name] = result
            else:
                retry.append(valid)
        pending = retry
    return [saved[valid.name] for valid in valids]


def _plan_write(valid: ValidSchedule, old: dict[str, str], score, *, source: str, now: datetime):
    """The write script's arguments for `valid` over the state `old`, and what it will leave."""
    definition = valid.definition()
    old_definition = json.loads(old["definition"]) if old.get("definition") else None
    # A pause is kept; a schedule the scheduler parked (paused with an error, as
    # it could not fire) runs again once replaced: the replacement is the fix.
    paused = old.get("paused") == "1" and not old.get("error")
    last_tick = int(old["last_tick"]) if old.get("last_tick") else None
    if old_definition is not None and _timing(old_definition) == _timing(definition) and score is not None:
        next_tick: int | None = int(score)
    else:
        next_tick = valid.cron.next_tick(max(math.floor(now.timestamp()), last_tick or 0))
    if old_definition is None:
        outcome = "created"
    elif canonical(old_definition) == canonical(definition) and old.get("source") == source:
        outcome = "unchanged"
    else:
        outcome = "updated"
    scheduled = None if paused else next_tick
    args = [
        old.get("revision", ""),
        "" if score is None else int(score),
        template_id(valid.name),
        valid.name,
        "" if scheduled is None else scheduled,
        canonical(definition),
        source,
        "1" if paused else "0",
    ]
    stored = StoredSchedule(
        name=valid.name,
        definition=json.loads(canonical(definition)),
        source=source,
        paused=paused,
        revision=int(old.get("revision", 0)) + 1,
        next_tick=scheduled,
        last_tick=last_tick,
        last_job_id=old.get("last_job_id") or None,
        last_run_at=float(old["last_run_at"]) if old.get("last_run_at") else None,
        error=None,
    )
    return args, Saved(outcome, old.get("source") if old else None, stored)


def flat(mapping: dict[str, Any]) -> list[Any]:
    """A job record's fields (Job.to_dict) flattened for HSET in a script."""
    flat: list[Any] = []
    for key, value in mapping.items():
        if value is not None:
            flat += [key, value]
    return flat


def _timing(definition: dict[str, Any]) -> tuple[str, str]:
    return definition["cron"], definition["timezone"]


_PAUSE = """
-- KEYS[1] state, KEYS[2] scheduled set; ARGV[1] template id
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'paused', '1')
redis.call('HINCRBY', KEYS[1], 'revision', 1)
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""


def pause(connection: Redis, name: str) -> bool:
    """Stop firing; False if there is no such schedule."""
    script = connection.register_script(_PAUSE)
    return bool(script(keys=[state_key(name), SCHEDULED], args=[template_id(name)]))


def resume(connection: Redis, name: str, *, now: datetime) -> bool:
    """Fire again from the first tick after now: ticks that passed while paused do not run.

    A schedule that is not paused is left as it is: its next tick may be due
    already, or ticks it missed may wait to be caught up, and neither is skipped."""
    key = state_key(name)
    found: dict[str, bool] = {}

    def write(pipe) -> None:
        state = decode(pipe.hgetall(key))
        found["yes"] = bool(state)
        if state.get("paused") != "1":
            return
        definition = json.loads(state["definition"])
        last_tick = int(state["last_tick"]) if state.get("last_tick") else 0
        next_tick = cron(definition["cron"], definition["timezone"]).next_tick(
            max(math.floor(now.timestamp()), last_tick)
        )
        pipe.multi()
        pipe.hset(key, mapping={"paused": "0"})
        pipe.hdel(key, "error")
        pipe.hincrby(key, "revision", 1)
        if next_tick is not None:
            pipe.zadd(SCHEDULED, {template_id(name): next_tick})

    connection.transaction(write, key)
    return found["yes"]


# Delete a schedule only if it is still as it was read: a sync or a DELETE
# that read it a moment ago must not remove what a PUT wrote in between.
_DELETE = """
-- KEYS: 1 state, 2 job record, 3 scheduled set, 4 names
-- ARGV: 1 member, 2 name, 3 condition: '' none, 'unrecorded' (only while there is no state
--       record), or the revision the state must still have
if ARGV[3] == 'unrecorded' then
  if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
elseif ARGV[3] ~= '' then
  if redis.call('HGET', KEYS[1], 'revision') ~= ARGV[3] then return -1 end
end
local existed = redis.call('DEL', KEYS[1])
existed = existed + redis.call('DEL', KEYS[2]) + redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('SREM', KEYS[4], ARGV[2])
return existed
"""

#: `delete`'s answers.
DELETED, ABSENT, CHANGED = "deleted", "absent", "changed"


def delete(connection: Redis, name: str, *, revision: int | None = None, unrecorded: bool = False) -> str:
    """Remove the schedule; jobs its ticks already enqueued stay.

    With `revision`, only while the schedule is still at that revision; with
    `unrecorded`, only an entry without a state record (one an earlier version
    registered). DELETED, ABSENT (nothing was there) or CHANGED (left alone).
    """
    condition = "unrecorded" if unrecorded else "" if revision is None else str(revision)
    script = connection.register_script(_DELETE)
    removed = script(keys=[state_key(name), template_key(name), SCHEDULED, NAMES],
                     args=[template_id(name), name, condition])
    return CHANGED if removed < 0 else DELETED if removed else ABSENT


def run_now(connection: Redis, name: str, *, now: datetime) -> ServiceJob | None:
    """Enqueue one extra run of the schedule now, outside its ticks; None if there is no such schedule."""
    raw = connection.hgetall(template_key(name))
    if not raw or not connection.exists(state_key(name)):
        return None
    job = job_from_template(raw, str(uuid.uuid4()), connection, now=now, meta={"schedule": name, "manual": True})
    queue = ServiceQueue(job.origin, connection=connection)
    at_front = bool(job.enqueue_at_front)

    def recorded(pipe) -> None:
        job_index.add(pipe, job)
        pipe.hset(state_key(name), mapping={"last_job_id": job.id, "last_run_at": repr(now.timestamp())})

    if job.has_rate_limit:
        # RQ takes a slot (or parks the job as `rate_limited`) in a script of
        # its own, which runs outside any pipeline.
        job = queue.enqueue_job(job, at_front=at_front)
        with connection.pipeline() as pipe:
            recorded(pipe)
            pipe.execute()
        return job

    def queued_and_recorded(pipe) -> None:
        queue.enqueue_job(job, pipeline=pipe, at_front=at_front)
        recorded(pipe)

    write_new_job(connection, job, queued_and_recorded)
    return job


def job_from_template(
    raw: dict[bytes, bytes], job_id: str, connection: Redis, *, now: datetime, meta: dict[str, Any]
) -> ServiceJob:
    """A queued job like the template record `raw` (function, arguments, options) under another id."""
    job = ServiceJob(job_id, connection=connection)
    job.restore(raw)
    job.meta = meta
    job.created_at = now
    job.enqueued_at = now
    # As Queue._prepare_for_queue does: the record is written queued, in one step.
    job._status = JobStatus.QUEUED
    return job
