from tests.conftest import stored_keys
import json
import zlib

import pytest


def enqueue(client, body):
    return client.post("/jobs", json=body)


def test_enqueue_returns_202_with_location_and_the_job_runs(client, work):
    response = enqueue(client, {"job": "demo.add", "args": [1, 2], "kwargs": {}})
    assert response.status_code == 202
    job_id = response.json["id"]
    assert response.json["status"] == "queued"
    assert response.headers["Location"] == f"/jobs/{job_id}"

    work()

    job = client.get(f"/jobs/{job_id}").json
    assert job["status"] == "finished"
    assert job["result"] == 3
    assert job["job"] == "demo.add"
    assert job["queue"] == "default"
    for stamp in ("enqueued_at", "started_at", "ended_at"):
        assert job[stamp].endswith("Z")
    assert job["enqueued_at"] <= job["started_at"] <= job["ended_at"]


def test_a_failed_job_shows_its_exception(client, work):
    job_id = enqueue(client, {"job": "demo.fail", "kwargs": {"message": "disk full"}, "retry": {"max": 0}}).json["id"]
    work()
    job = client.get(f"/jobs/{job_id}").json
    assert job["status"] == "failed"
    assert (job["error"]["type"], job["error"]["message"]) == ("RuntimeError", "disk full")
    assert 'raise RuntimeError(message)' in job["error"]["traceback"]
    assert "result" not in job or job["result"] is None


def test_an_exception_whose_message_runs_over_lines_keeps_its_type(client, work):
    message = "first line\nKeyError: a line of the message, not the exception"
    job_id = enqueue(client, {"job": "demo.fail", "kwargs": {"message": message}, "retry": {"max": 0}}).json["id"]
    work()
    job = client.get(f"/jobs/{job_id}").json
    assert (job["error"]["type"], job["error"]["message"]) == ("RuntimeError", message)
    assert job["history"][-1]["error"]["type"] == "RuntimeError"


def test_job_records_are_json_not_pickle(client, connection):
    job_id = enqueue(client, {"job": "demo.add", "args": [1, 2]}).json["id"]
    stored = zlib.decompress(connection.hget(f"rq:job:{job_id}", "data"))  # RQ compresses it
    assert json.loads(stored)[0] == "jobs.demo.add"


def test_the_job_goes_to_the_queue_it_names(client, connection):
    enqueue(client, {"job": "demo.add", "args": [1, 2], "queue": "high"})
    assert connection.llen("rq:queue:high") == 1
    assert connection.llen("rq:queue:default") == 0


@pytest.mark.parametrize("job_id", ["does-not-exist", "%3B", "a:b", "rq:job:x"])
def test_unknown_job_id_is_404_problem(client, job_id):
    response = client.get(f"/jobs/{job_id}")
    assert response.status_code == 404
    assert response.content_type == "application/problem+json"
    assert "never existed" in response.json["detail"]


@pytest.mark.parametrize("name", ["os.system", "demo.nope", "../x", "subprocess.run", "builtins.eval", "jobs.demo.add"])
def test_job_names_outside_the_allow_list_are_refused_and_write_nothing(client, connection, name):
    response = enqueue(client, {"job": name, "args": ["echo hacked"]})
    assert response.status_code == 404
    assert response.content_type == "application/problem+json"
    assert name in response.json["detail"]
    assert stored_keys(connection) == []


@pytest.mark.parametrize(
    "body, argument",
    [
        ({"job": "demo.add", "args": [1]}, "y"),
        ({"job": "demo.add", "args": [1, 2], "kwargs": {"z": 1}}, "z"),
        ({"job": "demo.add", "args": ["one", 2]}, "x"),
        ({"job": "demo.sleep", "kwargs": {"seconds": [1]}}, "seconds"),
        # Values of the right type that the job could never run with.
        ({"job": "demo.sleep", "args": [-1]}, "seconds"),
        ({"job": "demo.sleep", "args": [1e300]}, "seconds"),
        ({"job": "demo.steps", "kwargs": {"pause": -1}}, "pause"),
        ({"job": "demo.add", "args": [10**400, 1.5]}, "x"),
        ({"job": "canary.run", "kwargs": {"seconds": -1}}, "seconds"),
    ],
)
def test_wrong_arguments_are_422_naming_the_argument(client, connection, body, argument):
    response = enqueue(client, body)
    assert response.status_code == 422
    assert response.content_type == "application/problem+json"
    assert [e["argument"] for e in response.json["errors"]] == [argument]
    assert stored_keys(connection) == []


def test_unknown_queue_is_422(client, connection):
    response = enqueue(client, {"job": "demo.add", "args": [1, 2], "queue": "urgent"})
    assert response.status_code == 422
    assert "urgent" in response.json["detail"]
    assert stored_keys(connection) == []


@pytest.mark.parametrize(
    "body",
    [{"args": [1, 2]}, {"job": 5}, {"job": "demo.add", "args": {"x": 1}}, {"job": "demo.add", "surprise": 1}, []],
)
def test_malformed_request_bodies_are_422(client, connection, body):
    response = enqueue(client, body)
    assert response.status_code == 422
    assert response.content_type == "application/problem+json"
    assert response.json["errors"]
    assert stored_keys(connection) == []


def test_malformed_json_is_400(client, connection):
    response = client.post("/jobs", data="{not json", content_type="application/json")
    assert response.status_code == 400
    assert response.content_type == "application/problem+json"
    assert stored_keys(connection) == []


def test_half_a_surrogate_pair_is_400_and_stores_nothing(client, connection):
    # Valid JSON, but not text: Redis could not store it, nor an answer carry it.
    body = '{"job": "demo.fail", "kwargs": {"message": "caf\\udce9"}}'
    response = client.post("/jobs", data=body, content_type="application/json")
    assert response.status_code == 400
    assert response.content_type == "application/problem+json"
    assert "surrogate" in response.json["detail"]
    assert stored_keys(connection) == []
    # A whole pair is a character like any other.
    body = '{"job": "demo.fail", "kwargs": {"message": "\\ud83d\\ude00"}}'
    response = client.post("/jobs", data=body, content_type="application/json")
    assert response.status_code == 202
    assert response.json["kwargs"] == {"message": "\U0001f600"}


def test_half_a_surrogate_pair_in_raw_utf8_is_400_too(client, connection):
    # The three bytes UTF-8 would give U+DCE9, were it a character: Python's
    # parser lets them through as the same half pair as the `\udce9` escape.
    body = '{"job": "demo.fail", "kwargs": {"message": "caf'.encode() + b"\xed\xb3\xa9" + b'"}}'
    response = client.post("/jobs", data=body, content_type="application/json")
    assert response.status_code == 400
    assert "surrogate" in response.json["detail"]
    assert stored_keys(connection) == []
    response = client.post("/jobs", data='{"job": "demo.fail", "kwargs": {"message": "café"}}'.encode(),
                           content_type="application/json")
    assert response.status_code == 202
    assert response.json["kwargs"] == {"message": "café"}


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e999", "-1e999"])
def test_numbers_json_does_not_have_are_400_not_null(client, connection, number):
    body = '{"job": "demo.add", "args": [%s, 2]}' % number
    response = client.post("/jobs", data=body, content_type="application/json")
    assert response.status_code == 400
    assert response.content_type == "application/problem+json"
    assert number.lstrip("-") in response.json["detail"]
    assert stored_keys(connection) == []


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16", "utf-32"])
def test_a_body_not_in_utf8_is_400(client, connection, encoding):
    # Were it read, the checks on its bytes (an escaped half surrogate pair) would miss.
    body = '{"job": "demo.fail", "kwargs": {"message": "caf\\udce9"}}'.encode(encoding)
    response = client.post("/jobs", data=body, content_type="application/json")
    assert response.status_code == 400
    assert "UTF-8" in response.json["detail"]
    assert stored_keys(connection) == []


def test_a_chunked_body_is_read_and_bounded_like_any_other(redis_url, connection, tmp_path):
    """HTTP clients stream a body in chunks when they do not know its length;
    gunicorn hands it over whole, and MAX_BODY_BYTES bounds it all the same."""
    from tests import chaos, processes

    def chunks(data: bytes, size: int = 4096):
        yield from (data[i:i + size] for i in range(0, len(data), size))

    with chaos.web(redis_url, tmp_path / "web.log", MAX_BODY_BYTES="100000") as base:
        session = processes.session()
        headers = {"Content-Type": "application/json"}
        body = json.dumps({"job": "demo.add", "args": [2, 3]}).encode()
        response = session.post(f"{base}/jobs", data=chunks(body), headers=headers, timeout=10)
        assert response.request.headers["Transfer-Encoding"] == "chunked"
        assert response.status_code == 202, response.text
        assert response.json()["kwargs"] == {"x": 2, "y": 3}
        jobs_before = stored_keys(connection)
        big = json.dumps({"job": "demo.fail", "kwargs": {"message": "x" * 200_000}}).encode()
        response = session.post(f"{base}/jobs", data=chunks(big), headers=headers, timeout=10)
        assert response.status_code == 413
        response = session.post(f"{base}/jobs", data=chunks(b""), headers=headers, timeout=10)
        assert response.status_code == 400
        assert stored_keys(connection) == jobs_before


def test_a_result_holding_half_a_surrogate_pair_is_still_answered(client, connection, work):
    """Job code may return text decoded with `surrogateescape` (file names, a
    program's output); the job's answer escapes it rather than failing."""
    from rq.results import Result

    from service.queues import fetch_job

    job_id = enqueue(client, {"job": "demo.add", "args": [1, 2]}).json["id"]
    work()
    Result.create(fetch_job(job_id, connection), Result.Type.SUCCESSFUL, ttl=500, return_value="caf\udce9")
    response = client.get(f"/jobs/{job_id}")
    assert response.status_code == 200
    assert response.json["result"] == "caf\udce9"


def test_a_body_that_is_not_json_is_415(client, connection):
    response = client.post("/jobs", data="job=demo.add", content_type="application/x-www-form-urlencoded")
    assert response.status_code == 415
    assert response.content_type == "application/problem+json"
    assert stored_keys(connection) == []


def test_an_oversized_body_is_413(client, connection, settings):
    padding = "x" * (settings.max_body_bytes + 1)
    response = enqueue(client, {"job": "demo.fail", "kwargs": {"message": padding}})
    assert response.status_code == 413
    assert response.content_type == "application/problem+json"
    assert stored_keys(connection) == []


def test_queues_show_their_depth(client):
    for _ in range(3):
        enqueue(client, {"job": "demo.add", "args": [1, 2], "queue": "low"})
    queues = {q["name"]: q["depth"] for q in client.get("/queues").json["queues"]}
    assert queues == {"high": 0, "default": 0, "low": 3}


def test_health(client):
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json == {"status": "ok"}


def test_an_enqueued_job_is_stored_exactly_as_rq_itself_stores_it(client, connection):
    """The one-script enqueue writes RQ's own record, so rq info, the dashboard
    and plain RQ clients read it; the same job enqueued by RQ is the reference.
    One field is the service's own, which RQ leaves alone: no webhook waits."""
    from service.queues import ServiceQueue

    ours = enqueue(client, {"job": "demo.add", "args": [1, 2], "queue": "low"}).json
    record = connection.hgetall(f"rq:job:{ours['id']}")
    spec = client.application.extensions["jobservice"]["registry"].get("demo.add")
    queue = ServiceQueue("low", connection=connection)
    theirs = queue.enqueue_job(queue.create_job(
        spec.func, kwargs={"x": 1, "y": 2}, timeout=int(record[b"timeout"]), result_ttl=int(record[b"result_ttl"]),
        failure_ttl=int(record[b"failure_ttl"]), retry=__import__("rq").Retry(3, [4, 16, 64]),
    ))
    reference = connection.hgetall(theirs.key)

    assert record.pop(b"webhook") == b""
    assert record.keys() == reference.keys()
    moments = {b"created_at", b"enqueued_at"}
    assert {k: v for k, v in record.items() if k not in moments} == {k: v for k, v in reference.items() if k not in moments}
    assert connection.lrange("rq:queue:low", 0, -1) == [ours["id"].encode(), theirs.id.encode()]
    assert b"rq:queue:low" in connection.smembers("rq:queues")
    assert ours["position"] == 0
