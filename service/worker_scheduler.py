"""RQ's own scheduler (jobs enqueued with a delay or a time), woken when a job is due.

The worker runs RQ's scheduler in a child process (`work(with_scheduler=True)`).
RQ's loop looks at its scheduled-job registries, then sleeps a fixed second, so
a job is enqueued anywhere from 0 to a little over 1 s after it is due. This
one sleeps until the earliest scheduled job is due (at most `poll` seconds, so
jobs scheduled meanwhile are seen), and enqueues within milliseconds.
"""
from __future__ import annotations

import os
import time
from datetime import datetime

from rq.defaults import DEFAULT_LOGGING_DATE_FORMAT, DEFAULT_LOGGING_FORMAT
from rq.scheduler import RQScheduler

from .executor import die_with_parent


#: Seconds between tries for scheduler locks another scheduler holds (RQ: 2 minutes
#: in a scheduler that holds some, 10 in a worker that holds none), so that the
#: queues of one that died are taken over as soon as its locks expire.
LOCK_RETRY = 5.0


class PromptRQScheduler(RQScheduler):
    def __init__(self, *args, poll: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.poll = poll
        #: The worker that builds it, and forks its process (`start`).
        self._worker_pid = os.getpid()

    @property
    def should_reacquire_locks(self) -> bool:
        if self._queue_names == self.acquired_locks:
            return False
        if not self.lock_acquisition_time:
            return True
        return (datetime.now() - self.lock_acquisition_time).total_seconds() >= LOCK_RETRY

    def work(self) -> None:
        self._install_signal_handlers()
        # Killed with its worker (SIGKILL included), as the executor is: an orphan
        # would go on holding the scheduler locks and writing its records.
        die_with_parent(self._worker_pid)
        self.register_birth()
        last_beat = 0.0
        while True:
            if self._stop_requested:
                self.stop()
                break
            if self.should_reacquire_locks:
                self.acquire_locks()
            if time.monotonic() - last_beat >= self.interval:
                self.heartbeat()
                last_beat = time.monotonic()
            self.enqueue_scheduled_jobs()
            wait = self.seconds_until_due()
            # A job still due right after a look cannot be moved now: do not spin on it.
            time.sleep(wait if wait > 0 else min(self.poll, 0.05))

    def seconds_until_due(self) -> float:
        """Seconds until the earliest job in this scheduler's registries is due, at most `poll`."""
        # From 0 up, as RQ's scheduler looks: a score below it is never moved,
        # and must not keep this loop from sleeping.
        heads = [
            self.connection.zrangebyscore(registry.key, 0, "+inf", start=0, num=1, withscores=True)
            for registry in self._scheduled_job_registries
        ]
        scores = [head[0][1] for head in heads if head]
        if not scores:
            return self.poll
        return min(self.poll, max(0.0, min(scores) - time.time()))


class PromptScheduling:
    """Worker mixin: run PromptRQScheduler (or `scheduler_class`) where RQ's Worker runs RQScheduler."""

    #: Longest sleep of the scheduler between looks, in seconds.
    scheduler_poll: float = 1.0
    scheduler_class: type[PromptRQScheduler] = PromptRQScheduler

    def _start_scheduler(
        self,
        burst: bool = False,
        logging_level: str | None = "INFO",
        date_format: str = DEFAULT_LOGGING_DATE_FORMAT,
        log_format: str = DEFAULT_LOGGING_FORMAT,
    ):
        # As rq.worker.base.BaseWorker._start_scheduler (RQ 3.0), with the scheduler class swapped.
        self.scheduler = self.scheduler_class(
            self.queues,
            connection=self.connection,
            logging_level=logging_level if logging_level is not None else self.log.level,
            date_format=date_format,
            log_format=log_format,
            serializer=self.serializer,
            poll=self.scheduler_poll,
        )
        self.scheduler.acquire_locks()
        if self.scheduler.acquired_locks:
            if burst:
                try:
                    self.scheduler.register_birth()
                    self.scheduler.enqueue_scheduled_jobs()
                finally:
                    self.scheduler.release_locks()
                    self.scheduler.register_death()
            else:
                self.scheduler.start()
