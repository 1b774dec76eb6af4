"""Acting on jobs and looking across them: cancel, retry, list, registry, queues, workers."""
import pytest


def post(client, body):
    response = client.post("/jobs", json=body)
    assert response.status_code == 202, response.json
    return response.json["id"]


def test_cancel_a_queued_job(client, connection, work):
    job_id = post(client, {"job": "demo.add", "args": [1, 2]})
    response = client.delete(f"/jobs/{job_id}")
    assert response.status_code == 200
    assert response.json == {"id": job_id, "status": "canceled"}
    assert connection.llen("rq:queue:default") == 0
    work()
    assert client.get(f"/jobs/{job_id}").json["status"] == "canceled"


def test_cancel_a_scheduled_job(client, connection):
    job_id = post(client, {"job": "demo.add", "args": [1, 2], "delay": 60})
    assert client.delete(f"/jobs/{job_id}").json["status"] == "canceled"
    assert connection.zcard("rq:scheduled:default") == 0


def test_cancelling_an_ended_job_is_409_and_changes_nothing(client, work):
    job_id = post(client, {"job": "demo.add", "args": [1, 2]})
    work()
    response = client.delete(f"/jobs/{job_id}")
    assert response.status_code == 409
    assert response.content_type == "application/problem+json"
    assert client.get(f"/jobs/{job_id}").json["status"] == "finished"


@pytest.mark.parametrize("method, path", [("delete", "/jobs/nope"), ("post", "/jobs/nope/retry"), ("get", "/jobs/nope")])
def test_acting_on_an_unknown_job_is_404(client, method, path):
    response = getattr(client, method)(path)
    assert response.status_code == 404
    assert response.content_type == "application/problem+json"


def test_retry_a_failed_job(client, work):
    job_id = post(client, {"job": "demo.flaky", "kwargs": {"fail_times": 1}, "retry": {"max": 0}})
    work()
    assert client.get(f"/jobs/{job_id}").json["status"] == "failed"
    response = client.post(f"/jobs/{job_id}/retry")
    assert response.status_code == 202
    assert response.json["status"] == "queued"
    work()
    job = client.get(f"/jobs/{job_id}").json
    assert (job["status"], job["result"]) == ("finished", 2)
    assert [a["outcome"] for a in job["history"]] == ["failed", "finished"]


def test_a_retry_that_read_the_job_before_another_retry_ended_is_refused(client, work, connection):
    """Two retries at once: the second read the job while it was still failed."""
    from service import job_actions
    from service.queues import ServiceJob

    job_id = post(client, {"job": "demo.fail", "args": ["boom"], "retry": {"max": 0}})
    work()
    second = ServiceJob.fetch(job_id, connection)
    assert client.post(f"/jobs/{job_id}/retry").status_code == 202
    with pytest.raises(job_actions.NotAllowed, match="is queued"):
        job_actions.retry(second, connection)
    assert connection.lrange("rq:queue:default", 0, -1) == [job_id.encode()]


def test_retrying_a_job_that_did_not_fail_is_409(client):
    job_id = post(client, {"job": "demo.add", "args": [1, 2]})
    response = client.post(f"/jobs/{job_id}/retry")
    assert response.status_code == 409
    assert client.get(f"/jobs/{job_id}").json["status"] == "queued"


def test_list_newest_first_with_filters(client, work):
    failed = post(client, {"job": "demo.fail", "retry": {"max": 0}})
    done = post(client, {"job": "demo.add", "args": [1, 2], "queue": "high"})
    work()
    queued = post(client, {"job": "demo.add", "args": [3, 4], "queue": "low"})
    ids = [job["id"] for job in client.get("/jobs").json["jobs"]]
    assert ids == [queued, done, failed]
    assert [j["id"] for j in client.get("/jobs?status=failed").json["jobs"]] == [failed]
    assert [j["id"] for j in client.get("/jobs?queue=low").json["jobs"]] == [queued]
    assert client.get("/jobs?status=finished&queue=low").json["jobs"] == []
    assert client.get("/jobs?queue=urgent").json["jobs"] == []


def test_list_pages_with_a_cursor(client):
    ids = [post(client, {"job": "demo.add", "args": [i, i]}) for i in range(7)]
    seen, cursor = [], None
    while True:
        page = client.get("/jobs", query_string={"limit": 3, **({"cursor": cursor} if cursor else {})}).json
        seen += [job["id"] for job in page["jobs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))


def test_list_skips_jobs_whose_record_expired(client, connection):
    kept = post(client, {"job": "demo.add", "args": [1, 2]})
    gone = post(client, {"job": "demo.add", "args": [3, 4]})
    connection.delete(f"rq:job:{gone}")
    assert [job["id"] for job in client.get("/jobs").json["jobs"]] == [kept]
    assert client.get(f"/jobs/{gone}").status_code == 404


@pytest.mark.parametrize("query", ["status=lost", "limit=0", "limit=101", "cursor=garbage", "colour=red"])
def test_bad_list_queries_are_422(client, query):
    response = client.get(f"/jobs?{query}")
    assert response.status_code == 422
    assert response.content_type == "application/problem+json"


def test_registry_lists_jobs_with_their_parameters(client):
    jobs = {job["name"]: job for job in client.get("/jobs/registry").json["jobs"]}
    assert "os.system" not in jobs
    add = jobs["demo.add"]
    assert add["description"] == "Return x + y."
    assert add["parameters"]["required"] == ["x", "y"]
    assert jobs["demo.sleep"]["parameters"]["properties"]["seconds"]["type"] == "number"


def test_queues_report_depth_age_and_counts(client, work):
    post(client, {"job": "demo.fail", "retry": {"max": 0}})
    post(client, {"job": "demo.add", "args": [1, 2]})
    work()
    post(client, {"job": "demo.add", "args": [1, 2]})
    post(client, {"job": "demo.add", "args": [1, 2], "delay": 60})
    queues = {q["name"]: q for q in client.get("/queues").json["queues"]}
    default = queues["default"]
    assert (default["depth"], default["failed"], default["finished"], default["scheduled"]) == (1, 1, 1, 1)
    assert default["oldest_age_seconds"] >= 0
    assert queues["high"]["depth"] == 0 and queues["high"]["oldest_age_seconds"] is None


def test_workers_show_state_and_heartbeat(client, worker_process):
    workers = client.get("/workers").json["workers"]
    assert len(workers) == 1
    worker = workers[0]
    assert worker["queues"] == ["high", "default", "low"]
    assert worker["state"] in ("idle", "started")
    assert worker["last_heartbeat"].endswith("Z")
