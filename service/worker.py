"""The worker: RQ's forking worker, made so that no job is lost.

`ReliableWorker` keeps RQ's model (one work-horse process a job, JSON records,
RQ's registries, retries and scheduler) and changes what loses or strands jobs:

- it takes jobs with `service.dequeue` (an atomic move into its own list), not
  BLPOP, and registers a job as started in the same transaction that takes it
  out of that list;
- it heartbeats every WORKER_HEARTBEAT_INTERVAL, idle or busy, and sweeps for
  jobs of dead workers every RECOVERY_INTERVAL (`service.recovery`);
- on SIGTERM (Heroku: to every process, SIGKILL 30 s later) it takes no new
  job, lets the running one finish for up to SHUTDOWN_GRACE seconds, then stops
  it and puts it back at the front of its queue, marked interrupted, not failed;
  the work-horse ignores SIGTERM;
- Redis errors never end the process: it waits for Redis and carries on;
- it counts and times jobs for /metrics and logs one JSON event a step.

`run(settings)` is the process: startup checks, the work loop, reconnecting,
and recycling the process (exec of itself) after WORKER_MAX_JOBS jobs or
WORKER_MAX_MEMORY_MB.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time

import psutil
from redis import Redis
from redis.exceptions import RedisError
from rq.exceptions import NoSuchJobError
from rq.executions import Execution
from rq.job import JobStatus
from rq.registry import FailedJobRegistry
from rq.results import Result
from rq.serializers import JSONSerializer
from rq.utils import now
from rq.worker import WorkerStatus
from rq.worker.base import signal_name

from . import logs, metrics, recovery, redis_checks
from .connection import connect
from .dequeue import Dequeuer
from .queues import ServiceJob, ServiceQueue
from .worker_scheduler import PromptRQScheduler
from .workers import ServiceWorker
from .settings import Settings

log = logging.getLogger("service.worker")

#: Exit status of a work-horse that could not write the job's start or outcome to Redis.
EXIT_UNRECORDED = 75  # EX_TEMPFAIL

#: Statuses of a job that must not run again when its id is met on a queue.
_NOT_RUNNABLE = {
    JobStatus.STARTED, JobStatus.FINISHED, JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED,
}


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
    """RQ's forking worker, taking jobs atomically, recovering others', stopping without losing one."""

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
        self.recycle_reason = ""
        self._jobs_done = 0
        self._last_beat = 0.0
        self._next_sweep = 0.0
        kwargs.setdefault("job_monitoring_interval", max(1, int(settings.worker_heartbeat_interval)))
        super().__init__(queues, **kwargs)
        self.dequeuer = Dequeuer(self.connection, self.name)
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

    # -- taking jobs ----------------------------------------------------------
    def dequeue_job_and_maintain_ttl(self, timeout, max_idle_time=None):
        """Next (job, queue), or None: stop requested, idle too long, or (burst: `timeout` None) empty."""
        burst = timeout is None
        self._set_state_safely(WorkerStatus.IDLE)
        self.procline("Listening on " + ",".join(self.queue_names()))
        idle_since = time.monotonic()
        delay = 0.25
        while not self._stop_requested:
            try:
                self.housekeeping()
                taken = self.dequeuer.take(
                    [queue.key for queue in self._ordered_queues], block=None if burst else self._block_seconds()
                )
                delay = 0.25
                if taken is None:
                    if burst:
                        return None
                    if max_idle_time is not None and time.monotonic() - idle_since > max_idle_time:
                        return None
                    continue
                result = self._load(*taken)
                if result is not None:
                    self.reorder_queues(reference_queue=result[1])
                    return result
            except RedisError as error:
                self._redis_trouble(error)
                self._pause(delay)
                delay = min(delay * 2, 2.0)
        return None

    def _load(self, queue_key: str, job_id: str):
        try:
            job = self.job_class.fetch(job_id, connection=self.connection, serializer=self.serializer)
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
        if status in _NOT_RUNNABLE:
            self.dequeuer.drop(job_id)
            logs.event(log, "job.skipped", **logs.job_fields(job), reason=f"its status is already {status.value}")
            return None
        job.redis_server_version = self.get_redis_server_version()
        queue = self.queue_class(
            job.origin, connection=self.connection, job_class=self.job_class,
            serializer=self.serializer, death_penalty_class=self.death_penalty_class,
        )
        return job, queue

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
        """Register `job` as started and take it out of the dequeued list, atomically."""
        ttl = self.get_heartbeat_ttl(job)
        made: list[Execution] = []

        def register(pipe):
            made.clear()
            made.append(Execution.create(job, ttl, pipeline=pipe, worker_name=self.name))
            # Started from here on, so that a started registry never holds a
            # waiting job (RQ's own cleanup would drop it).
            job.set_status(JobStatus.STARTED, pipeline=pipe)
            self.set_state(WorkerStatus.BUSY, pipeline=pipe)

        if not self.dequeuer.claim(job.id, register):
            logs.event(log, "job.skipped", **logs.job_fields(job), reason="recovered by another worker meanwhile")
            return None
        execution = made[0]
        self.executions[execution.id] = execution
        return execution

    def execute_job(self, job, queue):
        try:
            execution = self._claim(job)
            if execution is None:
                return
            self._jobs_done += 1
            self.fork_work_horse(job, queue)
            self.monitor_work_horse(job, queue, execution)
        except RedisError as error:
            # The horse has been reaped; what it could not record, recovery will
            # find from the execution it left behind.
            self._redis_trouble(error)
        finally:
            self._set_state_safely(WorkerStatus.IDLE)
            self._check_recycle()

    # -- in the work-horse ----------------------------------------------------
    def setup_work_horse_signals(self):
        # Heroku signals every process of the dyno: the job keeps running and
        # the main process decides when to stop it (SHUTDOWN_GRACE).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)

    def perform_job(self, job, queue, execution) -> bool:
        try:
            return super().perform_job(job, queue, execution)
        except RedisError:
            # Raised from RQ's own bookkeeping (the job's start or outcome could
            # not be written: Redis full or gone), not from the job: tell the
            # main process, which requeues the job rather than failing it.
            os._exit(EXIT_UNRECORDED)

    def prepare_job_execution(self, job, remove_from_intermediate_queue: bool = False) -> None:
        super().prepare_job_execution(job, remove_from_intermediate_queue=False)
        logs.event(log, "job.started", **logs.job_fields(job), worker=self.name)

    def handle_job_success(self, job, queue, started_job_registry, execution):
        # The job has run; a short Redis hiccup must not cost it a second run.
        for pause in (0.5, 1.0, 2.0, None):
            try:
                super().handle_job_success(job, queue, started_job_registry, execution)
                break
            except RedisError:
                if pause is None:
                    os._exit(EXIT_UNRECORDED)
                time.sleep(pause)
        fields = logs.job_fields(job)
        duration = (job.ended_at - job.started_at).total_seconds() if job.ended_at and job.started_at else None
        metrics.record_finished(self.connection, fields["job"], duration)
        logs.event(log, "job.finished", **fields, duration=duration)

    def handle_job_retry(self, job, queue, retry, started_job_registry, execution):
        exceeded = bool(job.number_of_retries and job.number_of_retries >= retry.max)
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
                self._interrupted_job_id = None
                recovery.requeue(
                    job,
                    reason=f"the worker was stopped ({self._stop_reason}) and the job did not finish "
                    f"within SHUTDOWN_GRACE={self.settings.shutdown_grace:g}s",
                    kind=recovery.SHUTDOWN,
                    worker_name=self.name,
                    execution=execution,
                )
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
        retried = job.should_retry and self._stopped_job_id != job.id
        super().handle_job_failure(job, queue, started_job_registry, exc_string, execution)
        if self.is_horse and job.get_status(refresh=True) == JobStatus.STARTED:
            # RQ could not write the failure (it logs why and carries on): let
            # the main process requeue the job instead.
            os._exit(EXIT_UNRECORDED)
        fields = logs.job_fields(job)
        error = next((line for line in reversed(exc_string.strip().splitlines()) if line.strip()), "")
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
            return  # a work-horse between fork and its own handlers
        name = signal_name(signum)
        if self._shutdown_requested_date is not None:
            logs.event(log, "worker.stop_now", level=logging.WARNING, worker=self.name, signal=name)
            self._interrupt_job()
            return
        self._shutdown_requested_date = now()
        self._stop_requested = True
        self._stop_reason = name
        logs.event(log, "worker.stopping", worker=self.name, signal=name, grace=self.settings.shutdown_grace)
        timer = threading.Timer(self.settings.shutdown_grace, self._interrupt_job)
        timer.daemon = True
        timer.start()

    def _interrupt_job(self) -> None:
        """Stop the running job's work-horse; `handle_job_failure` then requeues the job."""
        pid = self._horse_pid
        running = next(iter(self.executions.values()), None)
        if not pid or running is None:
            return
        self._interrupted_job_id = running.job_id
        try:
            os.killpg(os.getpgid(pid), signal.SIGKILL)
        except OSError:
            pass  # it has just ended by itself

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
        logs.event(log, "worker.stopped", worker=self.name, jobs=self._jobs_done,
                   reason=self.recycle_reason or self._stop_reason or "done")

    def unsubscribe(self):
        # RQ waits up to 1 s for its pub/sub thread, a daemon; a stopping worker
        # has better uses for the platform's grace period.
        if self.pubsub_thread:
            try:
                self.pubsub.unsubscribe()
            except RedisError:
                pass
            self.pubsub_thread.stop()
            self.pubsub_thread.join(timeout=0.2)
            if not self.pubsub_thread.is_alive():
                self.pubsub.close()

    def _check_recycle(self) -> None:
        if self.recycle_reason:
            return
        max_jobs, max_mb = self.settings.worker_max_jobs, self.settings.worker_max_memory_mb
        if max_jobs and self._jobs_done >= max_jobs:
            self.recycle_reason = f"ran {self._jobs_done} jobs (WORKER_MAX_JOBS={max_jobs})"
        elif max_mb:
            used = psutil.Process().memory_info().rss / 2**20
            if used > max_mb:
                self.recycle_reason = f"uses {used:.0f} MiB (WORKER_MAX_MEMORY_MB={max_mb})"
        if self.recycle_reason:
            self._stop_requested = True

    # -- staying alive --------------------------------------------------------
    def housekeeping(self) -> None:
        """Heartbeat, sweep for stranded jobs, RQ's maintenance: each when due."""
        clock = time.monotonic()
        if clock - self._last_beat >= self.settings.worker_heartbeat_interval:
            self.heartbeat()
        if clock >= self._next_sweep:
            self._next_sweep = clock + self.settings.recovery_interval
            self.recovery.sweep()
        if self.should_run_maintenance_tasks:
            self.run_maintenance_tasks()

    def heartbeat(self, timeout=None, pipeline=None):
        if pipeline is not None:
            return super().heartbeat(timeout, pipeline)
        try:
            super().heartbeat(timeout)
            self._last_beat = time.monotonic()
        except RedisError as error:
            self._redis_trouble(error)

    def maintain_heartbeats(self, job, execution):
        try:
            super().maintain_heartbeats(job, execution)
            self._last_beat = time.monotonic()
            if time.monotonic() >= self._next_sweep:
                self._next_sweep = time.monotonic() + self.settings.recovery_interval
                self.recovery.sweep()
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
        self.recovery.sweep()
        super().clean_registries()

    def _redis_trouble(self, error: Exception) -> None:
        self.recovery.note_outage()
        # One line per kind of trouble every 10 s, not one per retry.
        kind = type(error).__name__
        last_kind, last_at = self._last_trouble
        if kind != last_kind or time.monotonic() - last_at >= 10:
            self._last_trouble = (kind, time.monotonic())
            logs.event(log, "worker.redis_error", level=logging.WARNING, worker=self.name, error=f"{kind}: {error}")

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
        job_class=ServiceJob,
        queue_class=ServiceQueue,
        serializer=JSONSerializer,
        **options,
    )
    worker.scheduler_poll = settings.scheduler_interval
    return worker


def run(settings: Settings) -> None:
    """The worker process: until SIGTERM, through Redis outages; recycled by exec when due."""
    connection = connect(settings)
    redis_checks.startup(connection, settings)
    while True:
        # A client of its own: RQ sets the socket timeouts of a worker's client.
        worker = build_worker(settings)
        logs.event(log, "worker.started", worker=worker.name, queues=list(settings.queues), pid=os.getpid())
        try:
            worker.work(with_scheduler=True)
        except RedisError as error:
            worker._redis_trouble(error)
        if worker.recycle_reason:
            _recycle(worker.recycle_reason)
        if worker._stop_requested:
            return
        # The work loop ended without being asked to (Redis went away at a bad
        # moment, an unexpected error): wait for Redis, start a fresh worker.
        _stop_on_signal()
        time.sleep(1)
        redis_checks.wait_until_reachable(connection)


def _stop_on_signal() -> None:
    def stop(signum, frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


def _recycle(reason: str) -> None:
    logs.event(log, "worker.recycling", reason=reason, pid=os.getpid())
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
