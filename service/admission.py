"""One Redis round trip decides and writes an enqueue.

A script counts the request against its rate limits, checks the queue's cap
and writes the job in RQ's own format (the record, its queue, the queues set
and the newest-first index), atomically: a request refused for either reason
writes nothing (the counts, the index entry and the push are taken back), and
an accepted one learns its place in the queue from RPUSH. A call that runs a
second time (`service.batching` sends a batch again after a broken connection)
finds its job in the index and writes nothing more.

Jobs RQ must place itself (dependencies, concurrency limits, a start time) use
the script for the limits alone and RQ's code for the write (`service.enqueue`).
"""
from __future__ import annotations

import threading
import weakref
from typing import Any, Sequence

from redis import Redis
from rq.queue import Queue

from . import job_index
from .batching import ScriptBatcher
from .dequeue import DOORBELL_KEY, DOORBELL_LIMIT
from .rate_limits import Counter, RateLimited

# KEYS: n rate-limit counters, the index, then (to write a job) queue, queues
# set, job hash, the workers' doorbell (`service.dequeue`).
# ARGV: n, n amounts, n window lengths, job id, index score; then (to write)
#       cap, job ttl and the job hash's fields and values.
# Returns {'ok', queue length}, {'again'}, {'full'} or {'limited', counter number, ms left}.
_SCRIPT = ("""
local n = tonumber(ARGV[1])
local write = #KEYS > n + 1
local at = 2 * n + 2
local index, job_id = KEYS[n + 1], ARGV[at]
-- The index learns of the job first. If it knew it already, this very call ran
-- before and was sent again after a broken connection took its answer
-- (`service.batching`): counting the request twice would spend its client's
-- limit twice, and writing the job twice would queue it twice.
if redis.call('ZADD', index, ARGV[at + 1], job_id) == 0 then
    return {'again'}
end
for i = 1, n do
    local hits = redis.call('INCR', KEYS[i])
    if hits == 1 then
        redis.call('EXPIRE', KEYS[i], ARGV[1 + n + i])
    end
    if hits > tonumber(ARGV[1 + i]) then
        for j = 1, i do
            redis.call('DECR', KEYS[j])
        end
        redis.call('ZREM', index, job_id)
        return {'limited', i, redis.call('PTTL', KEYS[i])}
    end
end
if not write then
    return {'ok', 0}
end
local queue, job = KEYS[n + 2], KEYS[n + 4]
local length = redis.call('RPUSH', queue, job_id)
local cap = tonumber(ARGV[at + 2])
if cap > 0 and length > cap then
    -- Full: undo the index, the push and the counts (nothing ran in between).
    redis.call('RPOP', queue)
    redis.call('ZREM', index, job_id)
    for j = 1, n do
        redis.call('DECR', KEYS[j])
    end
    return {'full'}
end
redis.call('HSET', job, unpack(ARGV, at + 4))
local ttl = tonumber(ARGV[at + 3])
if ttl > 0 then
    redis.call('EXPIRE', job, ttl)
end
if length == 1 then
    -- A queue that was empty: RQ lists it among the queues again (a set, so
    -- once is enough), and its workers may be waiting on the doorbell.
    redis.call('SADD', KEYS[n + 3], queue)
    if redis.call('LLEN', KEYS[n + 5]) < DOORBELL_LIMIT then
        redis.call('RPUSH', KEYS[n + 5], 1)
    end
end
return {'ok', length}
""").replace("DOORBELL_LIMIT", str(DOORBELL_LIMIT))


class QueueFull(Exception):
    """The queue holds its cap of jobs already; the client should come back later."""


_batchers: "weakref.WeakKeyDictionary[Redis, ScriptBatcher]" = weakref.WeakKeyDictionary()
_batchers_lock = threading.Lock()


class Admission:
    """The enqueue script on a connection; concurrent requests share round trips."""

    def __init__(self, connection: Redis):
        with _batchers_lock:
            batcher = _batchers.get(connection)
            if batcher is None:
                batcher = _batchers[connection] = ScriptBatcher(connection, _SCRIPT)
        self._script = batcher

    def count(self, counters: Sequence[Counter], job) -> None:
        """Count the request for `job` against `counters` only, entering the job in
        the index (its writer enters it again); RateLimited, counting nothing, when
        one is full."""
        if counters:
            self._run(counters, job, [], [])

    def enqueue(self, counters: Sequence[Counter], job, queue_key: str, cap: int) -> int | None:
        """Write `job` (queued, RQ's format) at the back of `queue_key`; its position
        (None when a resent call found the job written already).

        RateLimited or QueueFull, writing nothing, when refused.
        """
        keys = [queue_key, Queue.redis_queues_keys, job.key, DOORBELL_KEY]
        fields: list[Any] = []
        for name, value in job.to_dict().items():
            fields += (name, value)
        length = self._run(counters, job, keys, [cap, job.ttl or 0, *fields])
        return None if length is None else length - 1

    def _run(self, counters, job, keys, args) -> int | None:
        answer = self._script(
            [*(c.key for c in counters), job_index.KEY, *keys],
            [len(counters), *(c.amount for c in counters), *(c.seconds for c in counters),
             job.id, job.created_at.timestamp(), *args],
        )
        outcome = answer[0].decode() if isinstance(answer[0], bytes) else answer[0]
        if outcome == "ok":
            return int(answer[1])
        if outcome == "again":
            return None
        if outcome == "full":
            raise QueueFull()
        counter = counters[int(answer[1]) - 1]
        milliseconds = int(answer[2])
        retry_after = -(-milliseconds // 1000) if milliseconds > 0 else counter.seconds
        raise RateLimited(counter, max(1, retry_after))
