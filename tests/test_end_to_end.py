"""The real Procfile processes (gunicorn, worker.py, scheduler.py) under honcho."""
from __future__ import annotations

import pytest
import requests

from tests import processes
from tests.conftest import wait_for


@pytest.fixture
def procfile(redis_url, connection, tmp_path):
    schedules = tmp_path / "schedules.toml"
    # Seven fields: seconds first, so the test sees a tick within seconds.
    schedules.write_text(
        '[[schedule]]\nname = "e2e-tick"\njob = "demo.add"\nargs = [20, 22]\ncron = "* * * * * * *"\n'
    )
    with processes.procfile(redis_url, tmp_path, SCHEDULES_FILE=str(schedules)) as base:
        yield base


def test_a_job_posted_over_http_runs_on_the_real_worker(procfile):
    response = requests.post(f"{procfile}/jobs", json={"job": "demo.add", "args": [1, 2]}, headers=processes.AUTH, timeout=5)
    assert response.status_code == 202
    location = procfile + response.headers["Location"]

    def finished():
        job = requests.get(location, headers=processes.AUTH, timeout=5).json()
        return job if job["status"] in ("finished", "failed") else None

    job = wait_for(finished, timeout=30, what="the job to finish")
    assert job["status"] == "finished"
    assert job["result"] == 3


def test_the_real_scheduler_enqueues_the_declared_cron_job(procfile):
    def ticked():
        schedule = requests.get(f"{procfile}/schedules/e2e-tick", headers=processes.AUTH, timeout=5)
        last = schedule.json()["last_run"] if schedule.ok else None
        job = requests.get(f"{procfile}/jobs/{last['job_id']}", headers=processes.AUTH, timeout=5).json() if last else None
        return job if job and job["status"] == "finished" else None

    job = wait_for(ticked, timeout=30, what="the cron job to run")
    assert job["id"].startswith("schedule-e2e-tick-")
    assert job["job"] == "demo.add"
    assert job["result"] == 42


def test_the_dashboard_serves_queue_data(procfile):
    requests.post(f"{procfile}/jobs", json={"job": "demo.sleep", "args": [0], "queue": "low"}, headers=processes.AUTH, timeout=5)
    assert requests.get(f"{procfile}/rq/", timeout=5).status_code == 401
    page = requests.get(f"{procfile}/rq/", auth=("admin", processes.ADMIN_TOKEN), timeout=5)
    assert page.status_code == 200
    queues = requests.get(f"{procfile}/rq/0/data/queues.json", headers=processes.AUTH, timeout=5).json()["queues"]
    assert "low" in {q["name"] for q in queues}


@pytest.mark.parametrize("started_by", ["python", "make"])
def test_make_run_stopped_with_sigterm_stops_every_process_it_started(redis_url, tmp_path, started_by):
    """`make run` (`python -m service.local`) stopped by `kill` or a process
    manager, not Ctrl-C: the Procfile's processes stop with it, rather than run
    on without it and hold the port. With `make`, the SIGTERM goes to make alone,
    as `kill <its pid>` sends it."""
    import signal
    import sys

    import psutil

    from service.embedded_redis import free_port

    port = free_port()
    env = processes.process_env(redis_url, PORT=str(port))
    command = {"python": [sys.executable, "-m", "service.local"], "make": ["make", "-s", "run"]}[started_by]
    with processes.running(command, env, tmp_path / "run.log") as run:

        def up():
            try:
                return requests.get(f"http://127.0.0.1:{port}/health", timeout=1).ok
            except requests.RequestException:
                assert run.poll() is None, (tmp_path / "run.log").read_text()
                return False

        wait_for(up, timeout=30, what="make run to answer /health")
        started = psutil.Process(run.pid).children(recursive=True)
        commands = " ".join(" ".join(process.cmdline()) for process in started)
        assert "honcho" in commands and "worker.py" in commands and "scheduler.py" in commands
        run.send_signal(signal.SIGTERM)
        run.wait(timeout=30)
        _, alive = psutil.wait_procs(started, timeout=30)
        left = [" ".join(process.cmdline()) for process in alive]
        for process in alive:  # stopped here, not left to the next test
            process.kill()
        assert not left, f"still running after the SIGTERM: {left}"
