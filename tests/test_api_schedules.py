"""GET/PUT/DELETE /schedules and pause, resume, run, through the app's test client."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from service.queues import job_registry
from service.schedules import Schedule, store, sync

DAILY = {"job": "demo.add", "args": [1, 2], "cron": "0 9 * * *", "timezone": "Asia/Tokyo"}


def snapshot(connection) -> dict[bytes, bytes]:
    """Every key with its serialized value: equal snapshots mean nothing was written."""
    return {key: connection.dump(key) for key in sorted(connection.keys("*"))}


@pytest.fixture
def declared(connection, settings):
    """The schedule the default schedules file declares, synced as scheduler.py does at start."""
    from service.schedules import load

    sync(connection, load(), registry=job_registry(), settings=settings, now=datetime.now(timezone.utc))
    return "demo-tick"


def test_put_creates_a_schedule_and_get_shows_its_next_runs_in_utc_and_in_its_zone(client):
    response = client.put("/schedules/report", json=DAILY)
    assert response.status_code == 201
    assert response.headers["Location"] == "/schedules/report"
    body = response.json
    assert body["source"] == "api"
    assert body["paused"] is False
    assert body["timezone"] == "Asia/Tokyo"
    assert body["missed"] == "once"
    assert body["kwargs"] == {"x": 1, "y": 2}
    assert len(body["next_runs"]) == 3
    first = body["next_runs"][0]
    assert first["utc"].endswith("T00:00:00Z")
    assert first["local"].endswith("T09:00:00+09:00")
    assert first["utc"][:10] == first["local"][:10] or first["utc"] < first["local"]
    listed = client.get("/schedules").json["schedules"]
    assert [s["name"] for s in listed] == ["report"]
    assert listed[0]["last_run"] is None


def test_put_again_replaces_it(client):
    client.put("/schedules/report", json=DAILY)
    response = client.put("/schedules/report", json={**DAILY, "cron": "30 18 * * 1-5", "missed": "skip"})
    assert response.status_code == 200
    assert response.json["cron"] == "30 18 * * 1-5"
    assert response.json["missed"] == "skip"
    assert len(client.get("/schedules").json["schedules"]) == 1


def test_the_zone_defaults_to_the_configured_one(client):
    body = {key: value for key, value in DAILY.items() if key != "timezone"}
    assert client.put("/schedules/report", json=body).json["timezone"] == "UTC"


def test_pause_resume_and_run(client, connection, work):
    client.put("/schedules/report", json=DAILY)
    paused = client.post("/schedules/report/pause")
    assert paused.status_code == 200
    assert paused.json["paused"] is True
    assert paused.json["next_runs"] == []
    assert connection.zscore(store.SCHEDULED, "schedule-report") is None

    ran = client.post("/schedules/report/run")
    assert ran.status_code == 202
    job_id = ran.json["id"]
    assert ran.headers["Location"] == f"/jobs/{job_id}"
    work()
    assert client.get(f"/jobs/{job_id}").json["result"] == 3
    last = client.get("/schedules/report").json["last_run"]
    assert last["job_id"] == job_id
    assert last["tick"] is None

    resumed = client.post("/schedules/report/resume")
    assert resumed.json["paused"] is False
    assert len(resumed.json["next_runs"]) == 3


def test_running_now_a_job_with_a_concurrency_limit_takes_a_slot_like_any_enqueue(client, monkeypatch):
    monkeypatch.setenv("HTTP_HOST_CONCURRENCY", "1")  # read where jobs are enqueued: here
    call = {"job": "http.request", "kwargs": {"url": "http://example.com/x"}, "cron": "0 9 * * *"}
    assert client.put("/schedules/hook", json=call).status_code == 201
    first, second = (client.post("/schedules/hook/run") for _ in range(2))
    assert (first.status_code, second.status_code) == (202, 202)
    statuses = [client.get(f"/jobs/{ran.json['id']}").json["status"] for ran in (first, second)]
    assert statuses == ["queued", "rate_limited"]


def test_a_name_ending_in_a_newline_is_422_and_writes_nothing(client, connection):
    response = client.put("/schedules/abc%0A", json=DAILY)
    assert response.status_code == 422, response.json
    assert response.content_type == "application/problem+json"
    assert connection.dbsize() == 0


@pytest.mark.parametrize("method, path", [("delete", "/jobs/schedule-report"), ("post", "/jobs/schedule-report/retry")])
def test_a_schedules_template_job_is_not_canceled_or_retried_as_a_job(client, connection, method, path):
    client.put("/schedules/report", json=DAILY)
    before = snapshot(connection)
    response = getattr(client, method)(path)
    assert response.status_code == 409
    assert "/schedules/report" in response.json["detail"]
    assert snapshot(connection) == before


def test_delete_removes_it(client, connection):
    client.put("/schedules/report", json=DAILY)
    assert client.delete("/schedules/report").status_code == 204
    assert client.get("/schedules/report").status_code == 404
    assert connection.dbsize() == 0


def test_a_delete_leaves_a_schedule_the_scheduler_declared_while_it_was_checked(client, connection, settings, monkeypatch):
    from service.api import schedules as api

    client.put("/schedules/report", json=DAILY)
    checked = api._refuse_if_declared

    def checked_then_declared(*args):
        checked(*args)  # still a run-time schedule here
        sync(connection, [Schedule(name="report", job="demo.tick", cron="0 9 * * *")],
             registry=job_registry(), settings=settings, now=datetime.now(timezone.utc))

    monkeypatch.setattr(api, "_refuse_if_declared", checked_then_declared)
    response = client.delete("/schedules/report")
    assert response.status_code == 409
    assert "changed" in response.json["detail"]
    assert store.get(connection, "report").source == store.DECLARED


def test_the_last_run_of_a_tick_names_its_job_and_its_tick(client, connection):
    from service.schedules import ServiceScheduler

    client.put("/schedules/report", json={**DAILY, "cron": "* * * * * * *"})
    due = store.get(connection, "report").next_tick
    ServiceScheduler(connection, clock=lambda: datetime.fromtimestamp(due, timezone.utc)).enqueue_jobs()
    last = client.get("/schedules/report").json["last_run"]
    assert last["job_id"].startswith("schedule-report-")
    assert last["tick"]["utc"] == datetime.fromtimestamp(due, timezone.utc).isoformat().replace("+00:00", "Z")
    assert client.get(f"/jobs/{last['job_id']}").json["status"] == "queued"


@pytest.mark.parametrize(
    "method, path",
    [
        ("get", "/schedules/nope"),
        ("post", "/schedules/nope/pause"),
        ("post", "/schedules/nope/resume"),
        ("post", "/schedules/nope/run"),
        ("delete", "/schedules/nope"),
    ],
)
def test_an_unknown_schedule_is_404_and_changes_nothing(client, connection, method, path):
    client.put("/schedules/report", json=DAILY)
    before = snapshot(connection)
    response = getattr(client, method)(path)
    assert response.status_code == 404
    assert response.content_type == "application/problem+json"
    assert "nope" in response.json["detail"]
    assert snapshot(connection) == before


@pytest.mark.parametrize(
    "body, status, field",
    [
        ({**DAILY, "cron": "61 * * * *"}, 422, "cron"),
        ({**DAILY, "cron": "every morning"}, 422, "cron"),
        ({**DAILY, "cron": "0 0 0 1 1 * 1999"}, 422, "cron"),  # matched once, never again
        ({**DAILY, "timezone": "Mars/Olympus"}, 422, "timezone"),
        ({**DAILY, "job": "os.system"}, 404, None),
        ({**DAILY, "job": "demo.nope"}, 404, None),
        ({**DAILY, "args": ["one", 2]}, 422, "x"),
        ({**DAILY, "args": [1]}, 422, "y"),
        ({**DAILY, "queue": "nowhere"}, 422, "queue"),
        ({**DAILY, "missed": "sometimes"}, 422, "missed"),
        ({**DAILY, "surprise": 1}, 422, "surprise"),
        ({"job": "demo.add", "args": [1, 2]}, 422, "cron"),
    ],
)
def test_bad_input_is_a_problem_and_changes_nothing(client, connection, body, status, field):
    client.put("/schedules/report", json=DAILY)
    before = snapshot(connection)
    for name in ("report", "fresh"):  # replacing one, and creating one
        response = client.put(f"/schedules/{name}", json=body)
        assert response.status_code == status, response.json
        assert response.content_type == "application/problem+json"
        if field is not None:
            fields = {e.get("field") or e.get("argument") for e in response.json.get("errors", [])}
            assert field in fields, response.json
        assert snapshot(connection) == before


@pytest.mark.parametrize("name", ["-starts-with-dash", "a" * 101, "has.dot", "tick-20250101T090000Z"])
def test_a_bad_name_is_422(client, connection, name):
    response = client.put(f"/schedules/{name}", json=DAILY)
    assert response.status_code == 422
    assert response.json["errors"][0]["field"] == "name"
    assert connection.dbsize() == 0


def test_a_body_that_is_not_json_is_refused(client, connection):
    response = client.put("/schedules/report", data="cron=* * * * *", content_type="text/plain")
    assert response.status_code == 415
    assert connection.dbsize() == 0


def test_declared_schedules_win_and_the_api_says_so(client, connection, declared):
    before = snapshot(connection)
    for response in (client.put(f"/schedules/{declared}", json=DAILY), client.delete(f"/schedules/{declared}")):
        assert response.status_code == 409
        assert response.json["declared"] is True
        assert "declared in the schedules file" in response.json["detail"]
    assert snapshot(connection) == before
    listed = {s["name"]: s for s in client.get("/schedules").json["schedules"]}
    assert listed[declared]["source"] == "declared"
    # Operating it is fine.
    assert client.post(f"/schedules/{declared}/pause").json["paused"] is True
    assert client.post(f"/schedules/{declared}/resume").json["paused"] is False


def test_a_name_in_the_file_is_refused_even_before_the_scheduler_synced_it(client, connection):
    assert client.put("/schedules/demo-tick", json=DAILY).status_code == 409
    assert connection.dbsize() == 0


def test_runtime_schedules_survive_a_scheduler_restart(client, connection, settings):
    client.put("/schedules/report", json=DAILY)
    now = datetime.now(timezone.utc)
    sync(connection, [Schedule(name="other", job="demo.tick", cron="* * * * *")], registry=job_registry(), settings=settings, now=now)
    names = {s["name"]: s["source"] for s in client.get("/schedules").json["schedules"]}
    assert names == {"report": "api", "other": "declared"}


def test_the_openapi_document_describes_the_schedules_api(client):
    paths = client.get("/openapi.json").json["paths"]
    assert {"/schedules", "/schedules/{name}", "/schedules/{name}/pause", "/schedules/{name}/run"} <= set(paths)
