"""Completion webhooks, delivered to a real HTTP server on loopback: signed, retried."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest

from service.webhooks import key, signature
from tests.conftest import wait_for, bearer
from tests.servers import Answer

SECRET = "a-secret-of-sixteen-or-more"


def post(client, body):
    response = client.post("/jobs", json=body)
    assert response.status_code == 202, response.json
    return response.json["id"]


def verify(seen, secret: str) -> dict:
    """What a receiver does: check the Standard Webhooks signature, then read the event."""
    message_id, timestamp = seen.headers["webhook-id"], seen.headers["webhook-timestamp"]
    expected = hmac.new(secret.encode(), f"{message_id}.{timestamp}.".encode() + seen.body, hashlib.sha256).digest()
    scheme, _, given = seen.headers["webhook-signature"].partition(",")
    assert scheme == "v1"
    assert hmac.compare_digest(base64.b64decode(given), expected), "bad signature"
    return seen.json()


def test_a_finished_job_posts_its_outcome_signed(client, work, http_server):
    http_server.answer("/hook", Answer(204))
    webhook = {"url": http_server.url("/hook") + "?key=k3y-in-the-query", "secret": SECRET}
    job_id = post(client, {"job": "demo.add", "args": [1, 2], "webhook": webhook})
    work()
    [seen] = http_server.requests("/hook")
    event = verify(seen, SECRET)
    assert event["type"] == "job.finished"
    assert event["data"]["id"] == job_id
    assert event["data"]["status"] == "finished"
    assert event["data"]["result"] == 3
    assert seen.headers["Content-Type"] == "application/json"
    delivery = client.get(f"/jobs/{seen.headers['webhook-id']}").json
    assert delivery["status"] == "finished"
    # The delivery's result names the receiver without the key in its query string.
    assert delivery["result"] == {"delivered": True, "url": http_server.url("/hook") + "?…", "status": 204}


def test_a_failed_job_posts_its_error(client, work, http_server):
    http_server.answer("/hook", Answer(200))
    body = {"job": "demo.fail", "args": ["boom"], "retry": {"max": 0}, "webhook": {"url": http_server.url("/hook"), "secret": SECRET}}
    job_id = post(client, body)
    work()
    [seen] = http_server.requests("/hook")
    event = verify(seen, SECRET)
    assert event["type"] == "job.failed"
    assert event["data"]["id"] == job_id
    assert event["data"]["error"]["message"] == "boom"


def test_a_worker_learns_from_the_record_alone_that_no_webhook_waits(client, connection):
    """So it does not ask Redis again for every job it runs."""
    from service.queues import ServiceJob

    job_id = post(client, {"job": "demo.add", "args": [1, 2]})
    assert connection.hget(f"rq:job:{job_id}", "webhook") == b""
    assert ServiceJob.fetch(job_id, connection=connection).has_webhook is False


def test_a_job_whose_record_does_not_say_whether_a_webhook_waits_still_posts(client, work, http_server, connection):
    """A record without the `webhook` field, as an earlier version wrote it and
    a worker of this one takes it: the worker looks the webhook up."""
    http_server.answer("/hook", Answer(204))
    job_id = post(client, {"job": "demo.add", "args": [1, 2], "webhook": {"url": http_server.url("/hook"), "secret": SECRET}})
    assert connection.hget(f"rq:job:{job_id}", "webhook") == b"1"
    connection.hdel(f"rq:job:{job_id}", "webhook")
    work()
    [seen] = http_server.requests("/hook")
    assert verify(seen, SECRET)["data"]["id"] == job_id


def test_a_job_that_is_retried_posts_once_when_it_ends(client, work, http_server):
    http_server.answer("/hook", Answer(200))
    body = {
        "job": "demo.flaky",
        "kwargs": {"fail_times": 2},
        "retry": {"max": 3, "backoff": [0]},
        "webhook": {"url": http_server.url("/hook"), "secret": SECRET},
    }
    post(client, body)
    work()
    [seen] = http_server.requests("/hook")
    assert verify(seen, SECRET)["data"]["result"] == 3


def test_a_cancelled_job_posts_too(client, work, http_server):
    http_server.answer("/hook", Answer(200))
    job_id = post(client, {"job": "demo.add", "args": [1, 2], "delay": 600, "webhook": {"url": http_server.url("/hook"), "secret": SECRET}})
    assert client.delete(f"/jobs/{job_id}").json["status"] == "canceled"
    work()
    [seen] = http_server.requests("/hook")
    assert verify(seen, SECRET)["type"] == "job.canceled"


def test_a_cancel_that_read_the_job_before_another_cancel_ended_is_refused_and_posts_nothing_more(client, work, http_server, connection):
    """Two DELETEs at once: the second read the job while it was still waiting."""
    from service import job_actions
    from service.queues import ServiceJob

    http_server.answer("/hook", Answer(200))
    job_id = post(client, {"job": "demo.add", "args": [1, 2], "delay": 600, "webhook": {"url": http_server.url("/hook"), "secret": SECRET}})
    second = ServiceJob.fetch(job_id, connection)
    assert client.delete(f"/jobs/{job_id}").json["status"] == "canceled"
    with pytest.raises(job_actions.NotAllowed, match="is canceled"):
        job_actions.cancel(second, connection)
    work()
    [seen] = http_server.requests("/hook")
    assert verify(seen, SECRET)["type"] == "job.canceled"


@pytest.fixture
def short_backoff(monkeypatch):
    """Undelivered webhooks are retried after 2 s (set before the worker starts)."""
    monkeypatch.setenv("WEBHOOK_BACKOFF", "2,2")


def test_an_undelivered_webhook_is_retried_with_the_same_id_and_body(client, http_server, short_backoff, worker_process):
    http_server.answer("/hook", Answer(500), Answer(503), Answer(200))
    url = http_server.url("/hook") + "?token=t0k3n"
    job_id = post(client, {"job": "demo.add", "args": [1, 2], "webhook": {"url": url, "secret": SECRET}})
    wait_for(lambda: len(http_server.requests("/hook")) == 3, timeout=30, what="three delivery attempts")
    attempts = http_server.requests("/hook")
    assert len({seen.headers["webhook-id"] for seen in attempts}) == 1
    assert len({seen.body for seen in attempts}) == 1
    for seen in attempts:
        assert verify(seen, SECRET)["data"]["id"] == job_id
    # RQ schedules to the whole second, so a 2 s backoff waits at least 1 s.
    assert attempts[1].at - attempts[0].at >= 1
    delivery_id = attempts[0].headers["webhook-id"]
    assert delivery_id in {job["id"] for job in client.get("/jobs?limit=5").json["jobs"]}
    delivery = wait_for(lambda: _ended(client, delivery_id), what="the delivery job to end")
    assert delivery["status"] == "finished"
    assert [attempt["outcome"] for attempt in delivery["history"]] == ["retried", "retried", "finished"]
    # The receiver's URL in an error, as in the logs, leaves out its query string.
    assert delivery["history"][0]["error"]["message"].endswith(f"POST {http_server.url('/hook')}?… answered 500 Internal Server Error")
    assert "t0k3n" not in json.dumps(delivery["history"])


def _ended(client, job_id):
    job = client.get(f"/jobs/{job_id}").json
    return job if job["status"] in ("finished", "failed") else None


def test_the_secret_is_never_shown(client, connection, http_server):
    job_id = post(client, {"job": "demo.add", "args": [1, 2], "webhook": {"url": http_server.url("/hook"), "secret": SECRET}})
    assert SECRET not in json.dumps(client.get(f"/jobs/{job_id}").json)
    assert SECRET.encode() not in b"".join(v for v in connection.hgetall(f"rq:job:{job_id}").values())
    assert connection.hget(key(job_id), "secret") == SECRET.encode()


def test_the_service_secret_signs_when_the_request_gives_none(client, work, http_server, monkeypatch, settings, connection):
    from dataclasses import replace

    from service import create_app

    http_server.answer("/hook", Answer(200))
    app = create_app(replace(settings, webhook_secret="the-service-wide-secret"), connection=connection)
    response = app.test_client().post(
        "/jobs", json={"job": "demo.add", "args": [1, 2], "webhook": {"url": http_server.url("/hook")}}, headers=bearer()
    )
    assert response.status_code == 202
    work()
    [seen] = http_server.requests("/hook")
    verify(seen, "the-service-wide-secret")


@pytest.mark.parametrize(
    "webhook, problem",
    [
        ({"url": "ftp://example.com/hook", "secret": SECRET}, "url"),
        ({"url": "javascript:alert(1)", "secret": SECRET}, "url"),
        ({"url": "https://example.com/hook", "secret": "short"}, "secret"),
        ({"url": "https://example.com/hook"}, "secret"),  # and no WEBHOOK_SECRET
        ({"url": "https://example.com/hook", "secret": SECRET, "method": "GET"}, "method"),
        # Every delivery would fail to sign: `whsec_` promises base64.
        ({"url": "https://example.com/hook", "secret": "whsec_abcdefghijk"}, "base64"),
    ],
)
def test_bad_webhooks_are_refused_with_422(client, connection, webhook, problem):
    response = client.post("/jobs", json={"job": "demo.add", "args": [1, 2], "webhook": webhook})
    assert response.status_code == 422, response.json
    assert problem in json.dumps(response.json)
    assert connection.keys("rq:job:*") == []
    assert connection.keys(key("*")) == []


def test_signatures_match_the_standard_webhooks_test_vector():
    # Published with the Standard Webhooks reference libraries.
    assert (
        signature("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, '{"test": 2432232314}')
        == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    )
