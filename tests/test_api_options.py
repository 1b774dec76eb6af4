"""POST /jobs options: queue, retry and backoff, time, TTLs, dependencies, idempotency."""
import time
from datetime import datetime, timedelta, timezone

from tests.conftest import ADMIN_TOKEN, SCOPED_TOKENS, bearer, stored_keys, wait_for
import pytest

from rq.registry import ScheduledJobRegistry

from service.queues import ServiceJob


def post(client, body, **headers):
    return client.post("/jobs", json=body, headers=headers)


def stored(connection, job_id) -> ServiceJob:
    return ServiceJob.fetch(job_id, connection=connection)


def test_default_retry_is_three_tries_after_4_16_64_seconds(client, connection):
    job_id = post(client, {"job": "demo.add", "args": [1, 2]}).json["id"]
    job = stored(connection, job_id)
    assert job.retries_left == 3
    assert job.retry_intervals == [4, 16, 64]


def test_retry_list_and_exponential_policy(client, connection):
    listed = post(client, {"job": "demo.add", "args": [1, 2], "retry": {"max": 2, "backoff": [1, 2]}}).json["id"]
    assert stored(connection, listed).retry_intervals == [1, 2]
    policy = {"max": 5, "backoff": {"base": 2, "factor": 3, "cap": 20, "jitter": False}}
    exponential = post(client, {"job": "demo.add", "args": [1, 2], "retry": policy}).json["id"]
    assert stored(connection, exponential).retry_intervals == [2, 6, 18, 20, 20]
    jittered = {"max": 4, "backoff": {"base": 8, "factor": 2, "cap": 30, "jitter": True}}
    job = stored(connection, post(client, {"job": "demo.add", "args": [1, 2], "retry": jittered}).json["id"])
    for delay, full in zip(job.retry_intervals, [8, 16, 30, 30]):
        assert full / 2 <= delay <= full


def test_a_failing_job_is_retried_and_keeps_its_history(client, work):
    body = {"job": "demo.flaky", "kwargs": {"fail_times": 2}, "retry": {"max": 3, "backoff": [0]}}
    job_id = post(client, body).json["id"]
    work()
    job = client.get(f"/jobs/{job_id}").json
    assert job["status"] == "finished"
    assert job["result"] == 3
    assert job["attempts"] == 3
    assert [a["outcome"] for a in job["history"]] == ["retried", "retried", "finished"]
    assert "attempt 1 of 3 fails on purpose" in job["history"][0]["error"]["message"]
    assert job["retries_left"] == 1


def test_a_job_out_of_retries_fails_with_its_exception(client, work):
    body = {"job": "demo.flaky", "kwargs": {"fail_times": 5}, "retry": {"max": 1, "backoff": [0]}}
    job_id = post(client, body).json["id"]
    work()
    job = client.get(f"/jobs/{job_id}").json
    assert job["status"] == "failed"
    assert job["error"]["message"] == "attempt 2 of 6 fails on purpose"
    assert job["attempts"] == 2


def test_a_retry_with_backoff_waits_scheduled_with_its_time(client, work):
    body = {"job": "demo.flaky", "retry": {"max": 1, "backoff": [600]}}
    job_id = post(client, body).json["id"]
    work()
    job = client.get(f"/jobs/{job_id}").json
    assert job["status"] == "scheduled"
    due = datetime.fromisoformat(job["scheduled_for"])
    assert timedelta(seconds=590) < due - datetime.now(timezone.utc) <= timedelta(seconds=600)


def test_delay_and_at_schedule_the_job(client, connection):
    delayed = post(client, {"job": "demo.add", "args": [1, 2], "delay": 120}).json
    assert delayed["status"] == "scheduled"
    due = datetime.fromisoformat(delayed["scheduled_for"])
    assert timedelta(seconds=110) < due - datetime.now(timezone.utc) <= timedelta(seconds=121)
    at = (datetime.now(timezone.utc) + timedelta(hours=2)).replace(microsecond=0)
    timed = post(client, {"job": "demo.add", "args": [1, 2], "at": at.isoformat()}).json
    assert datetime.fromisoformat(timed["scheduled_for"]) == at
    assert connection.llen("rq:queue:default") == 0


@pytest.mark.parametrize("at", ["1969-12-31T23:59:59Z", "0001-01-01T00:00:00Z", "2020-06-01T12:00:00+02:00"])
def test_a_start_time_gone_by_is_due_at_once(client, connection, at):
    before = datetime.now(timezone.utc)
    timed = post(client, {"job": "demo.add", "args": [1, 2], "at": at}).json
    assert before - timedelta(seconds=1) <= datetime.fromisoformat(timed["scheduled_for"]) <= before + timedelta(seconds=2)
    due = ScheduledJobRegistry("default", connection=connection).get_jobs_to_schedule(int(time.time()) + 2)
    assert due == [timed["id"]]


def test_a_start_time_between_seconds_is_never_brought_forward(client):
    at = (datetime.now(timezone.utc) + timedelta(hours=2)).replace(microsecond=700_000)
    timed = post(client, {"job": "demo.add", "args": [1, 2], "at": at.isoformat()}).json
    assert datetime.fromisoformat(timed["scheduled_for"]) == at.replace(microsecond=0) + timedelta(seconds=1)


@pytest.mark.parametrize(
    "extra",
    [
        {"delay": 5, "at": "2030-01-01T00:00:00Z"},
        {"at": "2030-01-01T00:00:00"},
        {"delay": -1},
        {"timeout": 0},
        {"retry": {"max": 100}},
        {"retry": {"max": 2, "backoff": {"base": -1}}},
        {"depends_on": ["a b"]},
        {"description": "x" * 501},
        {"delay": 366 * 86400 + 1},
        # Times a datetime can hold but scheduling could not reach (an overflow,
        # after the rate limits were counted), or that lie past the 366 days.
        {"at": "9999-12-31T23:59:59-10:00"},
        {"at": "9999-12-31T23:59:59.5Z"},
        {"at": "0001-01-01T00:00:00+14:00"},
        {"at": "2100-01-01T00:00:00Z"},
        {"at": "9999-12-31T23:59:59Z", "webhook": {"url": "https://example.com/hook", "secret": "s" * 32}},
    ],
)
def test_bad_options_are_422_and_write_nothing(client, connection, extra):
    response = post(client, {"job": "demo.add", "args": [1, 2], **extra})
    assert response.status_code == 422
    assert response.content_type == "application/problem+json"
    assert stored_keys(connection) == []


def test_timeouts_and_ttls_are_stored_on_the_job(client, connection):
    body = {"job": "demo.add", "args": [1, 2], "timeout": 30, "result_ttl": 60, "ttl": 90, "description": "sum"}
    job = stored(connection, post(client, body).json["id"])
    assert (job.timeout, job.result_ttl, job.ttl, job.description) == (30, 60, 90, "sum")


def test_a_job_waits_for_its_dependency(client, work):
    first = post(client, {"job": "demo.add", "args": [1, 2], "queue": "low"}).json["id"]
    second = post(client, {"job": "demo.add", "args": [3, 4], "depends_on": [first]}).json
    assert second["status"] == "deferred"
    assert second["depends_on"] == [first]
    work()
    assert client.get(f"/jobs/{second['id']}").json["status"] == "finished"


def test_a_job_whose_dependency_failed_names_it_and_runs_once_that_one_is_retried(client, work):
    first = post(client, {"job": "demo.flaky", "kwargs": {"fail_times": 1}, "retry": {"max": 0}, "queue": "low"}).json["id"]
    second = post(client, {"job": "demo.add", "args": [3, 4], "depends_on": [first]}).json["id"]
    assert client.get(f"/jobs/{second}").json["waiting_on"] == [{"id": first, "status": "queued"}]
    work()
    view = client.get(f"/jobs/{second}").json
    assert view["status"] == "deferred" and view["waiting_on"] == [{"id": first, "status": "failed"}]
    assert client.post(f"/jobs/{first}/retry").status_code == 202
    work()
    view = client.get(f"/jobs/{second}").json
    assert (view["status"], view["result"], view.get("waiting_on")) == ("finished", 7, None)


def test_an_unknown_dependency_is_422(client, connection):
    response = post(client, {"job": "demo.add", "args": [1, 2], "depends_on": ["nope"]})
    assert response.status_code == 422
    assert "nope" in response.json["detail"]
    assert stored_keys(connection) == []


def test_depending_on_a_job_that_failed_or_was_canceled_is_422(client, connection, work):
    failed = post(client, {"job": "demo.fail", "retry": {"max": 0}}).json["id"]
    work()
    canceled = post(client, {"job": "demo.add", "args": [1, 2]}).json["id"]
    assert client.delete(f"/jobs/{canceled}").json["status"] == "canceled"
    before = stored_keys(connection)
    for ended, status in ((failed, "failed"), (canceled, "canceled")):
        response = post(client, {"job": "demo.add", "args": [1, 2], "depends_on": [ended]})
        assert response.status_code == 422
        assert f"{ended!r} is {status}" in response.json["detail"]
    assert stored_keys(connection) == before


def test_a_job_declares_its_own_defaults(client, connection, tmp_path, monkeypatch):
    from jobs import defaults
    from service.registry import JobRegistry, JobSpec

    @defaults(queue="low", retry={"max": 1, "backoff": [7]}, timeout=42)
    def chore() -> None:
        """A plain function still."""

    assert chore() is None  # still callable directly
    registry = client.application.extensions["jobservice"]["registry"]
    specs = {spec.name: spec for spec in registry}
    specs["demo.chore"] = JobSpec("demo.chore", chore)
    monkeypatch.setitem(client.application.extensions["jobservice"], "registry", JobRegistry(specs))
    job = stored(connection, post(client, {"job": "demo.chore"}).json["id"])
    assert (job.origin, job.retry_intervals, job.timeout) == ("low", [7], 42)
    # The request still wins over the job's own defaults.
    job = stored(connection, post(client, {"job": "demo.chore", "queue": "high", "timeout": 5}).json["id"])
    assert (job.origin, job.timeout) == ("high", 5)


def test_the_same_idempotency_key_returns_the_first_job(client, connection):
    body = {"job": "demo.add", "args": [1, 2]}
    first = post(client, body, **{"Idempotency-Key": "order-17"})
    again = post(client, {"args": [1, 2], "job": "demo.add"}, **{"Idempotency-Key": "order-17"})
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json["id"] == first.json["id"]
    assert again.headers["Location"] == first.headers["Location"]
    assert connection.llen("rq:queue:default") == 1


def test_an_idempotency_key_with_another_body_is_409(client, connection):
    post(client, {"job": "demo.add", "args": [1, 2]}, **{"Idempotency-Key": "order-18"})
    response = post(client, {"job": "demo.add", "args": [1, 3]}, **{"Idempotency-Key": "order-18"})
    assert response.status_code == 409
    assert response.content_type == "application/problem+json"
    assert connection.llen("rq:queue:default") == 1


def test_an_idempotency_key_belongs_to_the_token_that_sent_it(client, connection):
    """Another client's key neither shows it the first client's job nor blocks the first client."""
    body = {"job": "demo.add", "args": [1, 2]}
    stranger = {**bearer(SCOPED_TOKENS["enqueue"]), "Idempotency-Key": "invoice-42"}
    owner = {**bearer(ADMIN_TOKEN), "Idempotency-Key": "invoice-42"}
    theirs = post(client, {"job": "demo.add", "args": [9, 9]}, **stranger)
    mine = post(client, body, **owner)
    assert (theirs.status_code, mine.status_code) == (202, 202)
    assert post(client, body, **owner).json["id"] == mine.json["id"]
    assert post(client, body, **stranger).status_code == 409  # its own key, with another body
    assert connection.llen("rq:queue:default") == 2


def test_an_overlong_idempotency_key_is_400(client, connection):
    response = post(client, {"job": "demo.add", "args": [1, 2]}, **{"Idempotency-Key": "k" * 201})
    assert response.status_code == 400
    assert stored_keys(connection) == []


def test_a_job_that_comes_to_depend_on_a_running_job_runs_once_that_one_finishes(client, worker_process):
    first = post(client, {"job": "demo.sleep", "args": [1]}).json["id"]
    wait_for(lambda: client.get(f"/jobs/{first}").json["status"] == "started", what="the first job to start")
    second = post(client, {"job": "demo.add", "args": [3, 4], "depends_on": [first]}).json
    assert second["status"] == "deferred"
    answer = client.get(f"/jobs/{second['id']}?wait=20").json
    assert answer["status"] == "finished" and answer["result"] == 7
    assert client.get(f"/jobs/{first}").json["status"] == "finished"


def test_a_finished_job_is_recorded_as_rq_records_it(client, work, connection):
    job_id = post(client, {"job": "demo.add", "args": [1, 2]}).json["id"]
    work()
    job = ServiceJob.fetch(job_id, connection=connection)
    assert job.get_status() == "finished" and job.return_value() == 3
    assert job.latest_result().type.name == "SUCCESSFUL"
    assert job_id in job.finished_job_registry.get_job_ids()
    assert not job.started_job_registry.get_job_ids()
    assert 0 < connection.ttl(job.key) <= job.get_result_ttl(500)
    worker = connection.hgetall(next(iter(connection.scan_iter("rq:worker:*[^s]"))))
    assert worker[b"successful_job_count"] == b"1"
