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
from ..queues import ServiceJob, ServiceQueue
from .cron import Cron, cron
from .definition import ValidSchedule, canonical, template_id

SCHEDULED = Scheduler.scheduled_jobs_key
NAMES = "jobservice:schedules"
STATE_PREFIX = "jobservice:schedule:"

DECLARED = "declared"
API = "api"


def state_key(name: str) -> str:
    return STATE_PREFIX + name


def template_key(name: str) -> str:
    return ServiceJob.redis_job_namespace_prefix + template_id(name)


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
    """Create or replace the schedule `valid.name`, keeping its pause and last run.

    The next tick is kept when the cron expression and zone are unchanged (so a
    restart neither fires a tick again nor forgets a missed one); otherwise it is
    the first tick after now and after the last tick that ran.
    """
    name = valid.name
    key = state_key(name)
    template = build_template(valid, connection).to_dict()
    definition = valid.definition()
    outcome: dict[str, Any] = {}

    def write(pipe) -> None:
        old = decode(pipe.hgetall(key))
        score = pipe.zscore(SCHEDULED, template_id(name))
        old_definition = json.loads(old["definition"]) if old.get("definition") else None
        paused = old.get("paused") == "1"
        last_tick = int(old["last_tick"]) if old.get("last_tick") else None
        same_timing = old_definition is not None and _timing(old_definition) == _timing(definition)
        if same_timing and score is not None:
            next_tick: int | None = int(score)
        else:
            next_tick = valid.cron.next_tick(max(math.floor(now.timestamp()), last_tick or 0))
        if old_definition is None:
            outcome["outcome"] = "created"
        elif canonical(old_definition) == canonical(definition) and old.get("source") == source:
            outcome["outcome"] = "unchanged"
        else:
            outcome["outcome"] = "updated"
        outcome["previous_source"] = old.get("source") if old else None
        pipe.multi()
        pipe.delete(template_key(name))
        pipe.hset(template_key(name), mapping=template)
        pipe.hset(key, mapping={"definition": canonical(definition), "source": source, "paused": "1" if paused else "0"})
        pipe.hdel(key, "error")
        pipe.hincrby(key, "revision", 1)
        if paused or next_tick is None:
            pipe.zrem(SCHEDULED, template_id(name))
        else:
            pipe.zadd(SCHEDULED, {template_id(name): next_tick})
        pipe.sadd(NAMES, name)

    connection.transaction(write, key)
    stored = get(connection, name)
    assert stored is not None
    return Saved(outcome["outcome"], outcome["previous_source"], stored)


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
    """Fire again from the first tick after now: ticks that passed while paused do not run."""
    key = state_key(name)
    found: dict[str, bool] = {}

    def write(pipe) -> None:
        state = decode(pipe.hgetall(key))
        found["yes"] = bool(state)
        if not state:
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


def delete(connection: Redis, name: str) -> bool:
    """Remove the schedule; jobs its ticks already enqueued stay. False if there was none."""
    with connection.pipeline() as pipe:
        pipe.delete(state_key(name))
        pipe.delete(template_key(name))
        pipe.zrem(SCHEDULED, template_id(name))
        pipe.srem(NAMES, name)
        existed, *_ = pipe.execute()
    return bool(existed)


def run_now(connection: Redis, name: str, *, now: datetime) -> ServiceJob | None:
    """Enqueue one extra run of the schedule now, outside its ticks; None if there is no such schedule."""
    raw = connection.hgetall(template_key(name))
    if not raw or not connection.exists(state_key(name)):
        return None
    job = job_from_template(raw, str(uuid.uuid4()), connection, now=now, meta={"schedule": name, "manual": True})
    queue = ServiceQueue(job.origin, connection=connection)
    with connection.pipeline() as pipe:
        queue.enqueue_job(job, pipeline=pipe, at_front=bool(job.enqueue_at_front))
        job_index.add(pipe, job)
        pipe.hset(state_key(name), mapping={"last_job_id": job.id, "last_run_at": repr(now.timestamp())})
        pipe.execute()
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
