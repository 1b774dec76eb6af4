"""The executor: the one long-lived child of a worker that runs its jobs.

RQ forks a work-horse for every job, which costs more than a short job itself
(a fork, a fresh connection, a dozen Redis round trips of bookkeeping). A
worker of this service forks an *executor* once and reforks it only when it
must: the executor takes job after job and runs each in-process, while the
worker process (the supervisor) never runs job code, heartbeats for both,
answers RQ's commands and watches the executor. A job that crashes the
interpreter, is killed, or outgrows WORKER_MAX_MEMORY_MB takes only the
executor down: the supervisor fails that job with the reason (or requeues it,
per its retries) and forks a new executor within milliseconds.

The executor says which job it runs through `CurrentJob`, a few hundred bytes
of memory shared with the supervisor, written before the job is claimed and
cleared once its outcome is recorded: no pipe, no system call per job.
"""
from __future__ import annotations

import ctypes
import logging
import mmap
import os
import random
import signal
import struct

from redis.exceptions import RedisError

from . import libc, logs

log = logging.getLogger("service.worker")

#: The executor's exit statuses (anything else, or a signal, is a crash).
EXIT_DONE = 0  # stopped, or (burst) the queues are empty
EXIT_RECYCLE = 3  # WORKER_MAX_JOBS or WORKER_MAX_MEMORY_MB reached between two jobs
EXIT_SUSPENDED = 4  # `rq suspend`: the supervisor waits for `rq resume`
EXIT_UNRECORDED = 75  # EX_TEMPFAIL: Redis refused the job's start or outcome


class CurrentJob:
    """The id of the job the executor runs, in memory shared across fork (a seqlock).

    The executor writes, the supervisor reads; a sequence number that is odd
    while a write is under way lets a read that overlapped one try again.
    """

    SIZE = 4096
    _HEADER = struct.Struct("QH")  # sequence, id length

    def __init__(self) -> None:
        self._memory = mmap.mmap(-1, self.SIZE)

    def set(self, job_id: str) -> None:
        data = job_id.encode()[: self.SIZE - self._HEADER.size - 2]
        if data:
            self._memory[self.SIZE - 1] = 1
        sequence = self._sequence()
        self._HEADER.pack_into(self._memory, 0, sequence + 1, 0)
        self._memory[self._HEADER.size: self._HEADER.size + len(data)] = data
        self._HEADER.pack_into(self._memory, 0, sequence + 2, len(data))

    def clear(self) -> None:
        self.set("")

    def get(self) -> str:
        return self.read()[1]

    def read(self) -> tuple[int, str]:
        """(sequence, job id): the sequence tells one run of a job from the next
        run of the same job (a retry in this executor), which sets it again."""
        for _ in range(1000):
            sequence, length = self._HEADER.unpack_from(self._memory, 0)
            if sequence % 2:
                continue
            data = self._memory[self._HEADER.size: self._HEADER.size + length]
            if self._sequence() == sequence:
                return sequence, data.decode(errors="replace")
        return 0, ""

    @property
    def suspended(self) -> bool:
        """Set by the supervisor while workers are suspended (`rq suspend`): take no job."""
        return self._memory[self.SIZE - 2] == 1

    @suspended.setter
    def suspended(self, value: bool) -> None:
        self._memory[self.SIZE - 2] = 1 if value else 0

    @property
    def ran(self) -> bool:
        """Whether the executor has started a job at all (burst mode reports it)."""
        return self._memory[self.SIZE - 1] == 1

    def _sequence(self) -> int:
        return self._HEADER.unpack_from(self._memory, 0)[0]

    def close(self) -> None:
        self._memory.close()


def die_with_parent(parent: int) -> None:
    """Have the kernel SIGKILL this process when its parent (pid `parent`, the
    process that forked it) dies (Linux); at once if it has died already.

    An executor whose supervisor was killed must not run on unseen: recovery
    gives the supervisor's jobs to other workers once its heartbeat stops. Nor
    must RQ's scheduler process, which would go on holding the scheduler locks.
    """
    # Not Linux: the executor checks its parent between jobs.
    libc.signal_when_parent_dies(signal.SIGKILL, parent)


class JobEnvironment:
    """`RQ_WORKER_ID` and `RQ_JOB_ID` in the environment, as RQ's work-horse has
    them, for a job and for any program it starts.

    Set through `os.environ` for every job, `RQ_JOB_ID` would leak: glibc's
    `setenv` copies each value it is given and never frees one (a caller may
    still hold it), about 90 bytes a job in an executor that runs millions.
    Instead the C environment points at one buffer of this object, rewritten for
    each job (`putenv` takes the string itself, not a copy), and `os.environ`,
    Python's copy of the environment, is updated beside it. An id longer than
    the buffer (RQ lets a client choose one) is set the ordinary way. A thread a
    job leaves running that reads the variable from C sees the next job's id.
    """

    NAME = "RQ_JOB_ID"
    LONGEST = 128

    def __init__(self, worker_name: str) -> None:
        os.environ["RQ_WORKER_ID"] = worker_name  # once per executor
        self._key = os.environ.encodekey(self.NAME)
        self._prefix = self._key + b"="
        self._buffer = ctypes.create_string_buffer(len(self._prefix) + self.LONGEST + 1)

    def set(self, job_id: str) -> None:
        value = os.environ.encodevalue(job_id)
        if libc.PUTENV is None or len(value) > self.LONGEST:
            os.environ[self.NAME] = job_id
            return
        self._buffer.value = self._prefix + value
        # Again for every job, in case other code set the variable since (its
        # own copy then took the buffer's place): the same pointer costs nothing.
        libc.PUTENV(self._buffer)
        os.environ._data[self._key] = value


class _Stop(Exception):
    """SIGTERM while waiting for a job: stop waiting."""


def run(worker, current: CurrentJob, burst: bool) -> int:
    """The executor's loop, in the forked child of `worker`: take, claim, run, record; its exit status.

    Taking, claiming and recording are the worker's own (RQ's) methods, so a
    job runs exactly as in a work-horse, only without a fork per job.
    """
    parent = worker._main_pid  # the supervisor, whose death `die_with_parent` also covers
    random.seed()
    worker._is_horse = True
    idle = True

    def stop(signum, frame):
        worker._stop_requested = True
        if idle:
            raise _Stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the supervisor's to handle
    queue_keys = [queue.key for queue in worker._ordered_queues]
    environment = JobEnvironment(worker.name)
    jobs = 0
    delay = 0.25
    try:
        # The supervisor forked this process with SIGTERM blocked: one sent
        # meanwhile reaches `stop` now instead of being lost.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        while not worker._stop_requested:
            if os.getppid() != parent:
                return EXIT_DONE  # the supervisor is gone (no PDEATHSIG here): recovery has our jobs
            if current.suspended:
                return EXIT_SUSPENDED
            if worker.finished.due():
                worker.finished.write(worker.dequeuer.deferred)  # sent with the take
            # Counts still in memory are written before waiting for a job, not after.
            waits = not burst and not worker.finished.pending
            try:
                taken = worker.dequeuer.take(queue_keys, block=worker._block_seconds() if waits else None)
            except RedisError as error:
                worker._redis_trouble(error)
                worker._pause(delay)
                delay = min(delay * 2, 2.0)
                continue
            delay = 0.25
            if taken is None:
                _flush_counts(worker)  # idle: nothing to send them with
                if burst:
                    return EXIT_DONE
                continue
            if worker._stop_requested:
                return EXIT_DONE  # what was taken stays in the dequeued list: the supervisor gives it back
            idle = False
            try:
                loaded = worker._load(taken)
                if loaded is not None:
                    job, queue = loaded
                    # Written before the claim, so that whatever kills this process
                    # after it, the supervisor knows which job to settle.
                    current.set(job.id)
                    execution = worker._claim(job)
            except RedisError as error:
                worker._redis_trouble(error)
                loaded = execution = None
            if loaded is None or execution is None:
                current.clear()
                idle = True
                continue
            environment.set(job.id)
            worker.perform_job(job, queue, execution)
            current.clear()
            idle = True
            jobs += 1
            reason = worker.recycle_reason(jobs)
            if reason:
                logs.event(log, "worker.executor_recycling", worker=worker.name, reason=reason, pid=os.getpid())
                return EXIT_RECYCLE
    except _Stop:
        pass
    finally:
        _flush_counts(worker)
    return EXIT_DONE


def _flush_counts(worker) -> None:
    worker.finished.write(worker.dequeuer.deferred)
    worker.dequeuer.flush_deferred()
