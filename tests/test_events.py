"""A job's events as the web relays them: one shared pub/sub connection a process."""
import json

from jobs import _events
from service.events import MAX_BACKLOG, Subscription


def test_a_job_left_and_followed_again_at_once_still_gets_its_events(connection):
    # The second SUBSCRIBE goes out before Redis has confirmed the UNSUBSCRIBE.
    for _ in range(50):
        Subscription(connection, "job-1").close()
        with Subscription(connection, "job-1") as subscription:
            _events.publish(connection, "job-1", "status", {"status": "finished"})
            assert subscription.next(timeout=5) == {"event": "status", "status": "finished"}


def test_followers_of_one_job_each_get_every_event_and_others_none(connection):
    with Subscription(connection, "job-1") as first, Subscription(connection, "job-1") as second, \
            Subscription(connection, "job-2") as other:
        _events.publish(connection, "job-1", "progress", {"progress": {"done": 1}})
        _events.publish(connection, "job-1", "status", {"status": "finished"})
        for subscription in (first, second):
            assert [subscription.next(5)["event"], subscription.next(5)["event"]] == ["progress", "status"]
        assert other.next(timeout=0.05) is None


def test_a_follower_that_falls_behind_loses_old_progress_never_a_status(connection):
    published = MAX_BACKLOG + 500
    with Subscription(connection, "job-1") as slow, Subscription(connection, "job-1") as prompt:
        with connection.pipeline(transaction=False) as pipe:
            _events.publish(connection, "job-1", "status", {"status": "started"}, pipeline=pipe)
            for done in range(published):
                _events.publish(connection, "job-1", "progress", {"progress": {"done": done}}, pipeline=pipe)
            _events.publish(connection, "job-1", "status", {"status": "finished"}, pipeline=pipe)
            pipe.execute()
        # Each event reaches both followers at once: once `prompt` has the
        # last, `slow`, which has read nothing yet, has all it will have.
        while prompt.next(timeout=5).get("status") != "finished":
            pass
        received = []
        while not received or received[-1].get("status") != "finished":
            received.append(slow.next(timeout=5))
    assert len(received) == MAX_BACKLOG
    assert [e["status"] for e in received if e["event"] == "status"] == ["started", "finished"]
    progress = [e["progress"]["done"] for e in received if e["event"] == "progress"]
    assert progress == list(range(published - (MAX_BACKLOG - 2), published))  # the latest, in order


def test_a_message_that_is_not_an_event_is_skipped(connection):
    with Subscription(connection, "job-1") as subscription:
        connection.publish(_events.channel("job-1"), "not json")
        _events.publish(connection, "job-1", "status", {"status": "finished"})
        assert subscription.next(timeout=5) == {"event": "status", "status": "finished"}
        assert json.dumps(subscription.next(timeout=0.05)) == "null"


def test_followers_of_a_redis_that_never_answers_each_learn_it_within_its_timeout():
    """A Redis that accepts connections and never answers (stopped, a network
    black hole): the followers that come while one connect is failing share
    its outcome, rather than connecting in turn, a timeout each."""
    import socket
    import threading
    import time

    import pytest
    from redis.exceptions import RedisError

    from service.connection import connect
    from service.settings import Settings

    timeout, followers = 0.5, 8
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(64)  # the kernel completes each connection; nothing ever reads or answers
    client = connect(Settings(redis_url=f"redis://127.0.0.1:{hole.getsockname()[1]}/0", redis_timeout=timeout))
    took: list[float] = []

    def follow():
        started = time.monotonic()
        with pytest.raises(RedisError):
            Subscription(client, "job-1")
        took.append(time.monotonic() - started)

    threads = [threading.Thread(target=follow) for _ in range(followers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(followers * timeout * 3)
    hole.close()
    assert len(took) == followers
    assert max(took) < 3 * timeout, sorted(took)  # in turn, the last would wait `followers` timeouts


def test_a_connect_that_fails_in_any_way_leaves_the_next_follower_free_to_connect(redis_url):
    import threading

    import pytest
    from redis import Connection, Redis

    failures = [RuntimeError("no file descriptor left")]

    class FailingOnce(Connection):
        def __init__(self, **kwargs):
            if failures:
                raise failures.pop()
            super().__init__(**kwargs)

    client = Redis.from_url(redis_url, connection_class=FailingOnce, socket_timeout=2)
    with pytest.raises(RuntimeError, match="no file descriptor left"):
        Subscription(client, "job-1")
    received = []

    def follow():
        with Subscription(client, "job-1") as subscription:
            _events.publish(client, "job-1", "status", {"status": "finished"})
            received.append(subscription.next(timeout=5))

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    follower.join(10)
    assert received == [{"event": "status", "status": "finished"}]
