"""Reads that many requests need at once, made once (`service.shared_reads`)."""
import threading

import pytest

from service.shared_reads import SharedReads


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _in_flight(reads: SharedReads, key: str, value: str):
    """A read of `key` started and held until the returned gate is opened; its thread and result list."""
    gate, started, results = threading.Event(), threading.Event(), []

    def slow_read():
        started.set()
        gate.wait(10)
        return value

    thread = threading.Thread(target=lambda: results.append(reads.read(key, slow_read, since=0)))
    thread.start()
    started.wait(10)
    return gate, thread, results


def test_a_read_begun_before_the_caller_s_event_is_not_shared():
    clock = _Clock()
    reads = SharedReads(clock)
    gate, first, _ = _in_flight(reads, "job-1", "state before the event")
    clock.now += 1  # the caller's event came after that read began: it may not show it
    assert reads.read("job-1", lambda: "state after the event", since=clock.now) == "state after the event"
    gate.set()
    first.join(10)


def test_reads_of_other_keys_are_not_shared():
    reads = SharedReads(_Clock())
    gate, first, _ = _in_flight(reads, "job-1", "job 1")
    assert reads.read("job-2", lambda: "job 2", since=0) == "job 2"
    gate.set()
    first.join(10)


def test_a_failed_read_fails_each_caller_with_an_error_of_its_own_and_the_next_reads_again():
    clock = _Clock()
    reads = SharedReads(clock)
    gate, started = threading.Event(), threading.Event()
    errors = []

    def failing_read():
        started.set()
        gate.wait(10)
        raise LookupError("no such job")

    def call():
        try:
            reads.read("job-1", failing_read, since=clock.now)
        except LookupError as error:
            errors.append(error)

    callers = [threading.Thread(target=call)]
    callers[0].start()
    started.wait(10)
    callers.append(threading.Thread(target=call))
    callers[1].start()
    gate.set()
    for caller in callers:
        caller.join(10)
    assert [str(error) for error in errors] == ["no such job", "no such job"]
    assert errors[0] is not errors[1]
    assert reads.read("job-1", lambda: "found", since=clock.now) == "found"
    with pytest.raises(ZeroDivisionError):
        reads.read("job-1", lambda: 1 / 0, since=clock.now)


def test_a_reader_killed_under_gevent_leaves_those_sharing_its_read_to_read_for_themselves():
    """gunicorn's gevent workers: a greenlet killed mid-read (GreenletExit) has no
    outcome to share; the callers waiting on it must not take "nothing" for one."""
    import subprocess
    import sys

    script = """
from gevent import monkey; monkey.patch_all()
import gevent, gevent.event
from service.shared_reads import SharedReads
reads, gate = SharedReads(), gevent.event.Event()
def held(): gate.wait(); return "never"
reader = gevent.spawn(reads.read, "job-1", held, -1.0)
gevent.sleep(0)  # a yield: the reader is now in flight, at the gate
sharer = gevent.spawn(reads.read, "job-1", lambda: "read again", -1.0)
gevent.sleep(0)  # the sharer now waits for the reader's outcome
reader.kill()
print(repr(sharer.get(timeout=10)))
"""
    from tests.processes import ROOT

    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "'read again'", done.stderr[-2000:]
