"""rq-dashboard, mounted at /rq, reads the service's JSON jobs."""
import pytest


def test_dashboard_page_is_served(client):
    response = client.get("/rq/")
    assert response.status_code == 200
    assert b"RQ Dashboard" in response.data or b"rq-dashboard" in response.data.lower()


def test_dashboard_shows_queue_depth(client):
    for _ in range(2):
        client.post("/jobs", json={"job": "demo.add", "args": [1, 2], "queue": "high"})
    queues = client.get("/rq/0/data/queues.json").json["queues"]
    assert {q["name"]: q["count"] for q in queues}["high"] == 2


def test_dashboard_reads_a_finished_json_job(client, work):
    job_id = client.post("/jobs", json={"job": "demo.add", "args": [2, 3]}).json["id"]
    work()
    job = client.get(f"/rq/0/data/job/{job_id}.json").json
    assert job["status"] == "finished"
    assert job["result"] == 5


def test_dashboard_lists_failed_jobs_with_their_error(client, work):
    job_id = client.post("/jobs", json={"job": "demo.fail", "kwargs": {"message": "boom"}, "retry": {"max": 0}}).json["id"]
    work()
    listing = client.get("/rq/0/data/jobs/default/failed/10/asc/1.json").json
    assert [job["id"] for job in listing["jobs"]] == [job_id]
    assert "RuntimeError: boom" in listing["jobs"][0]["exc_info"]


@pytest.mark.parametrize(
    "path",
    [
        "/rq/0/view/job/nope",
        "/rq/0/data/job/nope.json",
        "/rq/5/view",
        "/rq/0/data/jobs/default/queued/abc/asc/1.json",
        "/rq/0/data/jobs/default/nowhere/8/asc/1.json",
        "/rq/0/data/jobs/default/failed/0/asc/1.json",
        "/rq/0/data/jobs/default/queued/10/asc/99999999999999999999.json",
    ],
)
def test_a_dashboard_link_to_nothing_is_404(client, path):
    response = client.get(path)
    assert response.status_code == 404
    assert response.content_type == "application/problem+json"


def test_the_workers_tab_shows_a_busy_worker_and_its_job(client, settings, connection):
    from service.queues import ServiceQueue
    from worker import build_worker

    job_id = client.post("/jobs", json={"job": "demo.add", "args": [1, 2]}).json["id"]
    worker = build_worker(settings)
    worker.register_birth()
    worker.dequeuer.register()
    taken = worker.dequeuer.take([ServiceQueue(name, connection=connection).key for name in settings.queues])
    job, _ = worker._load(taken)
    assert worker._claim(job) is not None  # it is running the job now
    response = client.get("/rq/0/data/workers.json")
    assert response.status_code == 200
    [listed] = response.json["workers"]
    assert listed["name"] == worker.name
    assert listed["current_job"]["job_id"] == job_id


def test_compact_drops_the_ids_of_gone_jobs_and_keeps_the_order(client, connection):
    first, gone, last = (client.post("/jobs", json={"job": "demo.add", "args": [n, 1]}).json["id"] for n in range(3))
    connection.delete(f"rq:job:{gone}")
    answer = client.post("/rq/queue/default/compact")
    assert answer.status_code == 200, answer.data
    assert connection.lrange("rq:queue:default", 0, -1) == [first.encode(), last.encode()]


def test_compacting_an_empty_queue_changes_nothing(client, connection):
    answer = client.post("/rq/queue/empty/compact")
    assert answer.status_code == 200, answer.data
    assert not connection.exists("rq:queue:empty")


def test_requeueing_a_job_that_did_not_fail_is_409_and_changes_nothing(client, work):
    job_id = client.post("/jobs", json={"job": "demo.add", "args": [1, 2]}).json["id"]
    work()
    answer = client.post(f"/rq/job/{job_id}/requeue")
    assert answer.status_code == 409, answer.data
    assert answer.content_type == "application/problem+json"
    assert client.get(f"/jobs/{job_id}").json["status"] == "finished"
