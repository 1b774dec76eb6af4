"""What every process checks about Redis: that it is reachable, and that it keeps jobs.

A Redis whose `maxmemory-policy` is anything but `noeviction` deletes keys when
it is full: queued jobs, running jobs' heartbeats, results. Processes refuse to
run on one unless `REDIS_ALLOW_EVICTION` says otherwise. When Redis is down,
processes wait for it instead of exiting.
"""
from __future__ import annotations

import logging
import re
import time
from typing import Callable

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, ReadOnlyError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import logs
from .settings import Settings

log = logging.getLogger("service.redis")

#: Errors that mean "Redis is unreachable right now" (including a server still
#: loading its data after a restart), as opposed to a refused command.
OUTAGE_ERRORS: tuple[type[Exception], ...] = (RedisConnectionError, RedisTimeoutError)

#: Refusals of a write that say "not now" rather than "never": Redis is full,
#: a replica, loading, failing over, or cannot persist.
# EXECABORT: a transaction Redis discarded, as it does when a command in it met OOM.
_TRANSIENT_REPLIES = ("OOM", "EXECABORT", "READONLY", "LOADING", "MASTERDOWN", "MISCONF", "NOREPLICAS", "BUSY", "TRYAGAIN")
_TRANSIENT_PATTERN = re.compile(r"(?:^|[\s-])(?:" + "|".join(_TRANSIENT_REPLIES) + r")\b")


def transient(error: RedisError) -> bool:
    """Whether the same command may succeed later: Redis is unreachable, or refuses writes for now."""
    if isinstance(error, (*OUTAGE_ERRORS, OutOfMemoryError, ReadOnlyError)):
        return True
    # The code may come first, or inside a script's error ("... -OOM command not allowed").
    return isinstance(error, ResponseError) and bool(_TRANSIENT_PATTERN.search(str(error)))


#: The only policy under which Redis never deletes a key to make room.
SAFE_EVICTION_POLICY = "noeviction"


class UnsafeRedis(SystemExit):
    """Redis is configured so that it may delete jobs; the message says how to fix it."""


def eviction_policy(connection: Redis) -> str | None:
    """The server's `maxmemory-policy`, from INFO (CONFIG is often disabled on hosted Redis)."""
    info = connection.info("memory")
    policy = info.get("maxmemory_policy")
    if policy is None:
        try:
            policy = connection.config_get("maxmemory-policy").get("maxmemory-policy")
        except RedisError:
            return None
    return policy


def describe(connection: Redis) -> str:
    kwargs = connection.connection_pool.connection_kwargs
    if kwargs.get("path"):
        return f"unix:{kwargs['path']}"
    return f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"


def check_eviction_policy(connection: Redis, settings: Settings) -> str | None:
    """Return the policy if it is safe (or allowed); raise UnsafeRedis otherwise.

    Raises OUTAGE_ERRORS when Redis cannot be asked.
    """
    policy = eviction_policy(connection)
    if policy == SAFE_EVICTION_POLICY:
        return policy
    if settings.redis_allow_eviction:
        logs.event(log, "redis.unsafe_eviction_policy_allowed", level=logging.WARNING, policy=policy)
        return policy
    raise UnsafeRedis(
        f"Refusing to run: Redis at {describe(connection)} has maxmemory-policy={policy or 'unknown'}, "
        "so it deletes keys when its memory is full, queued jobs among them. "
        f"Set maxmemory-policy to {SAFE_EVICTION_POLICY} (redis.conf, CONFIG SET, or on Heroku "
        f"`heroku redis:maxmemory --policy {SAFE_EVICTION_POLICY}`), "
        "or set REDIS_ALLOW_EVICTION=1 to run anyway and risk losing jobs."
    )


def wait_until_reachable(
    connection: Redis,
    *,
    max_delay: float = 2.0,
    should_stop: Callable[[], bool] = lambda: False,
) -> bool:
    """Block until Redis answers PING (True), or `should_stop()` (False).

    Retries at most every `max_delay` seconds, so a process notices within that
    long that Redis is back.
    """
    delay, reported = 0.1, False
    while not should_stop():
        try:
            connection.ping()
            if reported:
                logs.event(log, "redis.reachable")
            return True
        except OUTAGE_ERRORS as error:
            if not reported:
                logs.event(log, "redis.unreachable", level=logging.WARNING, error=str(error))
                reported = True
        _sleep(delay, should_stop)
        delay = min(delay * 2, max_delay)
    return False


def startup(connection: Redis, settings: Settings) -> None:
    """What a worker or scheduler does before anything else: wait for Redis, check its policy."""
    wait_until_reachable(connection)
    while True:
        try:
            policy = check_eviction_policy(connection, settings)
            logs.event(log, "redis.checked", redis=describe(connection), policy=policy)
            return
        except OUTAGE_ERRORS:
            wait_until_reachable(connection)


def keep_running(run: Callable[[], object], connection: Redis) -> None:
    """Call `run()` until it returns; when Redis drops out from under it, wait and call it again.

    For loops (rq-scheduler's) that end on the first Redis error: the process
    stays up and resumes within a couple of seconds of Redis's return.
    SystemExit and KeyboardInterrupt (a requested stop) pass through.
    """
    while True:
        try:
            run()
            return
        except OUTAGE_ERRORS as error:
            logs.event(log, "redis.lost", level=logging.WARNING, error=str(error))
            wait_until_reachable(connection)


def _sleep(seconds: float, should_stop: Callable[[], bool]) -> None:
    deadline = time.monotonic() + seconds
    while not should_stop() and time.monotonic() < deadline:
        time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
