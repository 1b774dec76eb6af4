"""A stored XSS through job arguments and exception text must not run in the dashboard."""
from __future__ import annotations

from contextlib import contextmanager
from urllib.parse import quote

import pytest
import requests

from tests import processes
from tests.conftest import ADMIN_TOKEN, wait_for

PAYLOADS = [
    '<img src=x onerror="window.owned=(window.owned||0)+1">',
    "<script>window.owned=(window.owned||0)+1</script>",
]


@contextmanager
def admin_page(browser):
    """A page signed in to the dashboard as an admin, and the dialogs it opened."""
    context = browser.new_context(http_credentials={"username": "admin", "password": ADMIN_TOKEN})
    page = context.new_page()
    page.set_default_timeout(20_000)
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    try:
        yield page, dialogs
    finally:
        context.close()


@pytest.fixture
def live(redis_url, connection, tmp_path):
    with processes.procfile(redis_url, tmp_path) as base:
        yield base


def test_script_in_arguments_and_exceptions_runs_nothing_in_the_dashboard(browser, live):
    payload = " ".join(PAYLOADS)
    post = lambda body: requests.post(f"{live}/jobs", json=body, headers=processes.AUTH, timeout=5).json()["id"]  # noqa: E731
    failed = post({"job": "demo.fail", "kwargs": {"message": payload}, "retry": {"max": 0}, "description": payload})
    by_arguments = post({"job": "demo.fail", "args": [payload], "retry": {"max": 0}})

    def ended():
        states = [requests.get(f"{live}/jobs/{i}", headers=processes.AUTH, timeout=5).json()["status"] for i in (failed, by_arguments)]
        return all(state == "failed" for state in states)

    wait_for(ended, timeout=30, what="the hostile jobs to fail")

    with admin_page(browser) as (page, dialogs):
        page.goto(f"{live}/rq/0/view/jobs/default/failed/8/asc/1")
        page.wait_for_selector("pre.exc_info")
        assert "<script>window.owned" in page.locator("pre.exc_info").first.text_content()
        page.goto(f"{live}/rq/0/view/job/{failed}")
        page.wait_for_selector(".description-scroll")
        # The payload is shown as text...
        assert "<img src=x" in page.locator(".description-scroll").text_content()
        assert "onerror" in page.locator("pre.exc_info").text_content()
        # ...and nothing of it ran.
        assert page.evaluate("window.owned") is None
        assert page.locator("img[src=x]").count() == 0
        assert dialogs == []


#: Closes the string and the handlers around the queue name in rq-dashboard's
#: jobs script, runs at once, and leaves the rest of the script valid.
QUEUE_NAME_PAYLOAD = "x');}});window.owned=1;$('#z').on('x',function(){if(1){$(this).val('"


def test_a_queue_name_in_a_link_runs_nothing_in_the_dashboard(browser, live):
    """A link an admin is sent: the queue name comes from the URL, into a script."""
    with admin_page(browser) as (page, dialogs):
        page.goto(f"{live}/rq/0/view/jobs/{quote(QUEUE_NAME_PAYLOAD, safe='')}/queued/8/asc/1")
        page.wait_for_selector("#select-queue")
        page.wait_for_load_state("networkidle")
        assert page.evaluate("window.owned") is None
        assert dialogs == []
