"""Reads that many requests need at the same moment, made once.

When a job's status changes, every client following it (a long poll, an event
stream) reads the job again at once. Under gevent nothing staggers them: a
thousand browsers on one job would check out a thousand Redis connections, at
the same moment, for one read. Here a read joins one of the same key already
under way, provided that one started after what the caller must see (`since`,
when its event reached it): an older read might predate the change.
"""
from __future__ import annotations

import copy
import threading
import time
from typing import Any, Callable, Hashable

from redis.exceptions import ConnectionError as RedisConnectionError


def own_copy(error: BaseException) -> BaseException:
    """An error that ended something several callers wait for, for one of them
    to raise: each its own, as a raise adds the raiser's frames to it."""
    try:
        mine = copy.copy(error)
    except Exception:  # a class that cannot be built again from its args
        mine = RedisConnectionError(str(error))
    mine.__cause__ = error.__cause__
    return mine


class _Flight:
    def __init__(self, started: float) -> None:
        self.started = started
        self.done = threading.Event()
        self.value: Any = None
        self.error: Exception | None = None
        #: Its reader was interrupted (GreenletExit, a gevent Timeout): no outcome to share.
        self.interrupted = True


class SharedReads:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._flights: dict[Hashable, _Flight] = {}

    def read(self, key: Hashable, read: Callable[[], Any], since: float) -> Any:
        """`read()`'s value, or that of a read of `key` under way that started after `since`.

        Its value is shared, not copied: callers must not change it."""
        while True:
            with self._lock:
                flight = self._flights.get(key)
                mine = flight is None or flight.started <= since  # one as old as the event may predate it
                if mine:
                    flight = self._flights[key] = _Flight(self._clock())
            if mine:
                try:
                    flight.value = read()
                    flight.interrupted = False
                except Exception as error:
                    flight.error, flight.interrupted = error, False
                    raise
                finally:
                    with self._lock:
                        if self._flights.get(key) is flight:
                            del self._flights[key]
                    flight.done.set()
                return flight.value
            flight.done.wait()
            if flight.interrupted:
                continue  # read it ourselves
            if flight.error is not None:
                raise own_copy(flight.error)
            return flight.value
