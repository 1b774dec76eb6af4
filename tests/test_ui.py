"""The web page (/ui): served as it should be, and used in a real browser against the
real processes: a report's progress bar moves live to its download link, then an
email goes out with that report attached."""
from __future__ import annotations

import pytest

from tests import processes
from tests.servers import smtp_server


def test_the_page_and_its_files_are_served(client):
    assert client.get("/").status_code == 302 and client.get("/").headers["Location"].endswith("/ui")
    response = client.get("/ui")
    assert response.status_code == 200 and response.mimetype == "text/html"
    policy = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert b'<script src="/static/ui.js"' in response.data
    assert client.get("/static/ui.js").status_code == 200
    assert client.get("/static/ui.css").status_code == 200
    assert "/ui" not in client.get("/openapi.json").json["paths"]


@pytest.fixture
def smtp():
    with smtp_server() as server:
        yield server


@pytest.fixture
def live(redis_url, connection, tmp_path, smtp):
    """The Procfile's processes (gunicorn, worker, scheduler), mail going to the test SMTP server."""
    with processes.procfile(redis_url, tmp_path, SMTP_URL=smtp.url()) as base:
        yield base


RECORD_BAR = """() => {
  window.seen = [];
  const bar = document.getElementById("bar");
  new MutationObserver(() => window.seen.push(Number(bar.getAttribute("aria-valuenow"))))
    .observe(bar, {attributes: true, attributeFilter: ["aria-valuenow"]});
}"""


def test_a_report_runs_live_in_the_browser_then_goes_out_by_email(page, live, smtp, tmp_path):
    page.goto(live + "/ui")
    assert page.title() == "RQ Job Service"
    page.click("#settings summary")
    page.fill("#token", processes.ADMIN_TOKEN)
    page.dispatch_event("#token", "change")

    # A request the API refuses shows its problem.
    page.check("input[name=kind][value=email]")
    page.fill("#email-to", "not-an-address")
    page.click("#submit")
    error = page.locator("#error")
    error.wait_for(state="visible")
    assert "Invalid arguments for email.send" in error.text_content()
    assert "to: value is not a valid email address" in error.text_content()

    page.check("input[name=kind][value=report]")
    page.fill("#report-title", "Browser report")
    page.fill("#report-rows", "4000")
    page.fill("#report-steps", "10")
    page.fill("#report-pause", "0.3")
    page.evaluate(RECORD_BAR)
    page.click("#submit")

    page.wait_for_function("() => window.seen.some((value) => value > 0 && value < 100)")
    page.screenshot(path=str(tmp_path / "ui-running.png"))
    link = page.locator("#download")
    link.wait_for(state="visible")
    page.screenshot(path=str(tmp_path / "ui-finished.png"))

    seen = page.evaluate("window.seen")
    assert seen == sorted(seen), "the bar never moves back"
    assert len({value for value in seen if 0 < value < 100}) >= 3, seen
    assert seen[-1] == 100
    assert page.locator("#job-status").text_content() == "finished"
    job_id = page.locator("#job-id").text_content()
    assert link.get_attribute("href") == f"/jobs/{job_id}/artifact?name=report.html"
    with page.expect_download() as download:
        link.click()
    assert download.value.suggested_filename == "report.html"
    assert "<h1>Browser report</h1>" in open(download.value.path(), encoding="utf-8").read()

    page.check("input[name=kind][value=email]")
    page.fill("#email-to", "ann@example.com, bob@example.com")
    page.fill("#email-subject", "The browser report")
    page.check("#email-attach")
    page.click("#submit")
    outcome = page.locator("#outcome")
    outcome.wait_for(state="visible")
    assert "sent via smtp://" in outcome.text_content()
    [received] = smtp.mailbox.messages
    assert sorted(received.rcpt_tos) == ["ann@example.com", "bob@example.com"]
    assert received.message["Subject"] == "The browser report"
    [attachment] = received.message.iter_attachments()
    assert attachment.get_filename() == "report.html"
    assert page.js_errors == []
