"""/docs: Swagger UI, every file of it from this service, rendering the API in a real browser."""
from __future__ import annotations

import re
from urllib.parse import urlsplit

import pytest

from tests import chaos
from tests.conftest import SCOPED_TOKENS, bearer


def test_the_page_loads_only_files_of_this_service(client, anonymous):
    response = client.get("/docs")
    assert response.status_code == 200 and response.mimetype == "text/html"
    policy = response.headers["Content-Security-Policy"]
    script_src = re.search(r"script-src ([^;]*)", policy).group(1).split()
    assert script_src[0] == "'self'" and script_src[1].startswith("'nonce-") and len(script_src) == 2
    nonce = script_src[1][len("'nonce-"):-1]
    page = response.get_data(as_text=True)
    # Every inline script carries the nonce: nothing else on the page may run.
    assert page.count("<script>") == 0 and page.count(f'<script nonce="{nonce}">') == 1
    files = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert len(files) == 4
    for url in files:
        assert not urlsplit(url).netloc, url  # this origin
        asset = anonymous.get(url)  # no data in them: a browser fetches them without the token
        assert asset.status_code == 200 and len(asset.data) > 500, url


def test_it_needs_a_read_token_and_serves_nothing_else_of_the_package(client, anonymous):
    refused = anonymous.get("/docs")
    assert refused.status_code == 401 and refused.headers["WWW-Authenticate"].startswith("Basic")
    assert client.get("/docs", headers=bearer(SCOPED_TOKENS["enqueue"])).status_code == 403
    assert client.get("/docs", headers=bearer(SCOPED_TOKENS["read"])).status_code == 200
    for name in ("index.html", "swagger-ui.js", "LICENSE", "oauth2-redirect.html"):
        assert anonymous.get(f"/docs/{name}").status_code == 404, name


@pytest.fixture
def served(redis_url, tmp_path):
    """The web server as the Procfile runs it, on loopback."""
    with chaos.web(redis_url, tmp_path / "web.log") as base:
        yield base


def test_a_browser_renders_every_operation_without_leaving_the_origin(browser, served):
    context = browser.new_context(http_credentials={"username": "", "password": SCOPED_TOKENS["read"]})
    page = context.new_page()
    origins, problems = set(), []
    page.on("request", lambda request: origins.add("{0.scheme}://{0.netloc}".format(urlsplit(request.url))))
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("console", lambda message: message.type == "error" and problems.append(message.text))
    try:
        page.goto(served + "/docs")
        page.locator(".opblock-summary-path", has_text="/jobs/{job_id}/events").first.wait_for(timeout=20_000)
        assert page.locator(".opblock-summary-description", has_text="Enqueue a job").count() == 1
        assert "RQ Job Service" in page.locator(".info .title").text_content()
    finally:
        context.close()
    assert origins == {served}
    assert problems == []  # a script or style the policy blocked is a console error
