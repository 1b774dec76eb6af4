"""Concurrent calls of a Redis script share one round trip (a group commit).

A web process enqueues for many clients at once. Sent one by one, each enqueue
pays a round trip of its own: a connection checkout, a send, a wait, a read,
and as much again in Redis. Here the first caller that finds no batch on the
wire sends every call queued so far in one pipeline; calls that arrive while
it waits queue up and go together in the next batch, sent by the first of
them. An idle server sends batches of one, so nothing waits for company.

Each call is still its own script run, so each stays atomic and can fail on
its own (a full Redis refuses one write, not the batch's neighbours). As one
batch at most is on the wire, the batcher keeps a connection of its own rather
than checking one out of the pool per call (redis-py's checkout and release,
with their readiness poll and fork checks, cost about 20 µs of CPU a call).
Threads and gevent's greenlets alike: `gunicorn.conf.py` has gevent patch
`threading` before the app is loaded.
"""
from __future__ import annotations

import hashlib
import os
import threading
import weakref
from typing import Any, Sequence

from hiredis import pack_command
from redis import Redis
from redis.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError


class _Call:
    __slots__ = ("keys", "args", "result", "done", "lead")

    def __init__(self, keys: Sequence[Any], args: Sequence[Any]):
        self.keys, self.args = keys, args
        self.result: Any = None
        self.done = threading.Event()
        #: Woken to send the next batch rather than with its own result.
        self.lead = False


class ScriptBatcher:
    """Runs one Lua script for any number of concurrent callers, in batches."""

    def __init__(self, connection: Redis, script: str):
        self.connection = connection
        self.script = script
        #: The connection batches go out on, opened on first use (again in a
        #: forked child, `_forget_connections`).
        self._conn: AbstractConnection | None = None
        self.sha = hashlib.sha1(script.encode()).hexdigest()
        self._lock = threading.Lock()
        self._waiting: list[_Call] = []
        self._sending = False
        _live_batchers.add(self)

    def __call__(self, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        call = _Call(keys, args)
        with self._lock:
            self._waiting.append(call)
            lead, self._sending = not self._sending, True
        if not lead:
            call.done.wait()
            if call.lead:  # its turn to send the batch it is in
                self._send_waiting()
        else:
            self._send_waiting()
        if isinstance(call.result, BaseException):
            raise call.result
        return call.result

    def _send_waiting(self) -> None:
        with self._lock:
            batch, self._waiting = self._waiting, []
        try:
            results = self._run(batch)
        except BaseException as error:  # the connection failed: every call fails alike
            results = [error] * len(batch)
        for call, result in zip(batch, results):
            call.result = result
        with self._lock:
            following = self._waiting[0] if self._waiting else None
            if following is None:
                self._sending = False
            else:
                following.lead = True
        for call in batch:
            call.done.set()
        if following is not None:
            following.done.set()

    def _run(self, batch: list[_Call]) -> list[Any]:
        results = self._send(batch)
        missing = [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]
        if missing:  # Redis restarted or its scripts were flushed: load, send those again
            self.connection.script_load(self.script)
            for i, result in zip(missing, self._send([batch[i] for i in missing])):
                results[i] = result
        return results

    def _own_connection(self) -> AbstractConnection:
        """The batcher's connection (from the pool, kept), opened on first use."""
        if self._conn is None:
            self._conn = self.connection.connection_pool.get_connection()
        return self._conn

    def _send(self, batch: list[_Call]) -> list[Any]:
        """Each call's reply, or its error. The calls go out packed in one write,
        as a pipeline would send them, but without redis-py's per-command layers
        (argument checks, the pipeline's bookkeeping, reply callbacks), which
        cost as much CPU as Redis spends running the script. Sent as `exchange`
        sends, so a script sent through here must be safe to run twice (the
        enqueue script writes a job once)."""
        results: list[Any] = [None] * len(batch)
        packed: list[bytes] = []
        sent: list[int] = []
        for i, call in enumerate(batch):
            try:
                packed.append(pack_command(("EVALSHA", self.sha, len(call.keys), *call.keys, *call.args)))
                sent.append(i)
            except (TypeError, ValueError) as error:  # an argument Redis cannot take
                results[i] = error  # fails its own call, not its neighbours'
        if not sent:
            return results
        for i, reply in zip(sent, exchange(self._own_connection(), b"".join(packed), len(sent))):
            results[i] = reply
        return results


def exchange(conn: AbstractConnection, packed: bytes, count: int) -> list[Any]:
    """Send `count` packed commands, read their replies (an error Redis answers
    is a reply, returned). A connection that a Redis restart broke is reopened
    and the commands sent once more, as the client's retry policy
    (`service.connection`) does for a command: Redis may have run some of them
    already, so they must be safe to run twice."""
    try:
        return _exchange(conn, packed, count)
    except RedisConnectionError:
        conn.disconnect()
        return _exchange(conn, packed, count)


def _exchange(conn: AbstractConnection, packed: bytes, count: int) -> list[Any]:
    conn.send_packed_command([packed])
    results: list[Any] = []
    for _ in range(count):
        try:
            results.append(conn.read_response())
        except ResponseError as error:
            results.append(error)
    return results


#: Every batcher of this process.
_live_batchers: "weakref.WeakSet[ScriptBatcher]" = weakref.WeakSet()


def _forget_connections() -> None:
    """In a forked child: parent and child must not share a socket (each would
    read the other's replies), so each batcher opens its own on first use.
    Done once at the fork rather than with a process id check on every batch."""
    for batcher in _live_batchers:
        batcher._conn = None


os.register_at_fork(after_in_child=_forget_connections)
