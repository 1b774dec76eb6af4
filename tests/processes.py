"""Start the service's real processes (as the Procfile names them) for a test."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import requests

from service.embedded_redis import free_port
from tests.conftest import ADMIN_TOKEN, API_TOKENS, wait_for

#: Headers for requests to a server started here.
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

ROOT = Path(__file__).resolve().parent.parent


def process_env(redis_url: str, **overrides: str) -> dict[str, str]:
    """The environment a Procfile process gets: the test Redis, the venv's tools first."""
    return {
        **os.environ,
        "REDIS_URL": redis_url,
        "API_TOKENS": API_TOKENS,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        **overrides,
    }


@contextlib.contextmanager
def running(command: list[str], env: dict[str, str], log_path: Path):
    """Run `command` from the project root until the block ends; its output goes to `log_path`."""
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            yield process
        finally:
            stop(process)


def stop(process: subprocess.Popen, timeout: float = 20) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def session() -> requests.Session:
    """A client for the service's HTTP API, sending the all-scopes test token."""
    client = requests.Session()
    client.headers.update(AUTH)
    return client


@contextlib.contextmanager
def procfile(redis_url: str, tmp_path: Path, **env_overrides: str):
    """Every Procfile process under honcho against `redis_url`; yields the API's base URL."""
    port = free_port()
    env = process_env(
        redis_url, PORT=str(port), GUNICORN_CMD_ARGS=f"--bind 127.0.0.1:{port} --workers 2", **env_overrides
    )
    command = [sys.executable, "-m", "honcho", "start", "-f", str(ROOT / "Procfile"), "-d", str(ROOT), "-p", str(port)]
    log_path = tmp_path / "honcho.log"
    with running(command, env, log_path) as honcho:
        base = f"http://127.0.0.1:{port}"

        def up():
            try:
                return requests.get(f"{base}/health", timeout=1).ok
            except requests.RequestException:  # refused, or accepted but not answered yet
                assert honcho.poll() is None, log_path.read_text()
                return False

        wait_for(up, timeout=30, what="gunicorn to answer /health")
        yield base
