"""Taking a job off the queues without a moment where it is nowhere.

Plain RQ takes a job from several queues with BLPOP: from then until the job is
registered as started, it exists only in the worker's memory, and a crash in
between loses it (its status still says `queued`). Here a job moves, in one
atomic step, from the first non-empty queue (highest priority first) to the
worker's own *dequeued list*, `rq:svc:dequeued:<worker>`; it leaves that list
in the same transaction that registers it as started (see `claim`). A job is
therefore always in a queue, in a dequeued list or in a started registry, and
`service.recovery` puts the dequeued lists of dead workers back on their queues.

Redis cannot block on several lists and move atomically, so an idle worker
blocks on its first queue for `DEQUEUE_POLL_INTERVAL` and then looks at all of
them again: a job on a lower-priority queue waits at most that long for an
idle worker; with one queue the worker simply blocks.
"""
from __future__ import annotations

from redis import Redis
from redis.client import Pipeline
from redis.exceptions import WatchError
from rq.defaults import RQ_KEY_PREFIX
from rq.suspension import WORKERS_SUSPENDED as SUSPENDED_KEY

#: Set of the names of workers that hold (or held) a dequeued list.
DEQUEUERS_KEY = f"{RQ_KEY_PREFIX}:svc:dequeuers"

# KEYS: dequeued list, dequeuers set, RQ's suspension flag, queue keys by
# priority; ARGV: worker name. A job already in the worker's own list (left
# there when registering it failed, say because Redis went away) is taken again
# before any new one; none is taken while workers are suspended (`rq suspend`).
_TAKE = """
local held = redis.call('LINDEX', KEYS[1], 0)
if held then
    return {'', held}
end
if redis.call('EXISTS', KEYS[3]) == 1 then
    return 'suspended'
end
for i = 4, #KEYS do
    local job_id = redis.call('LMOVE', KEYS[i], KEYS[1], 'LEFT', 'RIGHT')
    if job_id then
        redis.call('SADD', KEYS[2], ARGV[1])
        return {KEYS[i], job_id}
    end
end
return false
"""

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


#: What `Dequeuer.take` returns while workers are suspended.
SUSPENDED = "suspended"


def dequeued_key(worker_name: str) -> str:
    return f"{RQ_KEY_PREFIX}:svc:dequeued:{worker_name}"


class Dequeuer:
    """The dequeued list of one worker, and the scripts that move jobs in and out of it."""

    def __init__(self, connection: Redis, worker_name: str):
        self.connection = connection
        self.worker_name = worker_name
        self.key = dequeued_key(worker_name)
        self._take = connection.register_script(_TAKE)

    def take(self, queue_keys: list[str], block: float | None = None) -> tuple[str, str] | None:
        """Move the next job id into this worker's list: `(queue key or "", job id)`.

        `queue key` is empty for a job that was already in the list. With
        `block`, wait up to that many seconds for a job on the first queue.
        `SUSPENDED` while workers are suspended.
        """
        found = self._take(keys=[self.key, DEQUEUERS_KEY, SUSPENDED_KEY, *queue_keys], args=[self.worker_name])
        if found in (SUSPENDED, SUSPENDED.encode()):
            return SUSPENDED
        if found:
            return _text(found[0]), _text(found[1])
        if not block:
            return None
        with self.connection.pipeline(transaction=False) as pipe:
            # Registered before blocking: a job moved by BLMOVE is always findable.
            pipe.sadd(DEQUEUERS_KEY, self.worker_name)
            pipe.blmove(queue_keys[0], self.key, block, "LEFT", "RIGHT")
            _, job_id = pipe.execute()
        return (queue_keys[0], _text(job_id)) if job_id else None

    def claim(self, job_id: str, register) -> bool:
        """Run `register(pipeline)` and take `job_id` out of the list, atomically.

        `register` queues the writes that record the job as started (RQ's
        execution). False, writing nothing, when the job is no longer in this
        list: recovery gave it back because this worker looked dead.
        """
        with self.connection.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(self.key)
                    if pipe.lpos(self.key, job_id) is None:
                        pipe.unwatch()
                        return False
                    pipe.multi()
                    register(pipe)
                    pipe.lrem(self.key, 1, job_id)
                    pipe.execute()
                    return True
                except WatchError:
                    continue

    def drop(self, job_id: str, pipeline: Pipeline | None = None) -> None:
        """Forget a job id that must not run (unknown, unreadable, already done)."""
        (pipeline if pipeline is not None else self.connection).lrem(self.key, 1, job_id)

    def held(self) -> list[str]:
        return [_text(job_id) for job_id in self.connection.lrange(self.key, 0, -1)]

    def give_back_all(self) -> int:
        """Put every job of this list back at the front of its queue (a clean stop); the count."""
        returned = give_back(self.connection, self.worker_name)
        return returned


def give_back(connection: Redis, worker_name: str) -> int:
    """Return the jobs of `worker_name`'s dequeued list to their queues; how many went back.

    Safe against the worker itself and other callers running at the same time:
    each job moves in one script, and only from the list.
    """
    from rq.job import Job
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
