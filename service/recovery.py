"""Finding jobs whose worker is gone, and putting them back.

Usable by any worker class (or any process with a Redis connection): nothing
here depends on how jobs are run, only on the records RQ and
`service.dequeue` keep in Redis.

A job can be stranded in four places:

- a dead worker's *dequeued list* (it crashed between taking the job and
  registering it as started): the job never ran, so it goes back to the front
  of its queue as it is;
- a *started registry*, with an execution whose heartbeat stopped (the whole
  worker died: SIGKILL, OOM kill, lost machine): it is requeued at the front
  of its queue, marked interrupted, unless it has already lost its worker
  `JOB_MAX_ABANDONS` times; then it fails with `AbandonedJobError`, so a job
  that kills its worker cannot loop forever;
- RQ's own *intermediate queue* (a plain `rq worker` on one queue, crashed
  after BLMOVE): back to the front of its queue;
- RQ's *ready registry*, where a finished job's dependents wait between the
  transaction that records its success and their enqueue just after (its
  worker died, or lost Redis, in between): queued.

Heartbeats carry the time on the clock of the host that wrote them, and a
sweep reads them against its own: a sweeper whose clock is off from Redis's by
more than half the slack between a heartbeat and ORPHAN_TIMEOUT would take
live workers' jobs from them (or leave dead ones' stranded), so it does not
sweep, and says so, until its clock is right again.

A worker that stops on SIGTERM calls `requeue` itself for the job it could not
finish in time. Every move is one Redis transaction that re-checks, under
WATCH, that the job is still where it was seen, so two sweepers (or a sweeper
and a worker that was only slow) never put a job on a queue twice.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

from redis import Redis
from redis.exceptions import WatchError
from rq.executions import Execution, ExecutionRegistry
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.rate_limit import release_slot
from rq.registry import StartedJobRegistry
from rq.results import Result
from rq.utils import as_text, parse_composite_key

from . import dequeue, heartbeats, logs, metrics
from .settings import Settings

log = logging.getLogger("service.recovery")

#: Set only by the sweeper that runs, so workers sweep in turn, not all at once.
SWEEP_LOCK_KEY = "rq:svc:recovery:lock"

#: Why a job went back to its queue.
SHUTDOWN = "shutdown"
ABANDONED = "abandoned"
UNRECORDED = "unrecorded"
STRAY_STOP = "stray_stop"


@dataclass
class SweepReport:
    #: Jobs returned from dead workers' dequeued lists.
    dequeued: list[str] = field(default_factory=list)
    #: Running jobs of dead workers, requeued.
    requeued: list[str] = field(default_factory=list)
    #: Running jobs of dead workers that had lost their worker too often.
    failed: list[str] = field(default_factory=list)
    #: Jobs returned from RQ's intermediate queues.
    intermediate: list[str] = field(default_factory=list)
    #: Dependents left in RQ's ready registries, queued.
    ready: list[str] = field(default_factory=list)
    skipped: bool = False
    #: Set when this host's clock was too far from Redis's to sweep: by how many seconds.
    clock_off: float | None = None

    def __bool__(self) -> bool:
        return bool(self.dequeued or self.requeued or self.failed or self.intermediate or self.ready)


def requeue(
    job: Job,
    *,
    reason: str,
    kind: str,
    worker_name: str = "",
    execution: Execution | None = None,
    max_abandons: int = 3,
    still_stranded=None,
) -> str:
    """Put a job that was running (or about to) back at the front of its queue.

    Records why in `job.meta["interrupted"]` (`count`, `abandoned`, `at`,
    `reason`, `worker`) and as a RETRIED entry in the job's results, removes
    the `execution`, and leaves retries untouched: the job did not fail. A job
    whose worker died (`kind=ABANDONED`) more than `max_abandons` times fails
    instead. `still_stranded(pipe)` is re-checked under WATCH.

    Returns "requeued", "failed" or "skipped" (the job had moved on meanwhile).
    """
    connection = job.connection
    watched = [job.key] + ([execution.key] if execution is not None else [])
    registry_key = StartedJobRegistry(job.origin, connection=connection).key
    # The record of this interruption once a transaction writing it was sent. When
    # its reply is lost, redis-py reports a WatchError and the loop comes round
    # again: finding this record on the job, it knows the move was its own.
    sent = None
    with connection.pipeline() as pipe:
        while True:
            try:
                pipe.watch(*watched)
                if sent is not None and _loads_meta(job, pipe.hget(job.key, "meta")).get("interrupted") == sent:
                    pipe.unwatch()
                    break
                if still_stranded is not None and not still_stranded(pipe):
                    pipe.unwatch()
                    return "skipped"
                # Its execution leaves the started registry with the requeue, so a
                # job another process requeued meanwhile is not requeued again.
                if execution is not None and pipe.zscore(registry_key, execution.composite_key) is None:
                    pipe.unwatch()
                    return "skipped"
                raw_status, raw_meta = pipe.hmget(job.key, "status", "meta")
                status = as_text(raw_status) if raw_status else None
                if status not in (JobStatus.STARTED.value, JobStatus.QUEUED.value):
                    # Finished, failed, canceled or deleted meanwhile: only the
                    # execution record is left to clear.
                    pipe.multi()
                    if execution is not None:
                        execution.delete(job=job, pipeline=pipe)
                    pipe.execute()
                    return "skipped"
                meta = _loads_meta(job, raw_meta)
                previous = meta.get("interrupted") or {}
                ran = status == JobStatus.STARTED.value
                abandoned = int(previous.get("abandoned", 0)) + (1 if kind == ABANDONED and ran else 0)
                now = datetime.now(timezone.utc)
                meta["interrupted"] = {
                    "count": int(previous.get("count", 0)) + 1,
                    "abandoned": abandoned,
                    "at": now.isoformat().replace("+00:00", "Z"),
                    "reason": reason,
                    "worker": worker_name,
                }
                give_up = kind == ABANDONED and abandoned > max_abandons
                pipe.multi()
                if execution is not None:
                    execution.delete(job=job, pipeline=pipe)
                pipe.hset(job.key, "meta", job.serializer.dumps(meta))
                execution_times = dict(
                    execution_id=execution.id if execution else None,
                    execution_started_at=execution.created_at if execution else None,
                    execution_ended_at=now,
                )
                if give_up:
                    exc_string = (
                        f"AbandonedJobError: the worker running this job stopped {abandoned} times "
                        f"(last: {reason}); it is not run again."
                    )
                    job.meta = meta
                    job.set_status(JobStatus.FAILED, pipeline=pipe)
                    pipe.hset(job.key, "ended_at", now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
                    job._handle_failure(exc_string, pipe, worker_name=worker_name, **execution_times)
                else:
                    pipe.hset(job.key, "status", JobStatus.QUEUED.value)
                    pipe.hdel(job.key, "started_at", "worker_name")
                    pipe.lpush(Queue.redis_queue_namespace_prefix + job.origin, job.id)
                    Result.create(
                        job,
                        Result.Type.RETRIED,
                        job.failure_ttl,
                        exc_string=f"Interrupted and requeued: {reason}",
                        worker_name=worker_name,
                        pipeline=pipe,
                        **execution_times,
                    )
                sent = meta["interrupted"]
                pipe.execute()
                break
            except WatchError:
                continue
    outcome = "failed" if give_up else "requeued"
    fields = logs.job_fields(job)
    if give_up:
        metrics.record_failed(connection, fields["job"])
        logs.event(log, "job.failed", level=logging.WARNING, **fields, reason=exc_string)
        try:
            release_slot(job)  # its concurrency slot, as RQ's own failure paths do
        except Exception:
            log.exception("could not release the concurrency slot of %s", job.id)
        try:
            Queue(job.origin, connection=connection, job_class=type(job), serializer=job.serializer).enqueue_dependents(job)
        except Exception:
            log.exception("could not enqueue the dependents of %s", job.id)
    else:
        metrics.record_requeued(connection, fields["job"], kind)
        logs.event(
            log, "job.requeued", level=logging.WARNING, **fields, reason=reason, kind=kind,
            interruptions=meta["interrupted"]["count"],
        )
    return outcome


def _loads_meta(job: Job, raw) -> dict:
    if not raw:
        return {}
    try:
        meta = job.serializer.loads(raw)
    except Exception:
        return {}
    return meta if isinstance(meta, dict) else {}


class Recovery:
    """Sweeps for stranded jobs; `sweep()` is cheap enough to call every few seconds."""

    def __init__(self, connection: Redis, settings: Settings, *, job_class: type[Job], queue_class: type[Queue],
                 clock: Callable[[], float] = time.time):
        self.connection = connection
        self.settings = settings
        self.job_class = job_class
        self.queue_class = queue_class
        self._clock = clock
        self._last_outage = 0.0
        self._clock_warned = float("-inf")

    def note_outage(self) -> None:
        """This process just lost Redis: heartbeats written meanwhile may be missing."""
        self._last_outage = time.monotonic()

    def sweep(self, *, force: bool = False) -> SweepReport:
        """Recover what dead workers left behind.

        Skipped while heartbeats cannot be trusted yet (Redis restarted, or this
        process lost it, less than ORPHAN_TIMEOUT ago: live workers have not had
        the chance to beat again), and while another process holds the sweep
        lock (one sweep every RECOVERY_INTERVAL is enough), unless `force`.
        """
        report = SweepReport()
        off = self._clock_off()
        if off is not None:
            report.skipped, report.clock_off = True, off
            return report
        if not force and not self._heartbeats_trustworthy():
            report.skipped = True
            return report
        if not force:
            lock_ms = max(1, int(self.settings.recovery_interval * 1000 * 0.9))
            if not self.connection.set(SWEEP_LOCK_KEY, "1", nx=True, px=lock_ms):
                report.skipped = True
                return report
        self._recover_dequeued(report)
        queues = self._queues()
        for queue in queues:
            self._recover_started(queue, report)
            self._recover_intermediate(queue, report)
        report.ready.extend(self.enqueue_ready(queues))
        if report:
            logs.event(
                log, "recovery.swept", level=logging.WARNING,
                dequeued=len(report.dequeued), requeued=len(report.requeued),
                failed=len(report.failed), intermediate=len(report.intermediate), ready=len(report.ready),
            )
        return report

    def enqueue_ready(self, queues: list[Queue] | None = None) -> list[str]:
        """Queue the dependents left in RQ's ready registries; their ids.

        RQ moves a finished job's dependents there in the transaction that
        records its success, and queues them just after: a worker that died, or
        lost Redis, in between leaves them there until RQ's maintenance (10
        minutes). RQ's `enqueue_jobs` queues each under WATCH, at most once,
        whoever else drains the registry meanwhile.
        """
        # RQ's `cleanup` of that registry is exactly this drain.
        return [job.id for queue in (queues if queues is not None else self._queues())
                for job in queue.ready_job_registry.cleanup()]

    def _clock_off(self) -> float | None:
        """How far this host's clock is from Redis's, when too far to judge heartbeats by."""
        # A live worker's beat is at most WORKER_HEARTBEAT_INTERVAL old; its
        # writer and this sweeper may each be off by up to the bound, in
        # opposite directions, and the beat must still look younger than ORPHAN_TIMEOUT.
        bound = (self.settings.orphan_timeout - self.settings.worker_heartbeat_interval) / 2
        seconds, micros = self.connection.time()
        off = self._clock() - (seconds + micros / 1_000_000)
        if abs(off) <= bound:
            return None
        if time.monotonic() - self._clock_warned >= 60:  # once a minute, not every sweep
            self._clock_warned = time.monotonic()
            logs.event(log, "recovery.clock_off", level=logging.ERROR, seconds=round(off, 1), bound=bound,
                       reason="this host's clock is too far from Redis's to judge heartbeats: not sweeping")
        return off

    def _heartbeats_trustworthy(self) -> bool:
        horizon = self.settings.orphan_timeout
        if self._last_outage and time.monotonic() - self._last_outage < horizon:
            return False
        return int(self.connection.info("server").get("uptime_in_seconds", horizon)) >= horizon

    def _queues(self) -> list[Queue]:
        names = set(self.settings.queues)
        prefix = Queue.redis_queue_namespace_prefix
        names.update(as_text(key)[len(prefix):] for key in self.connection.smembers(Queue.redis_queues_keys))
        return [self.queue_class(name, connection=self.connection) for name in sorted(names)]

    # -- dequeued lists -------------------------------------------------------
    def _recover_dequeued(self, report: SweepReport) -> None:
        names = dequeue.dequeuers(self.connection)
        if not names:
            return
        now = datetime.fromtimestamp(self._clock(), timezone.utc)
        for beat in heartbeats.worker_beats(self.connection, names, now=now):
            if beat.fresh(self.settings.orphan_timeout):
                continue
            held = dequeue.Dequeuer(self.connection, beat.name).held()
            if dequeue.give_back(self.connection, beat.name):
                report.dequeued.extend(held)
                for job_id in held:
                    logs.event(log, "job.recovered", level=logging.WARNING, job_id=job_id, worker=beat.name,
                               reason="its worker died after taking it, before starting it")

    # -- started registries ---------------------------------------------------
    def _recover_started(self, queue: Queue, report: SweepReport) -> None:
        registry = StartedJobRegistry(queue.name, connection=self.connection, job_class=self.job_class)
        entries = [as_text(entry) for entry in self.connection.zrange(registry.key, 0, -1)]
        if not entries:
            return
        stale = []
        with self.connection.pipeline(transaction=False) as pipe:
            for entry in entries:
                job_id, execution_id = parse_composite_key(entry)
                pipe.hmget(Execution(execution_id, job_id, self.connection).key, "last_heartbeat", "worker_name")
            rows = pipe.execute()
        now = self._clock()
        for entry, (beat, worker_name) in zip(entries, rows):
            if beat is None or now - float(beat) > self.settings.orphan_timeout:
                stale.append((entry, as_text(worker_name) if worker_name else ""))
        for entry, worker_name in stale:
            job_id, execution_id = parse_composite_key(entry)
            execution = Execution(execution_id, job_id, self.connection, worker_name=worker_name)
            try:
                job = self.job_class.fetch(job_id, connection=self.connection)
            except Exception:
                # Gone (expired, deleted) or unreadable: nothing left to run, and
                # nothing of its execution to keep (the job's set of executions
                # has no TTL of its own).
                with self.connection.pipeline() as pipe:
                    pipe.zrem(registry.key, entry)
                    pipe.delete(execution.key, ExecutionRegistry(job_id, connection=self.connection).key)
                    if worker_name:
                        pipe.srem(execution.worker_executions_key, execution.composite_key)
                    pipe.execute()
                continue
            outcome = requeue(
                job,
                reason=f"worker {worker_name or '?'} stopped sending heartbeats (killed or lost) while running it",
                kind=ABANDONED,
                worker_name=worker_name,
                execution=execution,
                max_abandons=self.settings.job_max_abandons,
                still_stranded=self._still_stale(execution),
            )
            if outcome == "requeued":
                report.requeued.append(job_id)
            elif outcome == "failed":
                report.failed.append(job_id)

    def _still_stale(self, execution: Execution):
        # Whether it is still in the started registry, `requeue` checks itself.
        def check(pipe) -> bool:
            beat = pipe.hget(execution.key, "last_heartbeat")
            return beat is None or self._clock() - float(beat) > self.settings.orphan_timeout

        return check

    # -- RQ's intermediate queues ---------------------------------------------
    def _recover_intermediate(self, queue: Queue, report: SweepReport) -> None:
        intermediate = queue.intermediate_queue
        job_ids = intermediate.get_job_ids()
        if not job_ids:
            return
        started = set(queue.started_job_registry.get_job_ids(cleanup=False))
        give = self.connection.register_script(dequeue._GIVE_BACK)
        for job_id in job_ids:
            if job_id in started:
                continue
            if intermediate.set_first_seen(job_id):
                continue  # seen for the first time: give its worker the chance to register it
            first_seen = intermediate.get_first_seen(job_id)
            if first_seen and self._clock() - first_seen.timestamp() < self.settings.orphan_timeout:
                continue
            if give(keys=[intermediate.key, Job.key_for(job_id), queue.key], args=[job_id]) == 1:
                report.intermediate.append(job_id)
                logs.event(log, "job.recovered", level=logging.WARNING, job_id=job_id, queue=queue.name,
                           reason="stuck in RQ's intermediate queue")
