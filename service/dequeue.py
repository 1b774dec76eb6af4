"""Taking a job off the queues without a moment where it is nowhere.

Plain RQ takes a job from several queues with BLPOP: from then until the job is
registered as started, it exists only in the worker's memory, and a crash in
between loses it (its status still says `queued`). Here a job moves, in one
atomic step, from the first non-empty queue (highest priority first) to the
worker's own *dequeued list*, `rq:svc:dequeued:<worker>`; it leaves that list
in the same transaction that registers it as started (see `claim`). A job is
therefore always in a queue, in a dequeued list or in a started registry, and
`service.recovery` puts the dequeued lists of dead workers back on their queues.

Redis cannot block on several lists and move atomically, so an idle worker of
several queues waits on a *doorbell*, a list the enqueue script pushes to when
it puts a job into an empty queue, for up to `DEQUEUE_POLL_INTERVAL`, and then
looks at all its queues again: a job enqueued by the service is taken within a
millisecond or two whatever its queue; one that RQ's own code enqueues (a
retry, a job given a time) within `DEQUEUE_POLL_INTERVAL`. With one queue the
worker simply blocks on it. Either wait goes to Redis in one pipeline with the
take that follows it, so a woken worker has its job, record and all, without
a second round trip.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from redis import Redis
from redis.client import Pipeline
from redis.exceptions import NoScriptError, RedisError
from rq.defaults import RQ_KEY_PREFIX
from rq.job import Job, JobStatus

from . import scripted

#: Set of the names of workers that hold (or held) a dequeued list.
DEQUEUERS_KEY = f"{RQ_KEY_PREFIX}:svc:dequeuers"

# KEYS: dequeued list, queue keys by priority; ARGV: job key prefix, whether
# the list may hold a job, then the deferred writes (`scripted`; counts for
# /metrics, run first, their errors ignored: a count must never cost a job).
# A job already in the worker's own list (left there when registering it
# failed, say because Redis went away) is taken again before any new one.
# Returns the queue key (empty for a held job), the job id and its record
# (HGETALL): what the worker reads next, in the same round trip. The worker is
# in the dequeuers set already (`Dequeuer.register`), and the supervisor
# watches for `rq suspend`.
_TAKE = scripted.RUN + """
run(redis.pcall, 3)
local function found(queue_key, job_id)
    return {queue_key, job_id, redis.call('HGETALL', ARGV[1] .. job_id)}
end
if ARGV[2] == '1' then
    local held = redis.call('LINDEX', KEYS[1], 0)
    if held then
        return found('', held)
    end
end
for i = 2, #KEYS do
    local job_id = redis.call('LMOVE', KEYS[i], KEYS[1], 'LEFT', 'RIGHT')
    if job_id then
        return found(KEYS[i], job_id)
    end
end
return false
"""

#: Statuses of a job that must not run (again) when its id is met on a queue.
NOT_RUNNABLE = frozenset({
    JobStatus.STARTED, JobStatus.FINISHED, JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED,
})

# KEYS: dequeued list, job hash; ARGV: job id, a key the commands create (the
# execution), then commands, each as its length and its words. Runs the commands
# only if the job is still in the list, taking it out: the job leaves the list in
# the same atomic step that registers it as started. A claim sent again because
# its first reply was lost (the client resends after a broken connection) finds
# the job gone but its own execution there: it was this claim that took it.
# A job canceled, deleted or ended since it was taken leaves the list unrun (2).
_CLAIM = scripted.RUN + """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then
    return redis.call('EXISTS', ARGV[2])
end
local status = redis.call('HGET', KEYS[2], 'status')
local ended = ENDED
if not status or ended[status] then
    return 2
end
run(redis.call, 3)
return 1
""".replace("ENDED", "{" + ", ".join(f"['{status.value}'] = true" for status in sorted(NOT_RUNNABLE)) + "}")

# KEYS: dequeued list, job hash, queue key; ARGV: job id.
# Puts a job from a dead (or stopping) worker's list back at the front of its
# queue, if it is still there and still waiting; 1 when it was put back.
_GIVE_BACK = """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then
    return 0
end
if redis.call('HGET', KEYS[2], 'status') == 'queued' then
    redis.call('LPUSH', KEYS[3], ARGV[1])
    return 1
end
return 2
"""

# KEYS: dequeued list, dequeuers set; ARGV: worker name.
_FORGET_IF_EMPTY = """
if redis.call('LLEN', KEYS[1]) == 0 then
    redis.call('SREM', KEYS[2], ARGV[1])
    return 1
end
return 0
"""


#: Pushed to when a job enters an empty queue; idle workers of several queues wait on it.
DOORBELL_KEY = f"{RQ_KEY_PREFIX}:svc:doorbell"
#: Rings kept at most: a busy system does not grow it.
DOORBELL_LIMIT = 64

#: Where RQ keeps a job's record.
JOB_KEY_PREFIX = Job.redis_job_namespace_prefix
#: Seconds at most between two looks into a worker's list it believes empty.
#: A take whose reply was lost, and which the client sent again, leaves there a
#: job the worker does not know it took; looking every time would cost a
#: command per job.
RELOOK_INTERVAL = 1.0


@dataclass(frozen=True)
class Taken:
    """A job moved into a worker's list: where from, and its record."""

    queue_key: str
    job_id: str
    #: The job's hash as HGETALL returns it (empty when the record is gone).
    record: dict


def dequeued_key(worker_name: str) -> str:
    return f"{RQ_KEY_PREFIX}:svc:dequeued:{worker_name}"


class Dequeuer:
    """The dequeued list of one worker, and the scripts that move jobs in and out of it."""

    def __init__(self, connection: Redis, worker_name: str, clock: Callable[[], float] = time.monotonic):
        self.connection = connection
        self._clock = clock
        self._looked_at = clock()
        self.worker_name = worker_name
        self.key = dequeued_key(worker_name)
        self._take = scripted.PackedScript(connection, _TAKE)
        self._claim = scripted.PackedScript(connection, _CLAIM)
        #: Whether the list may hold a job (so a take looks there first); False
        #: once this worker has claimed or dropped what it took.
        self._may_hold = True
        #: Writes that may wait for the next take (counts for /metrics): queued, not sent.
        self.deferred: Pipeline = connection.pipeline(transaction=False)

    def register(self, pipeline: Pipeline | None = None) -> None:
        """Enter this worker in the dequeuers set, where recovery looks for lists of dead workers.

        At the worker's birth, before its first take, and again with each of its heartbeats.
        """
        (pipeline if pipeline is not None else self.connection).sadd(DEQUEUERS_KEY, self.worker_name)

    def take(self, queue_keys: list[str], block: float | None = None) -> Taken | None:
        """Move the next job id into this worker's list and read its record.

        `Taken.queue_key` is empty for a job that was already in the list. With
        `block`, wait up to that many seconds for a job on the first queue
        (or, with several queues, for the doorbell). Call `register` first.
        """
        found = self._take(keys=[self.key, *queue_keys], args=self._take_args(scripted.words(self.deferred)))
        self.deferred.reset()
        taken = self._taken(found)
        if taken is not None or not block:
            return taken
        # The wait and the take in one round trip: Redis runs the take the moment
        # the wait ends (rung, a job moved into the list, or timed out), instead of
        # answering the wait and then hearing from the worker again.
        with self.connection.pipeline(transaction=False) as pipe:
            if len(queue_keys) > 1:
                pipe.blpop([DOORBELL_KEY], block)
            else:  # what BLMOVE moves, the take finds in the list
                pipe.blmove(queue_keys[0], self.key, block, "LEFT", "RIGHT")
                self._may_hold = True
            keys = [self.key, *queue_keys]
            pipe.execute_command("EVALSHA", self._take.sha, len(keys), *keys, *self._take_args([]))
            waited, found = pipe.execute(raise_on_error=False)
        if isinstance(waited, Exception):
            raise waited
        if isinstance(found, NoScriptError):  # Redis lost its scripts meanwhile: the call above reloads
            return self.take(queue_keys)
        if isinstance(found, Exception):
            raise found
        return self._taken(found)

    def _take_args(self, deferred: list) -> list:
        now = self._clock()
        look = self._may_hold or now - self._looked_at >= RELOOK_INTERVAL
        if look:
            self._looked_at = now
        # Until the answer says otherwise (`_taken`): a take that fails may have
        # moved a job in before the connection broke.
        self._may_hold = True
        return [JOB_KEY_PREFIX, "1" if look else "0", *deferred]

    def _taken(self, found) -> Taken | None:
        self._may_hold = bool(found)
        if not found:
            return None
        queue_key, job_id, flat = found
        return Taken(_text(queue_key), _text(job_id), dict(zip(flat[::2], flat[1::2])))

    def claim(self, job_id: str, register) -> str | None:
        """Run `register(pipeline)` and take `job_id` out of the list, atomically, in one round trip.

        `register` queues the writes that record the job as started (RQ's
        execution) and returns a key they create, new to this claim. None when
        claimed; else why nothing was written: the job is no longer in this list
        (recovery gave it back because this worker looked dead), or it was
        canceled, deleted or ended after it was taken (then it leaves the list).
        """
        with self.connection.pipeline() as pipe:
            created = register(pipe)  # only queued: sent below as the script's arguments
            words = scripted.words(pipe)
            pipe.reset()
        answer = self._claim(keys=[self.key, JOB_KEY_PREFIX + job_id], args=[job_id, created, *words])
        self._may_hold = False  # claimed, or gone from the list: either way it is empty
        if answer == 1:
            return None
        if answer == 2:
            return "canceled, deleted or ended after it was taken"
        return "recovered by another worker meanwhile"

    def drop(self, job_id: str, pipeline: Pipeline | None = None) -> None:
        """Forget a job id that must not run (unknown, unreadable, already done)."""
        if pipeline is not None:
            pipeline.lrem(self.key, 1, job_id)
        else:
            self.connection.lrem(self.key, 1, job_id)
            self._may_hold = False

    def flush_deferred(self) -> None:
        """Send the deferred writes now (the worker stops, or waits): best effort, like the counts they are."""
        try:
            self.deferred.execute(raise_on_error=False)
        except RedisError:
            self.deferred.reset()

    def held(self) -> list[str]:
        return [_text(job_id) for job_id in self.connection.lrange(self.key, 0, -1)]

    def give_back_all(self) -> int:
        """Put every job of this list back at the front of its queue (a clean stop); the count."""
        return give_back(self.connection, self.worker_name)


def give_back(connection: Redis, worker_name: str) -> int:
    """Return the jobs of `worker_name`'s dequeued list to their queues; how many went back.

    Safe against the worker itself and other callers running at the same time:
    each job moves in one script, and only from the list.
    """
    from rq.queue import Queue

    key = dequeued_key(worker_name)
    give = connection.register_script(_GIVE_BACK)
    returned = 0
    for raw in connection.lrange(key, 0, -1):
        job_id = _text(raw)
        job_key = Job.key_for(job_id)
        origin = connection.hget(job_key, "origin")
        queue_key = Queue.redis_queue_namespace_prefix + (_text(origin) if origin else "default")
        if give(keys=[key, job_key, queue_key], args=[job_id]) == 1:
            returned += 1
    connection.register_script(_FORGET_IF_EMPTY)(keys=[key, DEQUEUERS_KEY], args=[worker_name])
    return returned


def dequeuers(connection: Redis) -> list[str]:
    return sorted(_text(name) for name in connection.smembers(DEQUEUERS_KEY))


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
