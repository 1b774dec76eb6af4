"""email.send against a real SMTP server on loopback (aiosmtpd): plain, STARTTLS, SMTPS,
retries on transient failures, failing at once on permanent ones, and the outbox."""
from __future__ import annotations

import email
import email.policy

import pytest

from jobs import _artifacts
from jobs import email as mail
from jobs._failures import PermanentFailure
from service.embedded_redis import free_port
from tests.conftest import wait_for
from tests.servers import Mailbox, smtp_server


def post(client, body):
    response = client.post("/jobs", json=body)
    assert response.status_code == 202, response.json
    return response.json["id"]


@pytest.fixture
def smtp(monkeypatch):
    with smtp_server() as server:
        monkeypatch.setenv("SMTP_URL", server.url())
        yield server


def test_sends_text_and_html_to_several_recipients_with_an_artifact_attached(client, work, smtp):
    report = post(client, {"job": "reports.generate", "kwargs": {"format": "csv", "generated": 50, "steps": 2}})
    work()
    body = {
        "job": "email.send",
        "kwargs": {
            "to": ["ann@example.com", "bob@example.com"],
            "cc": ["cat@example.com"],
            "bcc": ["dan@example.com"],
            "subject": "Monthly report",
            "text": "Hello, the report is attached.",
            "html": "<p>Hello, the <b>report</b> is attached.</p>",
            "attachments": [{"job": report, "name": "report.csv"}],
        },
    }
    job_id = post(client, body)
    work()

    job = client.get(f"/jobs/{job_id}").json
    assert job["status"] == "finished", job
    [received] = smtp.mailbox.messages
    assert sorted(received.rcpt_tos) == ["ann@example.com", "bob@example.com", "cat@example.com", "dan@example.com"]
    message = received.message
    assert message["To"] == "ann@example.com, bob@example.com"
    assert message["Cc"] == "cat@example.com"
    assert message["Bcc"] is None
    assert message["Subject"] == "Monthly report"
    assert message["Message-ID"] == job["result"]["message_id"] == f"<{job_id}@localhost>"
    assert message.get_body(("plain",)).get_content().strip() == "Hello, the report is attached."
    assert "<b>report</b>" in message.get_body(("html",)).get_content()
    [attachment] = list(message.iter_attachments())
    assert attachment.get_filename() == "report.csv"
    assert attachment.get_content_type() == "text/csv"
    assert attachment.get_content().encode() == _artifacts.existing(report, "report.csv").read_bytes()
    assert job["result"]["refused"] == {}
    assert job["result"]["via"] == f"smtp://127.0.0.1:{smtp.port}"


def test_starttls_with_a_login(tmp_path, monkeypatch):
    with smtp_server(tmp_path, mode="starttls", users={"mailer": "p@ss:word"}) as server:
        monkeypatch.setenv("SMTP_URL", server.url("smtp", "mailer", "p%40ss%3Aword"))
        monkeypatch.setenv("SMTP_CA_FILE", server.ca_file)
        result = mail.send(["ann@example.com"], "Over TLS", "hello")
        [received] = server.mailbox.messages
    assert received.tls and received.user == "mailer"
    assert result["accepted"] == ["ann@example.com"]


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_smtps_with_a_login(tmp_path, monkeypatch):
    with smtp_server(tmp_path, mode="smtps", users={"mailer": "secret"}) as server:
        monkeypatch.setenv("SMTP_URL", server.url("smtps", "mailer", "secret"))
        monkeypatch.setenv("SMTP_CA_FILE", server.ca_file)
        mail.send(["ann@example.com"], "Over TLS from the start", "hello")
        [received] = server.mailbox.messages
    assert received.tls and received.user == "mailer"


def test_refuses_to_send_a_password_without_tls(monkeypatch):
    with smtp_server() as server:
        monkeypatch.setenv("SMTP_URL", server.url("smtp", "mailer", "secret"))
        with pytest.raises(PermanentFailure, match="does not offer STARTTLS"):
            mail.send(["ann@example.com"], "hi", "hello")
        assert server.mailbox.messages == []


def test_an_untrusted_certificate_is_a_permanent_failure(tmp_path, monkeypatch):
    with smtp_server(tmp_path, mode="smtps") as server:
        monkeypatch.setenv("SMTP_URL", server.url("smtps"))  # no SMTP_CA_FILE: the test CA is unknown
        with pytest.raises(PermanentFailure, match="certificate not trusted.*SMTP_CA_FILE"):
            mail.send(["ann@example.com"], "hi", "hello")


def test_a_5xx_reply_fails_at_once_with_a_clear_error(client, work, smtp):
    smtp.mailbox.refuse["nobody@example.com"] = "550 5.1.1 No such user here"
    body = {
        "job": "email.send",
        "kwargs": {"to": ["nobody@example.com"], "subject": "hi", "text": "hello"},
        "retry": {"max": 3, "backoff": [0]},
    }
    job_id = post(client, body)
    work()
    job = client.get(f"/jobs/{job_id}").json
    assert job["status"] == "failed"
    assert job["retries_left"] == 0
    assert [attempt["outcome"] for attempt in job["history"]] == ["failed"]
    assert job["error"]["type"].endswith("PermanentFailure")
    assert "refused every recipient: nobody@example.com: 550 5.1.1 No such user here" in job["error"]["message"]


def test_some_recipients_refused_is_reported_not_retried(client, work, smtp):
    smtp.mailbox.refuse["nobody@example.com"] = "550 5.1.1 No such user here"
    body = {"job": "email.send", "kwargs": {"to": ["ann@example.com", "nobody@example.com"], "subject": "s", "text": "t"}}
    job_id = post(client, body)
    work()
    job = client.get(f"/jobs/{job_id}").json
    assert job["status"] == "finished"
    assert job["result"]["accepted"] == ["ann@example.com"]
    assert job["result"]["refused"] == {"nobody@example.com": "550 5.1.1 No such user here"}
    assert len(smtp.mailbox.messages) == 1


def test_4xx_replies_are_retried_until_the_message_goes_through(client, work, smtp):
    smtp.mailbox.data_replies = ["451 4.3.0 Try again later", "421 4.7.0 Too busy"]
    body = {
        "job": "email.send",
        "kwargs": {"to": ["ann@example.com"], "subject": "hi", "text": "hello"},
        "retry": {"max": 3, "backoff": [0]},
    }
    job_id = post(client, body)
    work()
    job = client.get(f"/jobs/{job_id}").json
    assert job["status"] == "finished", job
    assert [attempt["outcome"] for attempt in job["history"]] == ["retried", "retried", "finished"]
    assert "451 4.3.0 Try again later" in job["history"][0]["error"]["message"]
    assert smtp.mailbox.data_commands == 3
    assert len(smtp.mailbox.messages) == 1


@pytest.fixture
def smtp_down(monkeypatch):
    """SMTP_URL names a port nothing listens on (yet); set before the worker starts."""
    port = free_port()
    monkeypatch.setenv("SMTP_URL", f"smtp://127.0.0.1:{port}")
    return port


def test_a_server_that_is_down_is_retried_with_backoff(client, smtp_down, worker_process):
    body = {
        "job": "email.send",
        "kwargs": {"to": ["ann@example.com"], "subject": "hi", "text": "hello"},
        "retry": {"max": 5, "backoff": [1]},
    }
    job_id = post(client, body)
    waiting = wait_for(lambda: _retrying(client, job_id), what="the first attempt to fail")
    assert "ConnectionRefusedError" in waiting["history"][0]["error"]["message"]
    mailbox = Mailbox()
    with smtp_server(port=smtp_down, mailbox=mailbox):
        job = wait_for(lambda: _ended(client, job_id), timeout=20, what="the retry to go through")
    assert job["status"] == "finished"
    assert len(mailbox.messages) == 1


def _retrying(client, job_id):
    job = client.get(f"/jobs/{job_id}").json
    return job if job["history"] and job["status"] in ("scheduled", "queued", "started") else None


def _ended(client, job_id):
    job = client.get(f"/jobs/{job_id}").json
    return job if job["status"] in ("finished", "failed") else None


def test_without_smtp_url_mail_goes_to_the_outbox(job_files):
    result = mail.send(["ann@example.com"], "Local run", "hello from the outbox")
    [written] = (job_files / "outbox").glob("*.eml")
    assert result["outbox"] == str(written)
    message = email.message_from_bytes(written.read_bytes(), policy=email.policy.default)
    assert message["Subject"] == "Local run"
    assert message.get_content().strip() == "hello from the outbox"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"to": ["not-an-address"], "subject": "s", "text": "t"},
        {"to": [], "subject": "s", "text": "t"},
        {"to": ["ann@example.com"], "subject": "s\r\nBcc: eve@example.com", "text": "t"},
        # Line ends a header cannot hold either, though they are not \r or \n.
        *({"to": ["ann@example.com"], "subject": f"s{end}t", "text": "t"} for end in "\v\f\x1c\x85\u2028\u2029"),
        {"to": ["ann@example.com"], "subject": "s", "text": "t", "attachments": [{"job": "x", "name": "../../etc/passwd"}]},
        {"to": ["ann@example.com"], "subject": "s", "text": "t", "attachments": [{"job": "../..", "name": "passwd"}]},
    ],
)
def test_bad_addresses_headers_and_attachments_are_refused_with_422(client, connection, kwargs):
    response = client.post("/jobs", json={"job": "email.send", "kwargs": kwargs})
    assert response.status_code == 422, response.json
    assert connection.keys("rq:job:*") == []


def test_attaching_an_artifact_that_does_not_exist_fails_at_once(client, work, smtp):
    body = {
        "job": "email.send",
        "kwargs": {"to": ["ann@example.com"], "subject": "s", "text": "t", "attachments": [{"job": "nope", "name": "a.csv"}]},
        "retry": {"max": 3, "backoff": [0]},
    }
    job_id = post(client, body)
    work()
    job = client.get(f"/jobs/{job_id}").json
    assert job["status"] == "failed" and job["retries_left"] == 0
    assert "cannot attach 'a.csv' of job nope" in job["error"]["message"]
    assert smtp.mailbox.messages == []
