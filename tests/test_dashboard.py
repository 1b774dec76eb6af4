"""rq-dashboard, mounted at /rq, reads the service's JSON jobs."""


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
