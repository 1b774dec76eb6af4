"""A job's events as the web service receives them (Redis pub/sub).

Subscribe first, then read the job's state: an event published in between is
then never missed.

Every request that follows a job (a long poll, an event stream) shares one
pub/sub connection of its process (`_Hub`), instead of opening its own: a
thousand browsers following progress bars cost Redis one connection a web
process, not a thousand (a managed Redis may allow a few dozen), and a long
poll costs one SUBSCRIBE, not a TCP (or TLS) connection and its handshake.
"""
from __future__ import annotations

import collections
import json
import os
import threading
import time
import weakref
from typing import Any, Iterator

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from jobs import _events

from .shared_reads import own_copy

#: Statuses after which a job changes no more (unless someone retries it).
TERMINAL = frozenset({"finished", "failed", "canceled", "stopped"})

#: Seconds without a message after which the shared connection is checked with
#: a PING (a Redis that went away without closing it is found within twice this).
PING_INTERVAL = 15.0
#: Seconds the shared connection stays open with nobody following a job.
IDLE_CLOSE = 60.0
#: Events one follower may have waiting; past it, its oldest progress report
#: is dropped (a later one says more), never a status change.
MAX_BACKLOG = 1000
#: What the shared connection calls itself in Redis's CLIENT LIST.
CLIENT_NAME = "jobservice:events"


def status_changed(connection: Redis, job, status: str | None = None) -> None:
    """Tell followers of `job` that its status is now `status` (default: as stored)."""
    status = status or job.get_status(refresh=False)
    _events.publish(connection, job.id, "status", {"status": str(getattr(status, "value", status))})


class Subscription:
    """The events of one job, from the moment this is created."""

    def __init__(self, connection: Redis, job_id: str):
        self._channel = _events.channel(job_id).encode()
        # Each with when it reached this process (`time.monotonic()`).
        self._events: collections.deque[tuple[float, dict[str, Any]]] = collections.deque()
        #: When the event `next` returned last reached this process: a read of
        #: the job begun since then sees at least what the event tells.
        self.received_at = 0.0
        self._arrived = threading.Event()
        self._error: BaseException | None = None
        self._hub = _hub(connection)
        self._hub.follow(self)  # returns once Redis has the subscription

    def next(self, timeout: float) -> dict[str, Any] | None:
        """The next event, or None when `timeout` seconds pass without one.

        Raises the Redis error that broke the shared connection, if one did."""
        deadline = time.monotonic() + timeout
        while True:
            with self._hub._lock:  # the listener hands one event to every follower in one step
                if self._events:
                    self.received_at, event = self._events.popleft()
                    return event
                error = self._error
            if error is not None:
                raise own_copy(error)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self._arrived.clear()
            if not (self._events or self._error):  # else one came since the check
                self._arrived.wait(remaining)

    def events(self, idle_timeout: float) -> Iterator[dict[str, Any] | None]:
        """Events as they come; None after each `idle_timeout` seconds of quiet."""
        while True:
            yield self.next(idle_timeout)

    def close(self) -> None:
        self._hub.leave(self)

    def __enter__(self) -> "Subscription":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- called by the hub, with its lock held ----------------------------------
    def _deliver(self, event: dict[str, Any], at: float) -> None:
        if len(self._events) >= MAX_BACKLOG:
            _drop_oldest_progress(self._events)
        self._events.append((at, event))
        self._arrived.set()

    def _fail(self, error: BaseException) -> None:
        self._error = error
        self._arrived.set()


def _drop_oldest_progress(events: collections.deque) -> None:
    # None left means only status changes, a handful a job: nothing to drop.
    for index, (_, event) in enumerate(events):
        if event.get("event") == "progress":
            del events[index]
            return


class _Channel:
    """The followers of one job's channel and the SUBSCRIBE their first one sent."""

    def __init__(self) -> None:
        self.followers: set[Subscription] = set()
        self.subscribed = threading.Event()


class _Attempt:
    """A connection being opened; the followers that come meanwhile wait for its outcome."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.error: Exception | None = None


class _Hub:
    """One pub/sub connection of a process, shared by every `Subscription` of a client.

    A follower sends SUBSCRIBE for its job's channel (unless another follows
    the job already) and waits for Redis to confirm it; a listener thread (a
    greenlet under gevent) reads the connection and hands each event to the
    channel's followers. Sends go out under the lock; only the listener reads.
    When the connection breaks, every follower gets the error (a long poll
    answers 503, as when Redis is down) and the next one connects again.
    """

    def __init__(self, connection: Redis):
        pool = connection.connection_pool
        self._connection_class = pool.connection_class
        # Its own connection, kept out of the pool; no health check of redis-py's,
        # which would read a reply in the sender's thread (the listener PINGs).
        self._connection_kwargs = {
            **pool.connection_kwargs, "health_check_interval": 0, "protocol": 2, "client_name": CLIENT_NAME,
        }
        self._timeout = pool.connection_kwargs.get("socket_timeout") or 5.0
        self._lock = threading.Lock()
        self._conn = None
        self._connecting: _Attempt | None = None
        self._pid = os.getpid()
        self._channels: dict[bytes, _Channel] = {}
        # One entry a SUBSCRIBE sent and not yet confirmed, by channel, in the
        # order sent: Redis confirms in that order, so a confirmation that comes
        # after its channel was left and followed again is matched to the right one.
        self._unconfirmed: dict[bytes, collections.deque[threading.Event]] = {}
        self._idle_since = time.monotonic()

    def follow(self, follower: Subscription) -> None:
        channel = follower._channel
        while True:
            with self._lock:
                if self._pid != os.getpid():  # forked: the connection and listener are the parent's
                    self._pid, self._conn, self._connecting = os.getpid(), None, None
                    self._channels, self._unconfirmed = {}, {}
                if self._live_conn() is not None:
                    entry = self._subscribe(channel)
                    entry.followers.add(follower)
                    break
                attempt, mine = self._connecting, self._connecting is None
                if mine:
                    attempt = self._connecting = _Attempt()
            # Connecting takes up to REDIS_TIMEOUT when Redis does not answer: the
            # followers that come meanwhile wait for this one attempt, not in turn.
            if mine:
                self._open(attempt)
            elif not attempt.done.wait(3 * self._timeout):  # a connect and its handshake, with room
                raise RedisTimeoutError(f"Redis did not take a connection within {3 * self._timeout} s")
            if attempt.error is not None:
                raise own_copy(attempt.error)
        if not entry.subscribed.wait(self._timeout):
            self.leave(follower)
            raise RedisTimeoutError(f"Redis did not confirm a subscription within {self._timeout} s")
        if follower._error is not None:
            raise own_copy(follower._error)

    def leave(self, follower: Subscription) -> None:
        channel = follower._channel
        with self._lock:
            entry = self._channels.get(channel)
            if entry is None or follower not in entry.followers:
                return  # left already, or dropped when the connection broke
            entry.followers.discard(follower)
            if entry.followers:
                return
            del self._channels[channel]
            if not self._channels:
                self._idle_since = time.monotonic()
            conn = self._live_conn()
            if conn is None:
                return
            try:
                conn.send_command("UNSUBSCRIBE", channel, check_health=False)
            except Exception as error:  # the listener finds the connection broken too
                self._broken(error)

    def _open(self, attempt: "_Attempt") -> None:
        """Open the connection and start its listener (without the lock: it waits on Redis).

        Whatever happens, the attempt ends: its waiters learn its error, or
        (when this greenlet was itself interrupted) find no connection and try
        again; the interruption goes on up this caller's stack alone."""
        conn = None
        try:
            conn = self._connection_class(**self._connection_kwargs)
            conn.connect()
            listener = threading.Thread(target=self._listen, args=(conn,), name="job-events", daemon=True)
            with self._lock:
                self._conn = conn
                self._idle_since = time.monotonic()
                try:
                    listener.start()
                except BaseException:
                    self._conn = None
                    raise
            conn = None  # the listener's now
        except Exception as error:
            attempt.error = error
        finally:
            if conn is not None:
                conn.disconnect()
            with self._lock:
                self._connecting = None
            attempt.done.set()

    # -- with the lock held --------------------------------------------------------
    def _live_conn(self):
        """The connection, unless there is none or its read failed and the
        listener has yet to say so (then dropped here): a send on it would
        connect it again, under the lock and without its subscriptions."""
        if self._conn is not None and self._conn._sock is None:  # redis-py drops a failed one's socket
            self._broken(RedisConnectionError("the events connection closed"))
        return self._conn

    def _subscribe(self, channel: bytes) -> _Channel:
        entry = self._channels.get(channel)
        if entry is None:
            entry = self._channels[channel] = _Channel()
            self._unconfirmed.setdefault(channel, collections.deque()).append(entry.subscribed)
            try:
                self._conn.send_command("SUBSCRIBE", channel, check_health=False)
            except BaseException as error:
                self._broken(error)
                raise
        return entry

    def _broken(self, error: BaseException) -> None:
        """Tell every follower, forget every subscription, drop the connection."""
        for entry in self._channels.values():
            for follower in entry.followers:
                follower._fail(error)
            entry.subscribed.set()  # wakes a follower waiting for it, to find its error
        self._channels, self._unconfirmed = {}, {}
        if self._conn is not None:
            self._conn.disconnect()
            self._conn = None

    # -- the listener ----------------------------------------------------------------
    def _listen(self, conn) -> None:
        pong_due = None
        try:
            while self._conn is conn:  # else dropped: a read now would connect it again
                if not conn.can_read(timeout=PING_INTERVAL):
                    with self._lock:
                        if self._conn is not conn:
                            return  # dropped by a sender that found it broken
                        if not self._channels and time.monotonic() - self._idle_since >= IDLE_CLOSE:
                            conn.disconnect()
                            self._conn = None
                            return
                        if pong_due is not None and time.monotonic() > pong_due:
                            raise RedisTimeoutError("Redis did not answer a PING on the events connection")
                        conn.send_command("PING", check_health=False)
                    pong_due = time.monotonic() + PING_INTERVAL
                    continue
                reply = conn.read_response()
                pong_due = None
                self._dispatch(conn, reply)
        except BaseException as error:  # a GreenletExit too: no connection may stay without its listener
            with self._lock:
                if self._conn is conn:
                    self._broken(error if isinstance(error, (RedisConnectionError, RedisTimeoutError))
                                 else RedisConnectionError(f"the events connection broke: {error!r}"))
            if not isinstance(error, Exception):
                raise
        finally:
            if self._conn is not conn:
                conn.disconnect()  # a read after another thread dropped it may have opened it again

    def _dispatch(self, conn, reply) -> None:
        kind = reply[0]
        with self._lock:
            if self._conn is not conn:
                return
            if kind == b"message":
                entry = self._channels.get(reply[1])
                if entry is not None:
                    try:
                        event = json.loads(reply[2])
                    except ValueError:
                        return  # not one of ours (`_events.publish` writes JSON): nothing to relay
                    at = time.monotonic()
                    for follower in entry.followers:
                        follower._deliver(event, at)
            elif kind == b"subscribe":
                waiting = self._unconfirmed.get(reply[1])
                if waiting:
                    waiting.popleft().set()
                    if not waiting:
                        del self._unconfirmed[reply[1]]
            # "unsubscribe" and "pong" need nothing more


_hubs: "weakref.WeakKeyDictionary[Redis, _Hub]" = weakref.WeakKeyDictionary()
_hubs_lock = threading.Lock()


def _hub(connection: Redis) -> _Hub:
    with _hubs_lock:
        hub = _hubs.get(connection)
        if hub is None:
            hub = _hubs[connection] = _Hub(connection)
        return hub
