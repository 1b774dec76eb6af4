"""Who is alive: workers and schedulers, read from the heartbeats they already write.

An RQ worker keeps `last_heartbeat` in its hash `rq:worker:<name>` (a worker of
this service refreshes it every WORKER_HEARTBEAT_INTERVAL, idle or busy);
rq-scheduler keeps its hash `rq:scheduler_instance:<name>` alive with a TTL of
its interval + 10 s. Ages are measured with this machine's clock.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from redis import Redis
from rq.utils import as_text, utcparse
from rq.worker import Worker
from rq.worker_registration import REDIS_WORKER_KEYS

SCHEDULER_INSTANCE_PATTERN = "rq:scheduler_instance:*"


@dataclass(frozen=True)
class Beat:
    name: str
    #: Seconds since the last heartbeat; None when there never was one.
    age: float | None
    #: The process said it stopped.
    dead: bool
    state: str = ""

    def fresh(self, max_age: float) -> bool:
        return not self.dead and self.age is not None and self.age <= max_age


def worker_key(name: str) -> str:
    return Worker.redis_worker_namespace_prefix + name


def _age(raw: bytes | None, now: datetime) -> float | None:
    if not raw:
        return None
    try:
        return max(0.0, (now - utcparse(as_text(raw))).total_seconds())
    except ValueError:
        return None


def worker_beats(connection: Redis, names: list[str] | None = None, *, now: datetime | None = None) -> list[Beat]:
    """The heartbeat of each registered worker (or of the workers `names`), aged as of `now`."""
    if names is None:
        prefix = Worker.redis_worker_namespace_prefix
        names = [as_text(key)[len(prefix):] for key in connection.smembers(REDIS_WORKER_KEYS)]
    with connection.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.hmget(worker_key(name), "last_heartbeat", "death", "state")
        rows = pipe.execute()
    now = now or datetime.now(timezone.utc)
    return [
        Beat(name=name, age=_age(beat, now), dead=death is not None, state=as_text(state) if state else "")
        for name, (beat, death, state) in zip(names, rows)
    ]


def worker_alive(connection: Redis, name: str, max_age: float) -> bool:
    return worker_beats(connection, [name])[0].fresh(max_age)


class SchedulerBeats:
    """rq-scheduler instances, found once by SCAN and then checked by name.

    rq-scheduler keeps no index of its instances, so finding one means scanning
    the keyspace; a web process remembers what it found and scans again only
    when none of those is alive any more.
    """

    def __init__(self) -> None:
        self._known: set[str] = set()

    def beats(self, connection: Redis) -> list[Beat]:
        beats = self._check(connection, self._known)
        if not any(beat.fresh(float("inf")) for beat in beats):
            self._known = {as_text(key) for key in connection.scan_iter(match=SCHEDULER_INSTANCE_PATTERN, count=1000)}
            beats = self._check(connection, self._known)
        self._known = {f"rq:scheduler_instance:{beat.name}" for beat in beats if not beat.dead}
        return beats

    @staticmethod
    def _check(connection: Redis, keys: set[str]) -> list[Beat]:
        keys = sorted(keys)
        with connection.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hexists(key, "death")
                pipe.ttl(key)
            rows = pipe.execute()
        beats = []
        for index, key in enumerate(keys):
            dead, ttl = rows[2 * index], rows[2 * index + 1]
            if ttl == -2:  # gone
                continue
            name = key.split(":", 2)[2]
            # The TTL is renewed to interval + 10 s at each heartbeat; a live key is fresh.
            beats.append(Beat(name=name, age=None if ttl < 0 else 0.0, dead=bool(dead)))
        return beats
