"""`flask jobs …`: the command line goes through the same enqueue path as HTTP."""
from tests.conftest import stored_keys
import json


def run(app, *args):
    return app.test_cli_runner().invoke(args=["jobs", *args])


def test_enqueue_status_and_list(app, client, work):
    result = run(app, "enqueue", "demo.add", "--args", "[2, 3]", "--queue", "high")
    assert result.exit_code == 0, result.output
    job = json.loads(result.output)
    assert (job["job"], job["status"], job["queue"]) == ("demo.add", "queued", "high")
    work()
    status = json.loads(run(app, "status", job["id"]).output)
    assert (status["status"], status["result"]) == ("finished", 5)
    listing = run(app, "list", "--status", "finished").output
    assert job["id"] in listing and "demo.add" in listing


def test_enqueue_refuses_what_http_refuses(app, connection):
    for args, message in [
        (["enqueue", "os.system", "--args", '["ls"]'], "no job called 'os.system'"),
        (["enqueue", "demo.add", "--args", '["a", 1]'], "x:"),
        (["enqueue", "demo.add", "--args", "[1, 2]", "--queue", "urgent"], "unknown queue"),
    ]:
        result = run(app, *args)
        assert result.exit_code != 0
        assert message in result.output
    assert run(app, "enqueue", "demo.add", "--args", "not json").exit_code == 2
    assert stored_keys(connection) == []


def test_retry_a_failed_job(app, client, work):
    job_id = client.post("/jobs", json={"job": "demo.flaky", "retry": {"max": 0}}).json["id"]
    work()
    assert json.loads(run(app, "retry", job_id).output)["status"] == "queued"
    work()
    assert json.loads(run(app, "status", job_id).output)["result"] == 2


def test_status_of_an_unknown_job_fails_clearly(app):
    result = run(app, "status", "nope")
    assert result.exit_code == 1
    assert "no job 'nope'" in result.output
