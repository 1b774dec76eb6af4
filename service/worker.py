"""The worker: an RQ worker, made so that no job is lost, running jobs in an executor.

`ReliableWorker` keeps RQ's records (JSON jobs, executions, registries,
results, retries, RQ's scheduler), so the dashboard, `rq info` and plain RQ
clients see what they expect, and changes how jobs are run:

- the worker process is a supervisor: it forks one long-lived executor
  (`service.executor`) that takes and runs job after job in-process, and never
  runs job code itself. It heartbeats for both every WORKER_HEARTBEAT_INTERVAL,
  answers RQ's commands (stop a job), sweeps for jobs of dead workers every
  RECOVERY_INTERVAL (`service.recovery`) and watches the executor: a job that
  kills it, outgrows WORKER_MAX_MEMORY_MB or ignores its timeout fails with the
  reason, and a fresh executor takes over;
- jobs are taken with `service.dequeue` (an atomic move into the worker's own
  list), not BLPOP, and registered as started in the same script that takes
  them out of that list; RQ's records for the start and the success are each
  written in one round trip (`service.scripted`);
- on SIGTERM (Heroku: to every process, SIGKILL 30 s later) it takes no new
  job, lets the running one finish for up to SHUTDOWN_GRACE seconds, then stops
  it and puts it back at the front of its queue, marked interrupted, not failed;
- Redis errors never end the process: it waits for Redis and carries on;
- it counts and times jobs for /metrics and logs one JSON event a step.

`run(settings)` is the process: startup checks, the work loop, reconnecting.
"""
from __future__ import annotations

import contextlib
import gc
import logging
import os
import resource
import select
import signal
import sys
import threading
import time

import psutil
from redis import Redis
from redis.exceptions import RedisError
from rq.exceptions import NoSuchJobError, StopRequested
from rq.executions import Execution, ExecutionRegistry
from rq.job import JobStatus
from rq.rate_limit import release_slot
from rq.suspension import is_suspended
from rq.registry import FailedJobRegistry
from rq.results import Result
from rq.serializers import JSONSerializer
from rq.utils import as_text, now
from rq.worker import WorkerStatus
from rq.worker.base import signal_name

from . import events, executor, logs, metrics, recovery, redis_checks, scripted
from .connection import connect
from .dequeue import NOT_RUNNABLE, Dequeuer, Taken
from .job_view import exception_line
from .queues import ServiceJob, ServiceQueue
from .worker_scheduler import LOCK_RETRY, PromptRQScheduler
from .workers import ServiceWorker
from .settings import Settings

log = logging.getLogger("service.worker")

EXIT_UNRECORDED = executor.EXIT_UNRECORDED

# Defines written(results, execution_id): whether the newest entry of a job's
# results stream is this execution's success (RQ's Result.Type.SUCCESSFUL).
_WRITTEN = """
local function written(results, execution_id)
    local newest = redis.call('XREVRANGE', results, '+', '-', 'COUNT', 1)[1]
    if not newest then
        return false
    end
    local fields, found = newest[2], {}
    for i = 1, #fields, 2 do
        found[fields[i]] = fields[i + 1]
    end
    return found['type'] == '1' and found['execution_id'] == execution_id
end
"""

# KEYS: the job's dependents set, its execution, its results; ARGV: the
# execution's id, then RQ's writes for the job's success (`scripted`), the
# execution's deletion left out. Written only if no job depends on this one
# (RQ's WATCH case). A call the client sent again after a broken connection
# lost its reply finds the execution gone and its own success the newest
# result: it ran already, and must not store a second. (An execution gone
# without that result was a sweep's, which requeued a job that was only slow:
# its success is written, as before.)
_SUCCEED = scripted.RUN + _WRITTEN + """
if redis.call('SCARD', KEYS[1]) > 0 then
    return 0
end
if redis.call('DEL', KEYS[2]) == 0 and written(KEYS[3], ARGV[1]) then
    return 1
end
run(redis.call, 2)
return 1
"""

#: Marks of runs whose end is recorded (`_recorded_once`), by job and execution.
_ENDED_PREFIX = "rq:svc:ended:"


def _end_mark(job, execution) -> str:
    return f"{_ENDED_PREFIX}{job.id}:{execution.id}"

#: Seconds between two looks of the supervisor at its executor (memory, timeout, heartbeat due).
_TICK = 1.0


class _SuccessWritten(Exception):
    """RQ's success transaction found the job's success written already."""


def _success_written(job, execution_id: str) -> bool:
    """Whether this run's success is in Redis already, written by a try whose
    reply was lost: the job's newest result is it (the success script's test,
    `_WRITTEN`), or the job is gone (`result_ttl` 0 deletes it). Not its status:
    a success callback's `job.save()` writes `finished` before the success is."""
    newest = Result.fetch_latest(job, serializer=job.serializer)
    if newest is not None and newest.type == Result.Type.SUCCESSFUL and newest.execution_id == execution_id:
        return True
    return not job.connection.exists(job.key)


class _RecordedOnce:
    """A job's queue as RQ's success transaction (jobs with dependents, `result_ttl`
    0, repeats) uses it, and the transaction's first read under WATCH.

    When the reply to its EXEC is lost, redis-py reports a WatchError and RQ
    runs the transaction again, which would store a second result and count the
    run twice. Each try after the first now stops with `_SuccessWritten` if the
    success is written already.
    """

    def __init__(self, queue, execution):
        self._queue = queue
        self._execution_id = execution.id
        self._tries = 0

    def __getattr__(self, name):
        return getattr(self._queue, name)

    def move_dependents_to_ready(self, job, pipeline=None, **kwargs):
        self._tries += 1
        if pipeline is not None and self._tries > 1 and _success_written(job, self._execution_id):
            raise _SuccessWritten(job.id)
        return self._queue.move_dependents_to_ready(job, pipeline=pipeline, **kwargs)


class ReconnectingRQScheduler(PromptRQScheduler):
    """RQ's scheduler (retries with backoff, enqueue_at), resuming after a Redis outage."""

    def work(self):
        while True:
            try:
                super().work()
                return
            except RedisError as error:  # gone, or full: try again a little later
                self.log.warning("scheduler: Redis error (%s); trying again", error)
                self._connection = None
                time.sleep(1)
                if not redis_checks.wait_until_reachable(self.connection, should_stop=lambda: self._stop_requested):
                    return


class ReliableWorker(ServiceWorker):
    """A supervisor of one executor: takes jobs atomically, recovers others', stops without losing one."""

    #: RQ's scheduler for retries and jobs given a time, outliving a Redis outage.
    scheduler_class = ReconnectingRQScheduler

    def __init__(self, queues, *, settings: Settings, **kwargs):
        # Read by RQ's __init__ (connection_timeout), so set first.
        self.settings = settings
        self._main_pid = os.getpid()
        self._interrupted_job_id: str | None = None
        self._horse_status: int | None = None
        self._last_trouble: tuple[str, float] = ("", 0.0)
        self._stop_reason = ""
        self._current: executor.CurrentJob | None = None
        self._running_cache = None
        self._queues_by_name: dict[str, ServiceQueue] = {}
        self._kill_reason = ""
        #: (job id, looks in a row) the executor was over WORKER_MAX_MEMORY_MB at.
        self._over_memory: tuple[str, int] = ("", 0)
        self._last_beat = 0.0
        self._next_sweep = 0.0
        self._next_lock_try = 0.0
        self._burst = False
        kwargs.setdefault("job_monitoring_interval", max(1, int(settings.worker_heartbeat_interval)))
        super().__init__(queues, **kwargs)
        self.dequeuer = Dequeuer(self.connection, self.name)
        self._succeed = scripted.PackedScript(self.connection, _SUCCEED)
        self._once = scripted.PackedScript(self.connection, scripted.ONCE)
        #: Finished jobs counted for /metrics, not yet written.
        self.finished = metrics.FinishedTally()
        self.recovery = recovery.Recovery(
            self.connection, settings, job_class=self.job_class, queue_class=self.queue_class
        )

    # -- timing ---------------------------------------------------------------
    @property
    def connection_timeout(self) -> int:
        # RQ raises the socket timeout to this for its 405 s BLPOP; ours block
        # for DEQUEUE_POLL_INTERVAL at most, so a dead Redis is noticed soon.
        block = max(self.settings.dequeue_poll_interval, self.settings.worker_heartbeat_interval)
        return int(block + self.settings.redis_timeout + 5)

    def get_heartbeat_ttl(self, job, working_time: float = 0.0) -> int:
        # Longer than ORPHAN_TIMEOUT, so that RQ's own cleanup of the started
        # registry never acts before `service.recovery` has.
        return int(self.job_monitoring_interval + self.settings.orphan_timeout + 60)

    def _block_seconds(self) -> float:
        if len(self._ordered_queues) == 1:
            return float(self.settings.worker_heartbeat_interval)
        return self.settings.dequeue_poll_interval

    def serialize(self) -> dict:
        # RQ writes the state just after registering the worker: in between, a
        # reader (the dashboard, GET /workers) would find a worker without one.
        return {**super().serialize(), "state": self._state}

    # -- supervising the executor ----------------------------------------------
    def work(self, burst: bool = False, logging_level: str | None = None, with_scheduler: bool = False, **_) -> bool:
        """Run jobs (in an executor, `service.executor`) until stopped or, with `burst`, until the queues are empty."""
        self._state = WorkerStatus.STARTED  # written with the birth (`serialize`), not a moment after
        # Before anything is registered or forked: a SIGTERM while starting
        # stops this worker as any other, its scheduler process with it, not
        # at once by default and leaving that process behind.
        self._install_signal_handlers()
        worked = False
        try:
            # No level: RQ would reset its loggers to it (`service.logs` keeps them at WARNING).
            self.bootstrap(logging_level)
            self._burst = burst
            if with_scheduler:
                self._start_scheduler(burst, logging_level)
            while not self._stop_requested:
                self.check_for_suspension(burst)
                if self._stop_requested:
                    break
                code, worked_now = self._run_executor(burst)
                worked = worked or worked_now
                if burst and code in (executor.EXIT_DONE, executor.EXIT_SUSPENDED):
                    break
        except StopRequested:
            pass
        finally:
            self.teardown()
        return worked

    def _run_executor(self, burst: bool) -> tuple[int, bool]:
        """Fork an executor, heartbeat for it until it exits, settle the job it left; its exit code."""
        current = executor.CurrentJob()
        # A new executor counts its runs from 0 again: a job it runs must not be
        # taken for the same run of that job under the last executor (a retry),
        # whose execution the supervisor would go on heartbeating instead.
        self._running_cache = None
        exited_r, exited_w = os.pipe()  # EOF on `exited_r` when the executor is gone
        # What exists now (RQ, the job modules) lives as long as the executor: out of
        # the collector's sight, its pages stay shared instead of being copied when a
        # collection touches them, and no collection pauses a job to walk them.
        gc.freeze()
        # SIGTERM waits, in both processes, until each knows what to do with it:
        # the supervisor must know the executor's pid to pass it on, and the
        # executor must have its own handler (the one it inherits ignores it).
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        try:
            pid = os.fork()
        except BaseException:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
            raise
        if pid == 0:
            os.close(exited_r)
            code = 70  # EX_SOFTWARE, should the loop itself raise
            try:
                os.setpgrp()  # its own group: killing it (and what a job forked) spares the supervisor
                executor.die_with_parent(self._main_pid)
                code = executor.run(self, current, burst)
            except BaseException:
                log.exception("executor failed")
            finally:
                os._exit(code)
        os.close(exited_w)
        self._horse_pid, self._current, self._kill_reason = pid, current, ""
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        started = time.monotonic()
        logs.event(log, "worker.executor_started", worker=self.name, pid=pid)
        try:
            status = self._watch(pid, exited_r)
        finally:
            os.close(exited_r)
            self._horse_pid, self._current = 0, None
        job_id = current.get()
        worked = current.ran
        current.close()
        code = os.waitstatus_to_exitcode(status)
        if job_id:
            self._settle(job_id, status)
        self._stopped_job_id = None  # a stop was for that executor's job, whichever it was
        if code == executor.EXIT_RECYCLE:
            logs.event(log, "worker.executor_recycled", worker=self.name, pid=pid)
        elif code not in (executor.EXIT_DONE, executor.EXIT_SUSPENDED, executor.EXIT_UNRECORDED):
            logs.event(log, "worker.executor_died", level=logging.WARNING, worker=self.name, pid=pid,
                       status=_describe_exit(status), reason=self._kill_reason or "crashed", job_id=job_id or None)
            if time.monotonic() - started < 1 and not job_id:
                self._pause(1.0)  # one that dies at once would otherwise be reforked in a tight loop
        return code, worked

    def _watch(self, pid: int, exited) -> int:
        """Heartbeat and housekeeping until the executor exits; its wait status."""
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return status
            try:
                self._tick()
            except RedisError as error:
                self._redis_trouble(error)
            # Wakes at once when the executor exits (its end of the pipe closes).
            select.select([exited], [], [], _TICK)

    def _tick(self) -> None:
        """What the supervisor does every second: heartbeats, sweeps, limits on the running job."""
        run, job_id = self._current.read() if self._current else (0, "")
        running = self._running(job_id, run) if job_id else None
        clock = time.monotonic()
        if clock - self._last_beat >= self.settings.worker_heartbeat_interval:
            if running:
                self.maintain_heartbeats(*running)
            else:
                self.heartbeat()
        if clock >= self._next_sweep:
            self._next_sweep = clock + self.settings.recovery_interval
            self.recovery.sweep()
        if self.should_run_maintenance_tasks:
            self.run_maintenance_tasks()
        if clock >= self._next_lock_try:
            self._next_lock_try = clock + LOCK_RETRY
            self._take_over_scheduling()
        if running:
            self._enforce_limits(*running)
        if self._current:
            self._current.suspended = is_suspended(self.connection)
        # Kept by the supervisor, a second behind at most, not written twice a job.
        state = WorkerStatus.BUSY if job_id else WorkerStatus.IDLE
        if self._state != state:
            self._set_state_safely(state)

    def _take_over_scheduling(self) -> None:
        """Start RQ's scheduler process here if locks are free (their holder died).

        RQ tries again only in its maintenance, every 10 minutes: until then,
        jobs given a time and retries waiting out a backoff would not be enqueued.
        A running scheduler process tries for the locks it lacks itself
        (`PromptRQScheduler.should_reacquire_locks`).
        """
        scheduler = self.scheduler
        if scheduler is None or self._burst or self._stop_requested:
            return
        if scheduler._process is not None and scheduler._process.is_alive():
            return
        scheduler.acquire_locks(auto_start=True)

    def _running(self, job_id: str, run: int):
        """(job, execution) of the executor's job once it is claimed, else None;
        fetched once a run. A job run again (a retry) has a new execution, whose
        heartbeat the supervisor must keep, and a new start for its timeout."""
        if self._running_cache and self._running_cache[0] == (run, job_id):
            return self._running_cache[1]
        execution = self._execution_of(job_id)
        if execution is None:
            return None
        try:
            job = self.job_class.fetch(job_id, connection=self.connection, serializer=self.serializer)
        except NoSuchJobError:
            return None
        self._running_cache = ((run, job_id), (job, execution))
        return job, execution

    def _execution_of(self, job_id: str) -> Execution | None:
        """This worker's execution of `job_id`, from RQ's index of the worker's executions."""
        for key in self.connection.smembers(self.executions_key):
            owner, execution_id = as_text(key).split(":", 1)
            if owner == job_id:
                # Named as this worker's, so that recording its end takes it
                # out of the index too, and no later look finds it again.
                return Execution(id=execution_id, job_id=job_id, connection=self.connection, worker_name=self.name)
        return None

    def _enforce_limits(self, job, execution) -> None:
        """Stop an executor whose job outgrows WORKER_MAX_MEMORY_MB, or ignores its timeout (stuck in C code)."""
        max_mb = self.settings.worker_max_memory_mb
        if max_mb and self._horse_pid:
            try:
                used = psutil.Process(self._horse_pid).memory_info().rss / 2**20
            except psutil.Error:
                return
            # Over at two looks a second apart: a job that ends on its own in
            # between leaves a fresh executor instead (`recycle_reason`).
            last_job, looks = self._over_memory
            looks = (looks + 1 if last_job == job.id else 1) if used > max_mb else 0
            self._over_memory = (job.id, looks)
            if looks >= 2:
                self._kill_executor(f"the job used {used:.0f} MiB, more than WORKER_MAX_MEMORY_MB={max_mb}")
                return
        if job.timeout not in (None, -1) and job.started_at:
            working = (now() - job.started_at).total_seconds()
            if working > job.timeout + 60:
                self._kill_executor(f"the job ran {working:.0f}s and did not stop at its timeout ({job.timeout}s)")

    def get_current_job_id(self) -> str | None:
        """The executor's job, as it says itself. RQ's answer comes from the
        executions it read from Redis at its first look and then kept, so a stop
        (`DELETE /jobs/<id>`) of any later job was ignored as not running here."""
        current = self._current
        return (current.get() or None) if current is not None else None

    def kill_horse(self, *args, **kwargs) -> None:
        # Between two executors there is none: RQ's would signal this process's own group.
        if self._horse_pid:
            super().kill_horse(*args, **kwargs)
        else:
            self._stopped_job_id = None  # a stop that came too late: the executor it was for is gone

    def _kill_executor(self, reason: str) -> None:
        self._kill_reason = reason
        self.kill_horse(signal.SIGKILL)

    def _settle(self, job_id: str, status: int) -> None:
        """The executor ended inside a job: fail it with the reason, retry or requeue it, as RQ would a work-horse.

        Through a Redis outage too, before the next executor: a job left as it
        is would be taken by a sweep for one whose worker died, and counted
        against JOB_MAX_ABANDONS for an outage that was no fault of its own.
        """
        delay, stopped = 0.25, self._stopped_job_id  # RQ clears it on the way, even in a try that fails
        while True:
            self._stopped_job_id = stopped
            try:
                self._settle_once(job_id, status)
                return
            except RedisError as error:
                self._redis_trouble(error)
                if not redis_checks.transient(error) or self._stop_requested:
                    return  # recovery settles it from the execution left in the started registry
            self._pause(delay)
            delay = min(delay * 2, 2.0)
            redis_checks.wait_until_reachable(self.connection, should_stop=lambda: self._stop_requested)

    def _settle_once(self, job_id: str, status: int) -> None:
        """One try at `_settle`; a RedisError is the caller's to handle."""
        try:
            if job_id in self.dequeuer.held():
                return  # never claimed: the next executor takes it first
            job = self.job_class.fetch(job_id, connection=self.connection, serializer=self.serializer)
            execution = self._execution_of(job_id)
            if execution is None or job.get_status() in (JobStatus.FINISHED, JobStatus.FAILED):
                return  # not claimed by us, or its outcome is recorded
            queue = self._queue(job.origin)
            if self._stopped_job_id == job.id:
                self._handle_stopped_job(job, queue, execution)
                return
            if self._stopped_job_id and not self._kill_reason:
                # RQ checks that the job to stop is running, then kills the
                # executor: the job ended in between, and this one had begun.
                recovery.requeue(
                    job,
                    reason=f"its executor was killed to stop job {self._stopped_job_id}, which had just ended",
                    kind=recovery.STRAY_STOP,
                    worker_name=self.name,
                    execution=execution,
                )
                return
            job.ended_at = now()
            reason = self._kill_reason or "it crashed"
            exc_string = f"Work-horse terminated unexpectedly: {reason} ({_describe_exit(status)})"
            self.handle_work_horse_killed(job, 0, status, None)
            self.handle_job_failure(job, queue=queue, exc_string=exc_string, execution=execution)
        except NoSuchJobError:
            pass

    # -- taking jobs (in the executor) --------------------------------------------
    def _load(self, taken: Taken):
        """The taken job and its queue, ready to claim; None (and dropped) when it must not run."""
        queue_key, job_id = taken.queue_key, taken.job_id
        try:
            if not taken.record:  # read along with the take, as RQ's fetch would read it
                raise NoSuchJobError(job_id)
            job = self.job_class(job_id, connection=self.connection, serializer=self.serializer)
            job.restore(taken.record)  # which says whether a webhook waits (None: the record does not know)
        except NoSuchJobError:
            self.dequeuer.drop(job_id)
            logs.event(log, "job.skipped", level=logging.WARNING, job_id=job_id, reason="no such job (expired or deleted)")
            return None
        except RedisError:
            raise
        except Exception as error:  # a record that does not deserialize: fail it, never retry it
            self._fail_unreadable(job_id, queue_key, error)
            return None
        status = job.get_status(refresh=False)
        if status in NOT_RUNNABLE:
            self.dequeuer.drop(job_id)
            logs.event(log, "job.skipped", **logs.job_fields(job), reason=f"its status is already {status.value}")
            return None
        job.redis_server_version = self.get_redis_server_version()
        return job, self._queue(job.origin)

    def _queue(self, name: str):
        """The queue `name` with this worker's classes, built once (a job is taken many times from one)."""
        found = self._queues_by_name.get(name)
        if found is None:
            found = self._queues_by_name[name] = self.queue_class(
                name, connection=self.connection, job_class=self.job_class,
                serializer=self.serializer, death_penalty_class=self.death_penalty_class,
            )
        return found

    def _fail_unreadable(self, job_id: str, queue_key: str, error: Exception) -> None:
        queue_name = queue_key.rsplit(":", 1)[-1] if queue_key else "default"
        reason = f"{type(error).__name__}: the job record cannot be read ({error})"
        with self.connection.pipeline() as pipe:
            # Raw writes: a job object cannot be built from this record.
            pipe.hset(self.job_class.key_for(job_id), "status", JobStatus.FAILED.value)
            pipe.zadd(FailedJobRegistry(queue_name, connection=self.connection).key,
                      {job_id: time.time() + self.settings.failure_ttl})
            Result(job_id, Result.Type.FAILED, self.connection, exc_string=reason,
                   serializer=JSONSerializer).save(self.settings.failure_ttl, pipeline=pipe)
            self.dequeuer.drop(job_id, pipeline=pipe)
            pipe.execute()
        logs.event(log, "job.failed", level=logging.ERROR, job_id=job_id, queue=queue_name, reason=reason)

    def _claim(self, job) -> Execution | None:
        """Register `job` as started and take it out of the dequeued list, atomically.

        The writes are RQ's own for a job that starts (its execution, and what
        `prepare_job_execution` writes), sent in the one round trip of the claim.
        """
        ttl = self.get_heartbeat_ttl(job)
        made: list[Execution] = []

        def register(pipe):
            made.clear()
            made.append(Execution.create(job, ttl, pipeline=pipe, worker_name=self.name))
            # Status `started`, worker name, start time and heartbeat in one
            # write: a started registry never holds a waiting job (RQ's own
            # cleanup would drop it), and a job seen started can be stopped.
            job.prepare_for_execution(self.name, pipeline=pipe)
            if job.ttl is not None:  # else the record has no expiry to remove
                pipe.persist(job.key)
            events.status_changed(pipe, job, "started")
            # RQ gives the job's set of executions a TTL at every start: a command
            # a job that changes nothing. The set loses this member (and, empty,
            # its key) when the job ends, when recovery takes it from a dead
            # worker (by the ids in the started registry) or when the job is
            # deleted; while the job runs, the execution's heartbeat gives it its
            # TTL. (The worker's set keeps RQ's TTL: recovery learns the worker's
            # name from the execution's record, which can expire first.)
            scripted.leave_out(pipe, ("EXPIRE", ExecutionRegistry(job.id, connection=pipe).key))
            return made[0].key

        refused = self.dequeuer.claim(job.id, register)
        if refused:
            logs.event(log, "job.skipped", **logs.job_fields(job), reason=refused)
            return None
        execution = made[0]
        self.executions[execution.id] = execution
        return execution

    # -- in the executor --------------------------------------------------------
    def perform_job(self, job, queue, execution) -> bool:
        try:
            return super().perform_job(job, queue, execution)
        except RedisError:
            # Raised from RQ's own bookkeeping (the job's start or outcome could
            # not be written: Redis full or gone), not from the job: tell the
            # main process, which requeues the job rather than failing it.
            os._exit(EXIT_UNRECORDED)

    def prepare_job_execution(self, job, remove_from_intermediate_queue: bool = False) -> None:
        # RQ's writes for a job that starts were made by `_claim`, with the
        # claim; the worker's own heartbeat is the supervisor's.
        logs.event(log, "job.started", **logs.job_fields(job), worker=self.name)

    def handle_execution_ended(self, job, queue, heartbeat_ttl):
        job.ended_at = now()
        if job._success_callback_name or job._failure_callback_name:
            # RQ's heartbeat, keeping the job alive through its callback.
            job.heartbeat(now(), heartbeat_ttl)

    def handle_job_success(self, job, queue, started_job_registry, execution):
        # The job has run; a short Redis hiccup must not cost it a second run,
        # nor, once its outcome is written, a second record of it.
        again = False
        for pause in (0.5, 1.0, 2.0, None):
            try:
                if again and _success_written(job, execution.id):
                    self._after_success_written(job)
                elif not self._record_success(job, queue, execution):
                    self._record_success_as_rq_does(job, queue, started_job_registry, execution)
                break
            except RedisError:
                if pause is None:
                    os._exit(EXIT_UNRECORDED)
                again = True
                time.sleep(pause)
        fields = logs.job_fields(job)
        duration = (job.ended_at - job.started_at).total_seconds() if job.ended_at and job.started_at else None
        # Written in batches with the executor's takes (`executor.run`).
        self.finished.add(fields["job"], duration)
        logs.event(log, "job.finished", **fields, duration=duration)

    def _record_success_as_rq_does(self, job, queue, started_job_registry, execution) -> None:
        try:
            super().handle_job_success(job, _RecordedOnce(queue, execution), started_job_registry, execution)
        except _SuccessWritten:  # by a try whose reply was lost
            self._after_success_written(job)

    def _after_success_written(self, job) -> None:
        """What follows the write of a job's success, when the write's reply was lost."""
        job._status = JobStatus.FINISHED
        release_slot(job)  # a Redis error here is tried again (`handle_job_success`)
        try:
            # Moved to RQ's ready registries by the write, and not queued yet.
            self.recovery.enqueue_ready()
        except RedisError as error:  # recovery's next sweep queues them
            logs.event(log, "job.dependents_left", level=logging.WARNING, **logs.job_fields(job), error=str(error))

    def _record_success(self, job, queue, execution) -> bool:
        """RQ's `handle_job_success` in one round trip, for a job without dependents; False otherwise.

        The same writes as RQ's (counts, result, finished registry, expiries,
        the execution's cleanup), in a script that runs them only if the job
        has no dependents, which RQ checks with WATCH and a read: a dependent
        added meanwhile sends the job down RQ's own path instead.
        """
        result_ttl = job.get_result_ttl(self.default_result_ttl)
        if result_ttl == 0 or job.repeats_left:
            return False  # RQ deletes, or reschedules, the job: its own path
        with self.connection.pipeline() as pipe:  # only queued, never executed
            job._handle_success(
                result_ttl, pipeline=pipe, worker_name=self.name, execution_id=execution.id,
                execution_started_at=execution.created_at, execution_ended_at=job.ended_at,
            )
            job.cleanup(result_ttl, pipeline=pipe, remove_from_queue=False)
            job._status = JobStatus.FINISHED
            self.cleanup_execution(job, pipeline=pipe, execution=execution)
            # RQ extends the life of the job's dependents and dependencies sets
            # with it; the script runs only when there are no dependents, and a
            # job that never had dependencies has no such set: both no-ops.
            absent = [job.dependents_key] + ([] if job._dependency_ids else [job.dependencies_key])
            # The execution's deletion is the script's own first write.
            scripted.leave_out(pipe, *(("EXPIRE", key) for key in absent), ("DEL", execution.key))
            commands = scripted.words(pipe)
            pipe.reset()
        keys = [job.dependents_key, execution.key, Result.get_key(job.id)]
        if not self._succeed(keys=keys, args=[execution.id, *commands]):
            job._status = JobStatus.STARTED
            return False
        # RQ's counts of the worker (successful jobs, working time) are written
        # with /metrics' counts, once a second (`FinishedTally`).
        self.finished.add_work(self.key, (job.ended_at - job.started_at).total_seconds())
        release_slot(job)
        return True

    @contextlib.contextmanager
    def _recorded_once(self, job, execution):
        """RQ's record of how `execution` ended, applied once however often the
        client sends it (`scripted.WrittenOnce`, marked with the execution)."""
        if execution is None:
            yield
            return
        connection = self.connection
        self.connection = scripted.WrittenOnce(connection, self._once, _end_mark(job, execution))
        try:
            yield
        finally:
            self.connection = connection

    def handle_job_retry(self, job, queue, retry, started_job_registry, execution):
        exceeded = bool(job.number_of_retries and job.number_of_retries >= retry.max)
        with self._recorded_once(job, execution):
            super().handle_job_retry(job, queue, retry, started_job_registry, execution)
        fields = logs.job_fields(job)
        if exceeded:
            metrics.record_failed(self.connection, fields["job"])
            logs.event(log, "job.failed", level=logging.WARNING, **fields, reason="maximum retries exceeded")
        else:
            metrics.record_retried(self.connection, fields["job"])
            logs.event(log, "job.retried", **fields, attempt=job.number_of_retries)

    def handle_work_horse_killed(self, job, retpid, ret_val, rusage):
        self._horse_status = ret_val
        super().handle_work_horse_killed(job, retpid, ret_val, rusage)

    def handle_job_failure(self, job, queue, started_job_registry=None, exc_string="", execution=None):
        if not self.is_horse:
            horse_status, self._horse_status = self._horse_status, None
            if job.id == self._interrupted_job_id:
                recovery.requeue(
                    job,
                    reason=f"the worker was stopped ({self._stop_reason}) and the job did not finish "
                    f"within SHUTDOWN_GRACE={self.settings.shutdown_grace:g}s",
                    kind=recovery.SHUTDOWN,
                    worker_name=self.name,
                    execution=execution,
                )
                self._interrupted_job_id = None  # once written: a try Redis failed is made again
                return
            if horse_status is not None and os.WIFEXITED(horse_status) and os.WEXITSTATUS(horse_status) == EXIT_UNRECORDED:
                recovery.requeue(
                    job,
                    reason="Redis refused to record the job's start or outcome (full or unreachable)",
                    kind=recovery.UNRECORDED,
                    worker_name=self.name,
                    execution=execution,
                )
                return
        if execution is not None and self.connection.exists(_end_mark(job, execution)):
            # Its end is recorded: RQ fails a run whose retry was written when
            # what follows that write raises. It stays as it was recorded.
            return
        retried = job.should_retry and self._stopped_job_id != job.id
        with self._recorded_once(job, execution):
            super().handle_job_failure(job, queue, started_job_registry, exc_string, execution)
        if self.is_horse and job.get_status(refresh=True) == JobStatus.STARTED:
            # RQ could not write the failure (it logs why and carries on): let
            # the main process requeue the job instead.
            os._exit(EXIT_UNRECORDED)
        fields = logs.job_fields(job)
        error = exception_line(exc_string)
        if retried:
            metrics.record_retried(self.connection, fields["job"])
            logs.event(log, "job.retried", level=logging.WARNING, **fields, error=error, retries_left=job.retries_left)
        else:
            metrics.record_failed(self.connection, fields["job"])
            logs.event(log, "job.failed", level=logging.WARNING, **fields, error=error)

    # -- stopping -------------------------------------------------------------
    def request_stop(self, signum, frame):
        """SIGTERM or SIGINT: stop after the running job, within SHUTDOWN_GRACE; again: stop it now."""
        if os.getpid() != self._main_pid:
            # RQ's scheduler process, forked with this handler and not yet past
            # installing its own: the signal does what it would have done there,
            # rather than vanish and leave the worker waiting on it for ever.
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        name = signal_name(signum)
        if self._shutdown_requested_date is not None:
            logs.event(log, "worker.stop_now", level=logging.WARNING, worker=self.name, signal=name)
            self._interrupt_job()
            return
        self._shutdown_requested_date = now()
        self._stop_requested = True
        self._stop_reason = name
        logs.event(log, "worker.stopping", worker=self.name, signal=name, grace=self.settings.shutdown_grace)
        if self._horse_pid:  # it finishes its job, takes no other (Heroku signals it too)
            with contextlib.suppress(OSError):
                os.kill(self._horse_pid, signal.SIGTERM)
        timer = threading.Timer(self.settings.shutdown_grace, self._interrupt_job)
        timer.daemon = True
        timer.start()

    def _interrupt_job(self) -> None:
        """Stop the executor's running job; `handle_job_failure` then requeues it."""
        job_id = self._current.get() if self._current else ""
        if not self._horse_pid or not job_id:
            return
        self._interrupted_job_id = job_id
        self._kill_executor("the worker was stopped")

    def check_for_suspension(self, burst: bool):
        try:
            super().check_for_suspension(burst)
        except RedisError as error:
            self._redis_trouble(error)

    def teardown(self):
        if self.is_horse:
            return
        try:
            returned = self.dequeuer.give_back_all()
            if returned:
                logs.event(log, "worker.gave_back", worker=self.name, jobs=returned)
        except RedisError as error:
            self._redis_trouble(error)  # recovery will return them once this worker looks dead
        try:
            super().teardown()
        except RedisError as error:
            self._redis_trouble(error)
        logs.event(log, "worker.stopped", worker=self.name, reason=self._stop_reason or "done")

    def unsubscribe(self):
        # RQ waits up to 1 s for its pub/sub thread, a daemon; a stopping worker
        # has better uses for the platform's grace period. The thread is told to
        # stop before the unsubscribe, whose reply wakes it. Told after, it may
        # have read that reply already and gone back to waiting for a
        # subscription (up to RQ's 60 s), which redis-py 8.2's `stop()` waits
        # out unless given a timeout.
        thread = self.pubsub_thread
        if thread:
            _stop_without_waiting(thread)
            try:
                self.pubsub.unsubscribe()
            except RedisError:
                pass
            thread.join(timeout=0.2)
            if not thread.is_alive():
                self.pubsub.close()

    def recycle_reason(self, jobs_done: int) -> str:
        """Why the executor should make way for a fresh one after `jobs_done` jobs ("" to go on)."""
        max_jobs, max_mb = self.settings.worker_max_jobs, self.settings.worker_max_memory_mb
        if max_jobs and jobs_done >= max_jobs:
            return f"ran {jobs_done} jobs (WORKER_MAX_JOBS={max_jobs})"
        if max_mb:
            # The high-water mark: one read of getrusage, cheap enough after every job.
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)
            if peak > max_mb:
                return f"used {peak:.0f} MiB (WORKER_MAX_MEMORY_MB={max_mb})"
        return ""

    # -- staying alive --------------------------------------------------------
    def register_birth(self):
        super().register_birth()
        # Once, in the supervisor and before any executor is forked: recovery
        # finds this worker's list from its first take on. An executor's first
        # command is then its take, which waits out a Redis outage.
        self.dequeuer.register()

    def heartbeat(self, timeout=None, pipeline=None):
        if pipeline is not None:
            super().heartbeat(timeout, pipeline)
            # Back in the set should recovery have given this worker up for
            # dead while it was only cut off: its list stays findable.
            self.dequeuer.register(pipeline)
            return
        try:
            with self.connection.pipeline() as pipe:
                self.heartbeat(timeout, pipe)
                pipe.execute()
            self._last_beat = time.monotonic()
        except RedisError as error:
            self._redis_trouble(error)

    def maintain_heartbeats(self, job, execution):
        try:
            super().maintain_heartbeats(job, execution)
            self._last_beat = time.monotonic()
        except RedisError as error:
            self._redis_trouble(error)

    def run_maintenance_tasks(self):
        try:
            super().run_maintenance_tasks()
        except RedisError as error:
            self._redis_trouble(error)
            self.last_cleaned_at = now()

    def clean_registries(self):
        # Ours first: RQ's cleanup of the started registry fails abandoned jobs.
        if self.recovery.sweep().clock_off is not None:
            # RQ's cleanup judges the started registry by this host's clock too.
            self.last_cleaned_at = now()
            return
        super().clean_registries()

    def _redis_trouble(self, error: Exception) -> None:
        self.recovery.note_outage()
        # One line per kind of trouble every 10 s, not one per retry.
        kind = type(error).__name__
        last_kind, last_at = self._last_trouble
        if kind != last_kind or time.monotonic() - last_at >= 10:
            self._last_trouble = (kind, time.monotonic())
            logs.event(log, "worker.redis_error", level=logging.WARNING, worker=self.name, pid=os.getpid(),
                       error=f"{kind}: {error}")

    def _set_state_safely(self, state) -> None:
        try:
            self.set_state(state)
        except RedisError as error:
            self._redis_trouble(error)

    def _pause(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._stop_requested and time.monotonic() < deadline:
            time.sleep(0.05)


def build_worker(
    settings: Settings,
    connection: Redis | None = None,
    worker_class: type[ReliableWorker] = ReliableWorker,
    **options,
) -> ReliableWorker:
    connection = connection or connect(settings)
    queues = [ServiceQueue(name, connection=connection) for name in settings.queues]
    worker = worker_class(
        queues,
        settings=settings,
        connection=connection,
        job_class=options.pop("job_class", ServiceJob),
        queue_class=ServiceQueue,
        serializer=JSONSerializer,
        **options,
    )
    worker.scheduler_poll = settings.scheduler_interval
    return worker


def run(settings: Settings) -> None:
    """The worker process: until SIGTERM, through Redis outages."""
    connection = connect(settings)
    redis_checks.startup(connection, settings)
    while True:
        worker = None
        try:
            # A client of its own: RQ sets the socket timeouts of a worker's client
            # (and, building the worker, names the connection: a first command).
            worker = build_worker(settings)
            logs.event(log, "worker.started", worker=worker.name, queues=list(settings.queues), pid=os.getpid())
            worker.work(with_scheduler=True)
        except RedisError as error:
            if worker is None:
                logs.event(log, "redis.lost", level=logging.WARNING, error=str(error))
            else:
                worker._redis_trouble(error)
        if worker is not None and worker._stop_requested:
            return
        # The work loop ended without being asked to (Redis went away at a bad
        # moment, an unexpected error): wait for Redis, start a fresh worker.
        _stop_on_signal()
        time.sleep(1)
        redis_checks.wait_until_reachable(connection)


def _stop_without_waiting(thread) -> None:
    """Tell redis-py's pub/sub thread to stop at its next wake, without waiting
    for it (redis-py before 8.2 never waits, and takes no timeout)."""
    try:
        thread.stop(timeout=0)
    except TypeError:
        thread.stop()


def _stop_on_signal() -> None:
    def stop(signum, frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


def _describe_exit(status: int) -> str:
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        return f"killed by {signal_name(number)}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"
