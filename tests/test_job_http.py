"""http.request against a real HTTP server on loopback: results, retries with backoff
and Retry-After, failing at once on 4xx, and the per-host concurrency limit."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import httpx
import pytest

from jobs import _outbound, http
from jobs._failures import PermanentFailure, TransientFailure
from service.embedded_redis import free_port
from tests.conftest import wait_for
from tests.servers import Answer


def post(client, body):
    response = client.post("/jobs", json=body)
    assert response.status_code == 202, response.json
    return response.json["id"]


def test_returns_status_headers_and_body(client, work, http_server):
    http_server.answer("/things/1", Answer(200, {"id": 1, "name": "thing"}, {"X-Request-Id": "abc"}))
    job_id = post(client, {"job": "http.request", "args": [http_server.url("/things/1")]})
    work()
    job = client.get(f"/jobs/{job_id}").json
    assert job["status"] == "finished"
    result = job["result"]
    assert result["status"] == 200
    assert result["headers"]["x-request-id"] == "abc"
    assert result["json"] == {"id": 1, "name": "thing"}
    assert result["truncated"] is False


def test_sends_method_headers_and_json_body(http_server):
    http_server.answer("/orders", Answer(201, {"created": True}))
    result = http.request(
        http_server.url("/orders"), method="POST", headers={"Authorization": "Bearer t0k"}, json={"qty": 2}
    )
    assert result["status"] == 201
    [seen] = http_server.requests("/orders")
    assert seen.method == "POST"
    assert seen.headers["Authorization"] == "Bearer t0k"
    assert seen.headers["Content-Type"] == "application/json"
    assert seen.json() == {"qty": 2}


def test_the_body_kept_is_bounded(http_server, monkeypatch):
    monkeypatch.setenv("HTTP_MAX_RESPONSE_BYTES", "1000")
    http_server.answer("/big", Answer(200, "x" * 50_000))
    result = http.request(http_server.url("/big"))
    assert result["truncated"] is True
    assert result["body"] == "x" * 1000


def test_binary_bodies_come_back_as_base64(http_server):
    http_server.answer("/logo", Answer(200, b"\x89PNG\r\n", {"Content-Type": "image/png"}))
    result = http.request(http_server.url("/logo"))
    assert result["body_base64"] == "iVBORw0K"


def test_5xx_answers_are_retried_until_one_succeeds(client, work, http_server):
    http_server.answer("/flaky", Answer(503, "down"), Answer(500, "oops"), Answer(200, {"ok": True}))
    body = {"job": "http.request", "args": [http_server.url("/flaky")], "retry": {"max": 3, "backoff": [0]}}
    job_id = post(client, body)
    work()
    job = client.get(f"/jobs/{job_id}").json
    assert job["status"] == "finished"
    assert job["result"]["json"] == {"ok": True}
    assert [attempt["outcome"] for attempt in job["history"]] == ["retried", "retried", "finished"]
    assert "answered 503 Service Unavailable: down" in job["history"][0]["error"]["message"]
    assert len(http_server.requests("/flaky")) == 3


def test_a_4xx_answer_fails_at_once(client, work, http_server):
    http_server.answer("/missing", Answer(404, "no such thing"))
    body = {"job": "http.request", "args": [http_server.url("/missing")], "retry": {"max": 3, "backoff": [0]}}
    job_id = post(client, body)
    work()
    job = client.get(f"/jobs/{job_id}").json
    assert job["status"] == "failed"
    assert job["retries_left"] == 0
    assert [attempt["outcome"] for attempt in job["history"]] == ["failed"]
    assert job["error"]["message"] == f"GET {http_server.url('/missing')} answered 404 Not Found: no such thing"
    assert len(http_server.requests("/missing")) == 1


def test_network_errors_are_retried_then_fail_with_the_cause(client, work):
    body = {"job": "http.request", "args": [f"http://127.0.0.1:{free_port()}/"], "retry": {"max": 1, "backoff": [0]}}
    job_id = post(client, body)
    work()
    job = client.get(f"/jobs/{job_id}").json
    assert job["status"] == "failed"
    assert [attempt["outcome"] for attempt in job["history"]] == ["retried", "failed"]
    assert job["error"]["type"].endswith("TransientFailure")
    assert "ConnectError" in job["error"]["message"]


def test_a_slow_server_times_out_as_a_transient_failure(http_server):
    http_server.answer("/slow", Answer(200, "late", delay=2))
    with pytest.raises(TransientFailure, match="ReadTimeout"):
        http.request(http_server.url("/slow"), timeout=0.3)


def test_429_waits_as_long_as_retry_after_asks(client, http_server, worker_process):
    http_server.answer("/limited", Answer(429, "slow down", {"Retry-After": "2"}), Answer(200, {"ok": True}))
    # The policy alone would retry at once; Retry-After makes it wait.
    body = {"job": "http.request", "args": [http_server.url("/limited")], "retry": {"max": 2, "backoff": [0]}}
    job_id = post(client, body)
    # RQ writes the `scheduled` status a moment before the retry count it
    # records in the same step (`Job.retry`), so wait for both.
    waiting = wait_for(lambda: (job := _status(client, job_id, "scheduled")) and job["retries_left"] == 1 and job,
                       what="the retry to be scheduled")
    assert waiting["scheduled_for"] is not None
    job = wait_for(lambda: _status(client, job_id, "finished"), timeout=20, what="the retry to succeed")
    first, second = http_server.requests("/limited")
    assert second.at - first.at >= 2.0
    assert job["result"]["json"] == {"ok": True}


def test_a_failed_call_keeps_its_headers_and_query_string_out_of_the_logs_and_the_error(
    client, http_server, worker_process, tmp_path
):
    http_server.answer("/refused", Answer(403, "no"))
    url = http_server.url("/refused") + "?api_key=k3y-5678"
    body = {"job": "http.request", "kwargs": {"url": url, "headers": {"Authorization": "Bearer s3cr3t-1234"}}}
    job_id = post(client, body)
    job = wait_for(lambda: _status(client, job_id, "failed"), timeout=20, what="the call to fail")
    assert job["error"]["message"].endswith(f"GET {http_server.url('/refused')}?… answered 403 Forbidden: no")
    log_path = tmp_path / "worker.log"
    wait_for(lambda: "job.failed" in log_path.read_text(), what="the failure's log line")
    log = log_path.read_text()
    assert "exception raised while executing" in log  # RQ's line, with its traceback, is kept
    assert "s3cr3t" not in log and "k3y-5678" not in log


def test_an_error_shows_a_url_without_its_query_string_or_password():
    assert _outbound.shown("https://ann:pw@api.test:8443/v1/things?key=k#top") == "https://api.test:8443/v1/things?…"
    assert _outbound.shown("http://api.test/v1") == "http://api.test/v1"


def _status(client, job_id, status):
    job = client.get(f"/jobs/{job_id}").json
    return job if job["status"] == status else None


def test_retry_after_takes_seconds_or_a_date_and_has_a_ceiling(monkeypatch):
    def response(value: str) -> httpx.Response:
        return httpx.Response(503, headers={"Retry-After": value},
                              request=httpx.Request("GET", "http://user:pa55word@api.test/v1?key=s3cret"))

    now = datetime(2025, 1, 1, 12, 0, tzinfo=timezone.utc)
    assert http._retry_after(response("120"), now) == 120
    assert http._retry_after(response(format_datetime(now + timedelta(seconds=90), usegmt=True)), now) == 90
    assert http._retry_after(response("soon"), now) is None
    monkeypatch.setenv("HTTP_MAX_RETRY_AFTER", "60")
    with pytest.raises(PermanentFailure, match="asks to retry after 120 s") as refused:
        http._retry_after(response("120"), now)
    # The error is kept on the job and logged: the URL as every error shows it.
    assert str(refused.value).startswith("GET http://api.test/v1?… asks")


def test_a_request_http_cannot_carry_fails_at_once(http_server):
    """Called past the argument checks, as a job enqueued by hand might be."""
    http_server.answer("/any", Answer(200, "ok"))
    with pytest.raises(PermanentFailure, match="Illegal header value"):
        http.request(http_server.url("/any"), headers={"X-A": " lead"})
    assert http_server.requests("/any") == []


@pytest.mark.parametrize(
    "kwargs",
    [
        {"url": "file:///etc/passwd"},
        {"url": "gopher://127.0.0.1:6379/"},
        {"url": "http://example.com/", "method": "TRACE"},
        {"url": "http://example.com/", "headers": {"X-Evil": "a\r\nInjected: yes"}},
        # Values and headers the HTTP client would refuse at every try.
        *({"url": "http://example.com/", "headers": {"X-A": value}} for value in ("é", " lead", "trail ", "a\u2028b")),
        {"url": "http://example.com/", "headers": {"Content-Length": "abc"}},
        {"url": "http://example.com/", "headers": {"transfer-encoding": "gzip"}},
        {"url": "http://example.com/", "timeout": 0},
    ],
)
def test_only_http_urls_and_sane_options_are_accepted(client, connection, kwargs):
    response = client.post("/jobs", json={"job": "http.request", "kwargs": kwargs})
    assert response.status_code == 422, response.json
    assert connection.keys("rq:job:*") == []


@pytest.mark.parametrize("delay", [None, 3], ids=["now", "delayed"])
def test_a_burst_to_one_host_never_has_more_than_the_limit_in_flight(
    client, http_server, monkeypatch, worker_processes, delay
):
    """Delayed, the burst reaches the queue through the workers' scheduler, which must keep the limit too."""
    monkeypatch.setenv("HTTP_HOST_CONCURRENCY", "2")  # read where jobs are enqueued: here
    http_server.answer("/slow", Answer(200, "done", delay=0.5))
    worker_processes(4)
    body = {"job": "http.request", "args": [http_server.url("/slow")], "delay": delay}
    ids = [post(client, {key: value for key, value in body.items() if value is not None}) for _ in range(8)]
    if delay:  # RQ keeps whole seconds of the time a job is due: 2 to 3 s from now
        assert {client.get(f"/jobs/{job_id}").json["status"] for job_id in ids} == {"scheduled"}
        wait_for(lambda: all(client.get(f"/jobs/{job_id}").json["status"] != "scheduled" for job_id in ids),
                 what="the burst to fall due")
    statuses = {client.get(f"/jobs/{job_id}").json["status"] for job_id in ids}
    assert "rate_limited" in statuses  # the ones over the limit wait in Redis, not in a worker

    def all_finished():
        return all(client.get(f"/jobs/{job_id}").json["status"] == "finished" for job_id in ids)

    wait_for(all_finished, timeout=30, what="the burst to finish")
    calls = http_server.requests("/slow")
    assert len(calls) == 8
    # Four workers could run four at once; the limit lets two.
    assert http_server.most_in_flight["/slow"] == 2
    assert calls[-1].at - calls[0].at >= 1.5  # 8 calls of 0.5 s, 2 at a time: 4 rounds


def test_a_job_waiting_for_a_slot_can_be_cancelled(client, http_server, monkeypatch):
    monkeypatch.setenv("HTTP_HOST_CONCURRENCY", "1")
    ids = [post(client, {"job": "http.request", "args": [http_server.url("/x")]}) for _ in range(2)]
    assert client.get(f"/jobs/{ids[1]}").json["status"] == "rate_limited"
    response = client.delete(f"/jobs/{ids[1]}")
    assert response.status_code == 200, response.json
    assert client.get(f"/jobs/{ids[1]}").json["status"] == "canceled"
