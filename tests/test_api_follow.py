"""Following a job: its detail, long polls and Server-Sent Events, with a real worker."""
import json
import threading

from tests.conftest import authorized_client, wait_for


def post(client, body):
    response = client.post("/jobs", json=body)
    assert response.status_code == 202, response.json
    return response.json["id"]


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def read_events(response) -> list[tuple[str, dict]]:
    """Parse a whole text/event-stream body into (event, data) pairs, as
    strictly as a browser's `JSON.parse`."""
    events = []
    for block in b"".join(response.response).decode().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if line and not line.startswith(":"))
        if "event" in fields:
            events.append((fields["event"], json.loads(fields["data"], parse_constant=_no_constant)))
    return events


def test_a_queued_job_shows_its_position(client):
    ids = [post(client, {"job": "demo.add", "args": [i, i]}) for i in range(3)]
    assert [client.get(f"/jobs/{job_id}").json["position"] for job_id in ids] == [0, 1, 2]


def test_progress_is_visible_in_the_job(client, work):
    job_id = post(client, {"job": "demo.steps", "kwargs": {"count": 4}})
    work()
    job = client.get(f"/jobs/{job_id}").json
    assert job["progress"]["done"] == 4
    assert job["progress"]["total"] == 4
    assert job["progress"]["percent"] == 100.0
    assert job["progress"]["message"] == "step 4 of 4"


def test_long_poll_answers_when_the_job_ends(client, worker_process):
    job_id = post(client, {"job": "demo.sleep", "args": [0.3]})
    job = client.get(f"/jobs/{job_id}?wait=30").json
    assert job["status"] == "finished"


def test_long_poll_answers_with_the_current_state_when_time_is_up(client):
    job_id = post(client, {"job": "demo.add", "args": [1, 2]})  # no worker runs: stays queued
    job = client.get(f"/jobs/{job_id}?wait=0.2").json
    assert job["status"] == "queued"


def test_bad_wait_is_422(client):
    job_id = post(client, {"job": "demo.add", "args": [1, 2]})
    for wait in ("-1", "61", "soon"):
        assert client.get(f"/jobs/{job_id}?wait={wait}").status_code == 422


def test_events_stream_status_changes_and_progress_until_the_job_ends(client, worker_process):
    job_id = post(client, {"job": "demo.steps", "kwargs": {"count": 3, "pause": 0.05}})
    response = client.get(f"/jobs/{job_id}/events")
    assert response.status_code == 200
    assert response.mimetype == "text/event-stream"
    events = read_events(response)  # returns once the server closes the stream
    statuses = [data["status"] for kind, data in events if kind == "status"]
    assert statuses[-1] == "finished"
    assert "started" in statuses
    assert [data["done"] for kind, data in events if kind == "progress"] == [1, 2, 3]
    assert events[-1][1]["result"] == 3


def test_events_of_an_ended_job_close_after_one_status(client, work):
    job_id = post(client, {"job": "demo.add", "args": [1, 2]})
    work()
    events = read_events(client.get(f"/jobs/{job_id}/events"))
    assert [(kind, data["status"]) for kind, data in events] == [("status", "finished")]


def test_events_write_a_result_json_has_no_number_for_as_null_like_the_job(client, work):
    job_id = post(client, {"job": "demo.add", "args": [1e308, 1e308]})
    work()
    [(kind, data)] = read_events(client.get(f"/jobs/{job_id}/events"))
    assert (kind, data["status"], data["result"]) == ("status", "finished", None)
    assert data == client.get(f"/jobs/{job_id}").json


def test_events_of_an_unknown_job_are_404(client):
    response = client.get("/jobs/nope/events")
    assert response.status_code == 404
    assert response.content_type == "application/problem+json"


def test_a_running_job_can_be_stopped(client, worker_process):
    job_id = post(client, {"job": "demo.sleep", "args": [60]})
    wait_for(lambda: client.get(f"/jobs/{job_id}").json["status"] == "started", what="the job to start")
    response = client.delete(f"/jobs/{job_id}")
    assert response.json == {"id": job_id, "status": "stopping"}
    job = client.get(f"/jobs/{job_id}?wait=30").json
    assert job["status"] == "stopped"
    retried = client.post(f"/jobs/{job_id}/retry")
    assert retried.status_code == 202
    assert retried.json["status"] == "queued"
    # The retry would sleep for a minute: stop it, so the worker stops at once.
    assert client.delete(f"/jobs/{job_id}").json["status"] in ("canceled", "stopping")


def test_a_worker_stops_every_job_it_is_asked_to_not_only_its_first(client, worker_process):
    for _ in range(3):
        job_id = post(client, {"job": "demo.sleep", "args": [60], "retry": {"max": 0}})
        wait_for(lambda: client.get(f"/jobs/{job_id}").json["status"] == "started", what="the job to start")
        assert client.delete(f"/jobs/{job_id}").json["status"] == "stopping"
        assert client.get(f"/jobs/{job_id}?wait=30").json["status"] == "stopped"


def test_a_job_that_keeps_no_result_still_answers_its_long_poll_and_its_stream_when_it_ends(client, worker_process):
    job_id = post(client, {"job": "demo.sleep", "args": [0.3], "result_ttl": 0})
    response = client.get(f"/jobs/{job_id}?wait=30")
    assert response.status_code == 200, response.json
    assert (response.json["status"], response.json["result"]) == ("finished", None)

    job_id = post(client, {"job": "demo.sleep", "args": [0.3], "result_ttl": 0})
    events = read_events(client.get(f"/jobs/{job_id}/events"))
    assert [data["status"] for _, data in events][-1] == "finished"
    assert client.get(f"/jobs/{job_id}").status_code == 404  # its record went with it, as asked


def _subscribed_connections(connection) -> list[dict]:
    """Redis's clients that hold a subscription (no worker runs here: only the web's)."""
    return [c for c in connection.client_list() if int(c["sub"]) > 0]


def test_long_polls_one_after_another_open_no_redis_connection_each(client, connection):
    job_id = post(client, {"job": "demo.add", "args": [1, 2]})  # no worker runs: it stays queued
    client.get(f"/jobs/{job_id}?wait=0.01")  # the process's events connection opens here, once
    before = connection.info("stats")["total_connections_received"]
    for _ in range(20):
        assert client.get(f"/jobs/{job_id}?wait=0.01").json["status"] == "queued"
    # Each used to open (and close) a pub/sub connection of its own: 20 here.
    assert connection.info("stats")["total_connections_received"] - before <= 1


def test_clients_following_many_jobs_at_once_share_one_redis_connection(app, connection, work):
    followers = 12
    ids = [post(authorized_client(app), {"job": "demo.add", "args": [i, 1]}) for i in range(followers)]
    answers: dict[str, dict] = {}

    def follow(job_id):
        answers[job_id] = authorized_client(app).get(f"/jobs/{job_id}?wait=30").json

    threads = [threading.Thread(target=follow, args=(job_id,)) for job_id in ids]
    for thread in threads:
        thread.start()
    channels = [f"jobservice:events:{job_id}" for job_id in ids]
    wait_for(lambda: all(count == 1 for _, count in connection.pubsub_numsub(*channels)),
             what="every follower to be subscribed")
    assert len(_subscribed_connections(connection)) == 1
    work()
    for thread in threads:
        thread.join(30)
    assert {job_id: (answer["status"], answer["result"]) for job_id, answer in answers.items()} == {
        job_id: ("finished", i + 1) for i, job_id in enumerate(ids)
    }
    wait_for(lambda: connection.pubsub_numsub(*channels) == [(c.encode(), 0) for c in channels],
             what="the followers' channels to be left")


def test_followers_of_one_job_read_it_again_together_when_it_changes(app, connection):
    followers = 40
    job_id = post(authorized_client(app), {"job": "demo.add", "args": [1, 2]})  # no worker runs: it stays queued
    answers: list[str] = []

    def follow():
        answers.append(authorized_client(app).get(f"/jobs/{job_id}?wait=30").json["status"])

    threads = [threading.Thread(target=follow) for _ in range(followers)]
    for thread in threads:
        thread.start()
    wait_for(lambda: connection.pubsub_numsub(f"jobservice:events:{job_id}")[0][1] == 1,
             what="the followers to subscribe")
    before = connection.info("stats")["total_connections_received"]
    # Canceled: every follower waiting wakes at the same moment to read the job again.
    assert authorized_client(app).delete(f"/jobs/{job_id}").json["status"] == "canceled"
    for thread in threads:
        thread.join(30)
    assert answers == ["canceled"] * followers
    # Each reading on its own took a connection each at once: 30 and more here.
    assert connection.info("stats")["total_connections_received"] - before <= 5
