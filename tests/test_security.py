"""Hostile input: who may call what, what may run, and what gets refused."""
import base64
import json
import os
import pickle
import zlib
from dataclasses import replace
from pathlib import Path

import pytest
from rq.queue import Queue
from rq.serializers import JSONSerializer

from service import create_app, job_index
from service.app import MissingTokens
from service.auth import PUBLIC, TokenError, parse_tokens
from service.dashboard import harden
from service.queues import ServiceJob
from service.settings import mask_url
from tests.conftest import ADMIN_TOKEN, SCOPED_TOKENS, bearer, stored_keys

# ---------------------------------------------------------------- access


def every_route(app):
    """Each (method, path) the app serves, with placeholders for path parameters."""
    for rule in app.url_map.iter_rules():
        if rule.endpoint in PUBLIC:
            continue
        path = rule.rule
        for name in rule.arguments:
            path = path.replace(f"<{name}>", "x").replace(f"<int:{name}>", "0").replace(f"<path:{name}>", "x")
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            yield method, path


def test_every_route_but_health_needs_a_token(app, anonymous, connection):
    routes = list(every_route(app))
    assert ("POST", "/jobs") in routes and ("GET", "/rq/") in routes and ("GET", "/docs") in routes
    for method, path in routes:
        for headers in ({}, bearer("wrong-token-0123456789"), {"Authorization": "Basic !!!"}):
            response = anonymous.open(path, method=method, headers=headers, json={"job": "demo.add", "args": [1, 2]})
            assert response.status_code == 401, (method, path, headers)
            assert response.content_type == "application/problem+json"
            assert "WWW-Authenticate" in response.headers
    assert stored_keys(connection) == []
    assert anonymous.get("/health").status_code == 200


def test_basic_auth_with_the_token_as_password_works(anonymous):
    basic = base64.b64encode(f"anyone:{ADMIN_TOKEN}".encode()).decode()
    assert anonymous.get("/rq/", headers={"Authorization": f"Basic {basic}"}).status_code == 200
    assert anonymous.get("/rq/").headers["WWW-Authenticate"].startswith("Basic")
    assert anonymous.get("/jobs").headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    "scope, method, path, allowed",
    [
        ("enqueue", "POST", "/jobs", True),
        ("enqueue", "GET", "/jobs", False),
        ("read", "POST", "/jobs", False),
        ("read", "GET", "/jobs", True),
        ("read", "GET", "/queues", True),
        ("read", "DELETE", "/jobs/some-job", False),
        ("read", "POST", "/jobs/some-job/retry", False),
        ("read", "GET", "/rq/", False),
        ("enqueue", "GET", "/rq/0/data/queues.json", False),
        ("admin", "GET", "/rq/", True),
        ("admin", "GET", "/jobs", True),
        ("admin", "POST", "/jobs", False),
    ],
)
def test_scopes(anonymous, connection, scope, method, path, allowed):
    response = anonymous.open(
        path, method=method, headers=bearer(SCOPED_TOKENS[scope]), json={"job": "demo.add", "args": [1, 2]}
    )
    if allowed:
        assert response.status_code not in (401, 403), response.json
    else:
        assert response.status_code == 403
        assert scope not in response.json["detail"] or "lacks" in response.json["detail"]
        assert connection.llen("rq:queue:default") == 0


def test_a_job_that_declares_the_admin_scope_needs_it(anonymous, connection):
    """The nightly clean-up removes every client's ended jobs: enqueue alone may not run it."""
    body = {"job": "maintenance.cleanup", "kwargs": {"retention_days": 0.001}}
    response = anonymous.post("/jobs", headers=bearer(SCOPED_TOKENS["enqueue"]), json=body)
    assert response.status_code == 403
    assert "'admin' scope" in response.json["detail"]
    assert stored_keys(connection) == [], "nothing written, not even a rate-limit count"
    assert anonymous.post("/jobs", headers=bearer(ADMIN_TOKEN), json=body).status_code == 202
    listed = anonymous.get("/jobs/registry", headers=bearer(ADMIN_TOKEN)).json["jobs"]
    scopes = {job["name"]: job["scope"] for job in listed}
    assert scopes["maintenance.cleanup"] == "admin" and scopes["demo.add"] == "enqueue"


def test_depending_on_other_jobs_takes_the_read_scope(anonymous, connection):
    """A 422 for an unknown or failed dependency tells of other jobs: a token that
    may not read them learns nothing from one, whether the job named exists or not."""
    existing = anonymous.post("/jobs", headers=bearer(SCOPED_TOKENS["enqueue"]), json={"job": "demo.add", "args": [1, 2]})
    before = stored_keys(connection)
    answers = [
        anonymous.post("/jobs", headers=bearer(SCOPED_TOKENS["enqueue"]),
                       json={"job": "demo.add", "args": [1, 2], "depends_on": [job_id]})
        for job_id in (existing.json["id"], "no-such-job")
    ]
    assert [answer.status_code for answer in answers] == [403, 403]
    assert answers[0].json["detail"] == answers[1].json["detail"]
    assert "'read' scope" in answers[0].json["detail"]
    assert stored_keys(connection) == before


def test_attaching_another_jobs_file_to_an_email_takes_the_read_scope(anonymous, connection):
    """An email may carry another job's report; a token that may not download it
    may not mail it to itself either."""
    email = {"to": ["me@example.com"], "subject": "s", "text": "t"}
    attached = {**email, "attachments": [{"job": "some-report-job", "name": "report.csv"}]}
    enqueue_only = bearer(SCOPED_TOKENS["enqueue"])
    response = anonymous.post("/jobs", headers=enqueue_only, json={"job": "email.send", "kwargs": attached})
    assert response.status_code == 403
    assert "'read' scope" in response.json["detail"]
    assert stored_keys(connection) == [], "nothing written, not even a rate-limit count"
    assert anonymous.post("/jobs", headers=enqueue_only, json={"job": "email.send", "kwargs": email}).status_code == 202
    assert anonymous.post("/jobs", headers=bearer(ADMIN_TOKEN), json={"job": "email.send", "kwargs": attached}).status_code == 202


def test_a_job_that_declares_an_unknown_scope_stops_the_service_at_start(settings, connection):
    from jobs import defaults
    from service.registry import JobRegistry, JobSpec

    @defaults(scope="root")
    def reboot() -> None:
        pass

    with pytest.raises(TokenError, match="root"):
        create_app(settings, connection=connection, registry=JobRegistry({"ops.reboot": JobSpec("ops.reboot", reboot)}))


def test_the_service_refuses_to_start_without_tokens(settings, connection):
    with pytest.raises(MissingTokens, match="API_TOKENS"):
        create_app(replace(settings, api_tokens=""), connection=connection)


@pytest.mark.parametrize("raw", ["short", "a-long-enough-token-123:root", "a-long-enough-token-123:read+sudo"])
def test_bad_token_configuration_is_refused(raw):
    with pytest.raises(TokenError):
        parse_tokens(raw)


def test_token_scopes_are_parsed():
    tokens = parse_tokens("aaaaaaaaaaaaaaaaaaaa, bbbbbbbbbbbbbbbbbbbb:enqueue+read")
    assert tokens[0].scopes == {"enqueue", "read", "admin"}
    assert tokens[1].scopes == {"enqueue", "read"}
    assert tokens[0].id != tokens[1].id and "aaaa" not in tokens[0].id


# ---------------------------------------------------------------- the dashboard


def test_dashboard_refuses_cross_site_state_changes(client, work, connection):
    job_id = client.post("/jobs", json={"job": "demo.fail", "retry": {"max": 0}}).json["id"]
    work()
    for headers in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"}, {"Origin": "null"}):
        response = client.post(f"/rq/job/{job_id}/requeue", headers=headers)
        assert response.status_code == 403, headers
    assert client.post("/rq/requeue/default", headers={"Sec-Fetch-Site": "cross-site"}).status_code == 403
    # The route that takes a GET as well: a link or an <img> on another site, from a
    # browser that sends neither Sec-Fetch-Site nor Origin, must not requeue everything.
    for headers in ({}, {"Referer": "http://evil.example/page"}, {"Sec-Fetch-Site": "cross-site"}):
        refused = client.get("/rq/requeue/default", headers=headers)
        assert refused.status_code == 405 and refused.headers["Allow"] == "POST", headers
    assert connection.zcard("rq:failed:default") == 1
    same_origin = client.post(f"/rq/job/{job_id}/requeue", headers={"Origin": "http://localhost"})
    assert same_origin.status_code == 200
    assert connection.zcard("rq:failed:default") == 0


def test_a_read_only_dashboard_changes_nothing(settings, connection, work):
    app = create_app(replace(settings, dashboard_read_only=True), connection=connection)
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = bearer()["Authorization"]
    job_id = client.post("/jobs", json={"job": "demo.fail", "retry": {"max": 0}}).json["id"]
    work()
    assert client.get("/rq/").status_code == 200
    for path in (f"/rq/job/{job_id}/requeue", f"/rq/job/{job_id}/delete", "/rq/queue/default/failed/empty"):
        assert client.post(path).status_code == 403, path
    assert client.post("/rq/requeue/default").status_code == 403
    assert connection.zcard("rq:failed:default") == 1


def test_dashboard_templates_escape_every_value(client):
    page = client.get("/rq/0/view/jobs").data.decode() + client.get("/rq/0/view/job/x").data.decode()
    assert "<%=" not in page
    assert "<%- d.description %>" in page
    assert harden("<%= $('<div/>').text(d.exc_info).html() %>") == "<%- d.exc_info %>"


def test_dashboard_pages_carry_a_nonce_csp(client):
    response = client.get("/rq/")
    policy = response.headers["Content-Security-Policy"]
    nonce = policy.split("'nonce-")[1].split("'")[0]
    assert f'nonce="{nonce}"' in response.data.decode()
    assert "'unsafe-inline'" not in policy.split("script-src")[1].split(";")[0]


def test_secrets_are_masked():
    assert mask_url("redis://:hunter2@redis.example:6379/0") == "redis://:***@redis.example:6379/0"
    assert mask_url("smtp://user:pa55@mail.example:587") == "smtp://user:***@mail.example:587"
    assert mask_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


# ---------------------------------------------------------------- nothing unsafe runs


@pytest.mark.parametrize(
    "name",
    ["os.system", "subprocess.run", "builtins.eval", "jobs.demo.add", "demo.add.__globals__", "demo/add",
     "../demo.add", "demo.time", "demo._private", "demo.__init__", "_progress.progress", "demo.get_current_job"],
)
def test_forbidden_job_names_are_refused(client, connection, name):
    response = client.post("/jobs", json={"job": name, "args": ["touch /tmp/owned"]})
    assert response.status_code == 404
    assert stored_keys(connection) == []


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "owned"


def plant(connection, func: str, args: list, **fields) -> str:
    """Write a job record straight into Redis, as an attacker with Redis access would."""
    job = Queue("default", connection=connection, serializer=JSONSerializer).enqueue(func, *args)
    for key, value in fields.items():
        connection.hset(job.key, key, value)
    return job.id


def test_a_planted_job_naming_a_foreign_function_fails_without_running(connection, work, marker):
    job_id = plant(connection, "os.system", [f"touch {marker}"])
    work()
    assert not marker.exists()
    job = ServiceJob.fetch(job_id, connection=connection)
    assert job.get_status() == "failed"
    assert "not an allow-listed job" in job.latest_result().exc_string


def test_a_planted_pickle_fails_without_running(connection, work, marker):
    class Exploit:
        def __reduce__(self):
            return (Path.touch, (marker,))

    job_id = plant(connection, "jobs.demo.add", [1, 2])
    connection.hset(f"rq:job:{job_id}", "data", zlib.compress(pickle.dumps(("jobs.demo.add", None, (Exploit(),), {}))))
    work()
    assert not marker.exists()
    assert connection.hget(f"rq:job:{job_id}", "status") == b"failed"


def test_a_planted_callback_never_runs(connection, work, marker):
    job_id = plant(connection, "jobs.demo.add", [1, 2], success_callback_name="os.system")
    connection.hset(f"rq:job:{job_id}", "success_callback_name", "os.system")
    work()
    assert not marker.exists()
    assert connection.hget(f"rq:job:{job_id}", "status") == b"failed"


# ---------------------------------------------------------------- abuse


def test_deeply_nested_bodies_are_refused(client, connection):
    deep = "[" * 100_000 + "]" * 100_000
    response = client.post("/jobs", data=f'{{"job": "demo.add", "args": {deep}}}', content_type="application/json")
    assert response.status_code in (400, 422)
    assert response.content_type == "application/problem+json"
    nested = 1
    for _ in range(40):
        nested = [nested]
    response = client.post("/jobs", json={"job": "demo.sleep", "args": [nested]})
    assert response.status_code == 422
    assert "deeper" in response.json["detail"] or any("deeper" in e["problem"] for e in response.json["errors"])
    assert stored_keys(connection) == []


def test_overlong_strings_are_refused(client, connection):
    response = client.post("/jobs", json={"job": "demo.fail", "kwargs": {"message": "x" * 70_000}})
    assert response.status_code == 422
    assert stored_keys(connection) == []


def test_a_full_queue_answers_503_with_retry_after(settings, connection):
    app = create_app(replace(settings, max_queue_depth=2), connection=connection)
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = bearer()["Authorization"]
    assert [client.post("/jobs", json={"job": "demo.add", "args": [1, 2]}).status_code for _ in range(2)] == [202, 202]
    response = client.post("/jobs", json={"job": "demo.add", "args": [1, 2]})
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "30"
    assert connection.llen("rq:queue:default") == 2
    assert len(list(connection.scan_iter("rq:job:*"))) == 2, "the refused job must not be stored"
    assert connection.zcard(job_index.KEY) == 2, "nor listed"
    counts = [int(connection.get(key)) for key in connection.scan_iter("jobservice:ratelimit:*")]
    assert counts and set(counts) == {2}, "a refused request is not counted against the rate limits"


@pytest.mark.parametrize(
    "later, registry",
    [({"delay": 60}, "rq:scheduled:default"), ({"at": "2020-01-01T00:00:00Z"}, "rq:scheduled:default"),
     ({"depends_on": ["first"]}, "rq:deferred:default")],
)
def test_jobs_that_wait_for_a_time_or_another_job_are_capped_too(settings, connection, later, registry):
    app = create_app(replace(settings, max_queue_depth=2), connection=connection)
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = bearer()["Authorization"]
    first = client.post("/jobs", json={"job": "demo.add", "args": [1, 2], "queue": "low"}).json["id"]
    body = {"job": "demo.add", "args": [1, 2], **later}
    body["depends_on"] = [first] if "depends_on" in later else []
    assert [client.post("/jobs", json=body).status_code for _ in range(2)] == [202, 202]
    response = client.post("/jobs", json=body)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "30"
    assert connection.zcard(registry) == 2
    records = [key for key in connection.scan_iter("rq:job:*") if connection.type(key) == b"hash"]
    assert len(records) == 3, "the refused job must not be stored"


def test_a_job_rate_limit_per_visitor(client, connection, monkeypatch):
    from jobs import defaults
    from service.registry import JobRegistry, JobSpec

    @defaults(rate_limit="1 per 10 seconds")
    def contact(message: str) -> str:
        return message

    registry = client.application.extensions["jobservice"]["registry"]
    limited = JobRegistry({**{spec.name: spec for spec in registry}, "demo.contact": JobSpec("demo.contact", contact)})
    monkeypatch.setitem(client.application.extensions["jobservice"], "registry", limited)
    first = client.post("/jobs", json={"job": "demo.contact", "args": ["hi"]})
    again = client.post("/jobs", json={"job": "demo.contact", "args": ["hi again"]})
    other_visitor = client.post("/jobs", json={"job": "demo.contact", "args": ["hello"]},
                                environ_base={"REMOTE_ADDR": "10.9.8.7"})
    other_job = client.post("/jobs", json={"job": "demo.add", "args": [1, 2]})
    assert (first.status_code, again.status_code, other_visitor.status_code, other_job.status_code) == (202, 429, 202, 202)
    assert again.content_type == "application/problem+json"
    assert 0 < int(again.headers["Retry-After"]) <= 10
    assert connection.llen("rq:queue:default") == 3


def test_floods_past_the_token_limit_get_429(settings, connection):
    app = create_app(replace(settings, rate_limit_per_token="5 per minute"), connection=connection)
    client = app.test_client()
    codes = [
        client.post("/jobs", json={"job": "demo.add", "args": [1, 2]}, headers=bearer(),
                    environ_base={"REMOTE_ADDR": f"10.0.0.{i}"}).status_code
        for i in range(8)
    ]
    assert codes == [202] * 5 + [429] * 3
    assert connection.llen("rq:queue:default") == 5
    assert connection.zcard(job_index.KEY) == 5, "a refused job is not listed"
    assert client.get("/health").status_code == 200


def test_floods_past_the_ip_limit_get_429(settings, connection):
    app = create_app(replace(settings, rate_limit_per_ip="3 per minute"), connection=connection)
    client = app.test_client()
    codes = [client.post("/jobs", json={"job": "demo.add", "args": [1, 2]}, headers=bearer()).status_code
             for _ in range(5)]
    assert codes == [202] * 3 + [429] * 2


# ---------------------------------------------------------------- responses


def test_security_headers_on_every_response(client, anonymous):
    for response in (client.get("/jobs"), anonymous.get("/jobs"), client.get("/nope"), anonymous.get("/health"),
                     client.post("/jobs", data="{", content_type="application/json"), client.get("/rq/")):
        for header in ("X-Content-Type-Options", "X-Frame-Options", "Content-Security-Policy", "Referrer-Policy"):
            assert header in response.headers, (response.request.path, header)
    assert client.get("/jobs").headers["Content-Security-Policy"].startswith("default-src 'none'")


def test_errors_carry_no_stack_trace_or_secret(settings, connection):
    app = create_app(replace(settings, redis_url="redis://:s3cret-pass@127.0.0.1:1/0"), connection=connection)

    @app.get("/boom")
    def boom():
        raise RuntimeError("secret internals")

    client = app.test_client()
    response = client.get("/boom", headers=bearer())
    assert response.status_code == 500
    body = response.data.decode()
    assert "Traceback" not in body and "secret internals" not in body and "s3cret" not in body
    assert response.content_type == "application/problem+json"
    dashboard = client.get("/rq/", headers=bearer()).data.decode()
    assert "s3cret-pass" not in dashboard


def test_the_service_keeps_serving_after_hostile_input(client, work):
    client.post("/jobs", data="\x00\xff" * 1000, content_type="application/json")
    client.post("/jobs", json={"job": "os.system", "args": ["id"]})
    job_id = client.post("/jobs", json={"job": "demo.add", "args": [1, 2]}).json["id"]
    work()
    assert client.get(f"/jobs/{job_id}").json["result"] == 3
