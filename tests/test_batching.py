"""Script calls sent without redis-py's per-command layers: concurrent calls share
round trips, yet each gets its own answer (`ScriptBatcher`); a lone call has its
words packed in C (`PackedScript`). Both survive what a plain call survives."""
import threading

import pytest
from redis.exceptions import DataError, ResponseError

from service.batching import ScriptBatcher
from service.scripted import PackedScript
from tests.conftest import wait_for

# Appends ARGV[1] to a list and answers with the list's length; fails on "boom".
SCRIPT = """
if ARGV[1] == 'boom' then
    return redis.error_reply('refused ' .. ARGV[1])
end
return redis.call('RPUSH', KEYS[1], ARGV[1])
"""


def _concurrently(count, call):
    start = threading.Barrier(count)
    answers: dict[int, object] = {}

    def run(i):
        start.wait()
        try:
            answers[i] = call(i)
        except Exception as error:  # kept for the assertion
            answers[i] = error

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return answers


def test_every_concurrent_call_runs_once_and_gets_its_own_answer(connection):
    batcher = ScriptBatcher(connection, SCRIPT)
    answers = _concurrently(40, lambda i: batcher(["log"], [f"call-{i}"]))
    stored = [item.decode() for item in connection.lrange("log", 0, -1)]
    assert sorted(stored) == sorted(f"call-{i}" for i in range(40))
    # Each answer is the length the list had right after that call's own push.
    assert {i: stored[answers[i] - 1] for i in answers} == {i: f"call-{i}" for i in range(40)}


def test_a_refused_call_fails_alone(connection):
    batcher = ScriptBatcher(connection, SCRIPT)
    answers = _concurrently(10, lambda i: batcher(["log"], ["boom" if i == 3 else f"call-{i}"]))
    assert isinstance(answers.pop(3), ResponseError)
    assert all(isinstance(answer, int) for answer in answers.values())
    assert connection.llen("log") == 9


def test_a_call_with_an_argument_redis_cannot_take_fails_alone(connection):
    """It shares a batch with nine others, which still run."""
    batcher = ScriptBatcher(connection, SCRIPT)
    assert batcher(["log"], ["first"]) == 1
    # Redis holds the next call's script while the rest queue up behind it, one batch.
    connection.execute_command("CLIENT", "PAUSE", 10_000, "WRITE")
    answers: dict[int, object] = {}

    def call(i, value):
        try:
            answers[i] = batcher(["log"], [value])
        except Exception as error:  # kept for the assertion
            answers[i] = error

    threads = [threading.Thread(target=call, args=(0, "on the wire"))]
    threads[0].start()
    wait_for(lambda: batcher._sending and not batcher._waiting, what="the first call to be sent")
    threads += [threading.Thread(target=call, args=(i, "caf\udce9" if i == 4 else f"call-{i}")) for i in range(1, 10)]
    for thread in threads[1:]:
        thread.start()
    wait_for(lambda: len(batcher._waiting) == 9, what="nine calls to queue")
    connection.execute_command("CLIENT", "UNPAUSE")
    for thread in threads:
        thread.join(timeout=30)
    assert isinstance(answers.pop(4), UnicodeEncodeError)
    assert all(isinstance(answer, int) for answer in answers.values()), answers
    assert connection.llen("log") == 10


@pytest.fixture(params=[ScriptBatcher, PackedScript], ids=["batched", "packed"])
def kind(request):
    return request.param


def test_scripts_flushed_from_redis_are_loaded_again(connection, kind):
    batcher = kind(connection, SCRIPT)
    assert batcher(["log"], ["first"]) == 1
    connection.script_flush()
    assert batcher(["log"], ["second"]) == 2


def test_a_connection_redis_closed_is_opened_again_and_the_call_runs_once(connection, redis_url, kind):
    """A Redis restart breaks the connection the last call went out on; the next call must not fail for it."""
    from redis import Redis

    batcher = kind(Redis.from_url(redis_url), SCRIPT)  # a client of its own, whose connections the kill breaks
    assert batcher(["log"], ["first"]) == 1
    killed = connection.client_kill_filter(_type="normal", skipme=True)
    assert killed >= 1
    assert batcher(["log"], ["second"]) == 2
    assert [item.decode() for item in connection.lrange("log", 0, -1)] == ["first", "second"]


def test_calls_fail_with_the_connection_and_the_next_are_not_stuck_behind_them(kind):
    from redis import Redis
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError
    from redis.retry import Retry

    from service.embedded_redis import free_port

    batcher = kind(Redis(port=free_port(), socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0)), SCRIPT)
    for _ in range(2):
        with pytest.raises(ConnectionError):
            batcher(["log"], ["never"])


def test_a_packed_call_refused_or_with_a_word_redis_has_no_type_for_fails_and_the_next_runs(connection):
    script = PackedScript(connection, SCRIPT)
    with pytest.raises(ResponseError, match="refused boom"):
        script(["log"], ["boom"])
    with pytest.raises(DataError):
        script(["log"], [None])  # as redis-py refuses it, before anything is sent
    assert script(["log"], ["first"]) == 1
    assert [item.decode() for item in connection.lrange("log", 0, -1)] == ["first"]


def test_a_forked_child_sends_on_a_connection_of_its_own(connection, kind):
    """Parent and child call at once: on one shared socket they would read each other's replies."""
    import json
    import os

    batcher = kind(connection, SCRIPT)
    assert batcher(["log"], ["before"]) == 1

    def calls(who):
        return {f"{who}-{i}": batcher(["log"], [f"{who}-{i}"]) for i in range(300)}

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            try:
                outcome = calls("child")
            except Exception as error:  # reported to the parent, which asserts
                outcome = {"error": repr(error)}
            os.write(write_end, json.dumps(outcome).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    answers = calls("parent")
    with os.fdopen(read_end, "rb") as pipe:
        answers.update(json.loads(pipe.read()))
    os.waitpid(pid, 0)
    stored = [item.decode() for item in connection.lrange("log", 0, -1)]
    assert len(stored) == 601
    # Each answer is the length the list had right after that call's own push.
    assert {item: stored[length - 1] for item, length in answers.items()} == {item: item for item in answers}
