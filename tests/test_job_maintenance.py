"""maintenance.cleanup: old job records and artifacts go, recent ones and schedules stay."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from jobs import maintenance
from service import job_index, schedules
from service.schedules import store
from service.queues import job_registry


def post(client, body):
    response = client.post("/jobs", json=body)
    assert response.status_code == 202, response.json
    return response.json["id"]


@pytest.fixture
def clock(monkeypatch):
    """Move maintenance's clock: `clock(days=8)` is eight days from now."""

    def move(**delta):
        moment = datetime.now(timezone.utc) + timedelta(**delta)
        monkeypatch.setattr(maintenance, "_now", lambda: moment)

    return move


@pytest.fixture
def history(client, work, connection):
    """Ended jobs of every kind, one with an artifact, one kept forever, and one still waiting."""
    ids = {
        "finished": post(client, {"job": "demo.add", "args": [1, 2]}),
        "kept forever": post(client, {"job": "demo.add", "args": [3, 4]}),
        "failed": post(client, {"job": "demo.fail", "retry": {"max": 0}}),
        "report": post(client, {"job": "reports.generate", "kwargs": {"format": "csv", "generated": 10, "steps": 1}}),
    }
    work()
    connection.persist(f"rq:job:{ids['kept forever']}")  # as RQ keeps a job whose result_ttl is -1
    ids["canceled"] = post(client, {"job": "demo.add", "args": [5, 6], "delay": 3600})
    client.delete(f"/jobs/{ids['canceled']}")
    ids["waiting"] = post(client, {"job": "demo.add", "args": [7, 8], "delay": 3600})
    return ids


def run_cleanup(client, work, **kwargs):
    job_id = post(client, {"job": "maintenance.cleanup", "kwargs": kwargs})
    work()
    job = client.get(f"/jobs/{job_id}").json
    assert job["status"] == "finished", job
    return job["result"]


def exists(client, job_id) -> bool:
    return client.get(f"/jobs/{job_id}").status_code == 200


def test_nothing_goes_before_the_retention_period(client, work, history, clock, monkeypatch):
    monkeypatch.setenv("JOB_RETENTION_DAYS", "7")
    clock(days=6)
    result = run_cleanup(client, work)
    assert result["jobs_removed"] == 0
    assert result["artifact_folders_removed"] == 0
    assert all(exists(client, job_id) for job_id in history.values())
    assert client.get(f"/jobs/{history['report']}/artifact").status_code == 200


def test_ended_jobs_and_artifacts_older_than_the_retention_period_go(client, work, history, clock, monkeypatch, connection):
    monkeypatch.setenv("JOB_RETENTION_DAYS", "7")
    clock(days=8)
    result = run_cleanup(client, work)
    assert result["jobs_removed_by_status"] == {"canceled": 1, "failed": 1, "finished": 3}
    assert result["jobs_removed"] == 5
    assert result["index_entries_removed"] == 5
    assert result["artifact_folders_removed"] == 1 and result["artifact_files_removed"] == 1
    assert result["artifact_bytes_freed"] > 0
    assert result["retention_days"] == 7
    assert set(result["registries_cleaned"]) >= {"default", "low"}
    for name in ("finished", "kept forever", "failed", "report", "canceled"):
        assert not exists(client, history[name]), name
    assert client.get(f"/jobs/{history['report']}/artifact").status_code == 404
    assert exists(client, history["waiting"])
    listed = {job["id"] for job in client.get("/jobs?limit=100").json["jobs"]}
    assert history["waiting"] in listed and history["finished"] not in listed
    assert connection.zscore(job_index.KEY, history["finished"]) is None


def test_a_dry_run_reports_and_removes_nothing(client, work, history, clock):
    clock(days=40)
    result = run_cleanup(client, work, dry_run=True)
    assert result["jobs_removed"] == 5
    assert result["artifact_folders_removed"] == 1
    assert all(exists(client, job_id) for job_id in history.values())


def test_cron_schedules_are_kept(client, work, clock, connection, settings):
    often = schedules.Schedule("often", "demo.add", "* * * * *", args=[1, 1])
    schedules.sync(connection, [often], registry=job_registry(), settings=settings, now=datetime.now(timezone.utc))
    ran = client.post("/schedules/often/run").json  # one tick, now
    work()
    assert client.get(f"/jobs/{ran['id']}").json["status"] == "finished"
    clock(days=40)
    run_cleanup(client, work)
    assert client.get("/schedules/often").status_code == 200
    assert connection.exists(store.template_key("often"))
    assert not exists(client, ran["id"])  # the old tick's record goes, the schedule stays


def test_the_nightly_clean_up_is_declared_at_three(settings, connection):
    [nightly] = [s for s in schedules.load() if s.job == "maintenance.cleanup"]
    assert nightly.cron == "0 3 * * *"
    schedules.sync(connection, [nightly], registry=job_registry(), settings=settings, now=datetime.now(timezone.utc))
    [stored] = store.all_schedules(connection)
    assert stored.name == nightly.name


def test_retention_must_be_positive(client):
    assert client.post("/jobs", json={"job": "maintenance.cleanup", "kwargs": {"retention_days": 0}}).status_code == 422


def test_the_index_key_is_the_services():
    assert maintenance.JOB_INDEX_KEY == job_index.KEY
