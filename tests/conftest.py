"""Fixtures: a real Redis server, the app, and a real RQ worker run in burst mode.

With REDIS_URL set, tests use that server and flush its database before each
test; otherwise they start their own Redis on loopback.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import replace

import pytest
from redis import Redis

from service.embedded_redis import EmbeddedRedis
from service.settings import Settings
from worker import build_worker


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"))
    yield server.start()
    server.stop()


@pytest.fixture
def connection(redis_url):
    client = Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.close()


#: The token the tests' clients send: every scope.
ADMIN_TOKEN = "test-all-scopes-token-0123456789"
#: Tokens limited to one scope each, for the access tests.
SCOPED_TOKENS = {scope: f"test-only-{scope}-token-0123456789" for scope in ("enqueue", "read", "admin")}
API_TOKENS = ",".join([ADMIN_TOKEN] + [f"{token}:{scope}" for scope, token in SCOPED_TOKENS.items()])


def bearer(token: str = ADMIN_TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def settings(redis_url):
    return replace(Settings.from_env(), redis_url=redis_url, api_tokens=API_TOKENS)


@pytest.fixture
def app(settings, connection):
    from service import create_app

    return create_app(settings, connection=connection)


def authorized_client(app):
    """A test client of `app` that sends the all-scopes token with every request."""
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = bearer()["Authorization"]
    return client


@pytest.fixture
def client(app):
    """A test client that sends the all-scopes token with every request."""
    return authorized_client(app)


@pytest.fixture
def anonymous(app):
    """A test client that sends no credentials."""
    return app.test_client()


@pytest.fixture
def work(settings):
    """Run a real RQ worker over the service's queues until they are empty."""

    def run() -> None:
        build_worker(settings).work(burst=True)

    return run


def wait_for(predicate, timeout: float = 15.0, interval: float = 0.05, what: str = "condition"):
    """Poll `predicate` until it returns something truthy; fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@pytest.fixture
def worker_process(redis_url, tmp_path):
    """A real `python worker.py` process against the test Redis, for tests that need
    a job to run while they watch it."""
    from tests import processes

    with processes.running(
        [sys.executable, "worker.py"], processes.process_env(redis_url), tmp_path / "worker.log"
    ) as process:
        client = Redis.from_url(redis_url)
        wait_for(lambda: client.scard("rq:workers") > 0, what="the worker to register")
        client.close()
        yield process


def stored_keys(connection) -> list[bytes]:
    """Every key in Redis but the rate limiter's counters: what a request wrote."""
    return [key for key in connection.scan_iter() if not key.startswith(b"jobservice:ratelimit:")]


@pytest.fixture(autouse=True)
def job_files(tmp_path, monkeypatch):
    """Jobs of each test keep artifacts and outbox mail in its own folder, and
    never reach a mail server or a webhook secret from the developer's environment.
    Outbound calls may reach 127.0.0.1, where the test servers listen, and no
    other address that is not public."""
    monkeypatch.setenv("ARTIFACTS_DIR", str(tmp_path / "artifacts"))
    monkeypatch.setenv("EMAIL_OUTBOX_DIR", str(tmp_path / "outbox"))
    monkeypatch.setenv("OUTBOUND_ALLOWED_HOSTS", "127.0.0.1")
    for name in ("SMTP_URL", "SMTP_CA_FILE", "WEBHOOK_SECRET", "HTTP_HOST_CONCURRENCY", "OUTBOUND_ALLOW_PRIVATE"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


@pytest.fixture
def worker_processes(redis_url, connection, tmp_path):
    """`start(count)`: that many real `python worker.py` processes, started at once."""
    import contextlib

    from tests import processes

    with contextlib.ExitStack() as stack:

        def start(count: int) -> None:
            for number in range(count):
                stack.enter_context(
                    processes.running(
                        [sys.executable, "worker.py"],
                        processes.process_env(redis_url),
                        tmp_path / f"worker-{number}.log",
                    )
                )
            wait_for(lambda: connection.scard("rq:workers") >= count, what=f"{count} workers to register")

        yield start


@pytest.fixture
def http_server():
    """A real HTTP server on loopback; tell it how to answer with `answer(path, ...)`."""
    from tests.servers import HttpServer

    with HttpServer() as server:
        yield server


# The browser fixtures, defined once for the whole session (one Playwright per process).
from tests.browser import browser, page  # noqa: E402,F401
