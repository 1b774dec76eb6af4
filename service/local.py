"""`make run`: the whole service on one machine.

Starts an embedded Redis (data under ./var/redis) unless REDIS_URL is set, then
every process of the Procfile with honcho. Ctrl-C, or a SIGTERM to this process
or to the `make` that started it, stops them all, Redis last.
"""
from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

from . import libc
from .embedded_redis import EmbeddedRedis

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    # A SIGTERM (`kill`, a process manager) is taken as Ctrl-C: without it, this
    # process alone would end, and Redis and the Procfile's processes run on.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    # `kill <pid of make>` ends make alone: make passes a SIGTERM on to its
    # children only through their process group, which a `kill` of one pid does
    # not reach. So the kernel sends this process one when make goes (Linux;
    # elsewhere, signal this process or the group).
    libc.signal_when_parent_dies(signal.SIGTERM, os.getppid())
    env = dict(os.environ)
    port = env.setdefault("PORT", "5000")
    # On a laptop the API is for this machine only.
    env.setdefault("GUNICORN_CMD_ARGS", f"--bind 127.0.0.1:{port}")
    if not env.get("API_TOKENS"):
        env["API_TOKENS"] = secrets.token_urlsafe(24)
        print(f"API token (this run only; set API_TOKENS to keep one): {env['API_TOKENS']}", flush=True)
    if not env.get("OUTBOUND_ALLOW_PRIVATE"):
        # A local run is tried against servers on this machine or its network;
        # only its own user can enqueue (the API listens on 127.0.0.1).
        env["OUTBOUND_ALLOW_PRIVATE"] = "true"
        print("Outbound calls may reach private addresses (set OUTBOUND_ALLOW_PRIVATE=false to refuse them)", flush=True)
    redis = None
    if not env.get("REDIS_URL"):
        redis = EmbeddedRedis(ROOT / "var" / "redis")
        env["REDIS_URL"] = redis.start()
        print(f"Embedded Redis at {env['REDIS_URL']} (data in var/redis)", flush=True)
    try:
        base = f"http://127.0.0.1:{port}"
        print(f"API        {base}/jobs   (docs {base}/docs)", flush=True)
        print(f"Dashboard  {base}/rq   (any user name, the token as password)", flush=True)
        honcho = subprocess.Popen(
            [sys.executable, "-m", "honcho", "start", "-f", str(ROOT / "Procfile"), "-d", str(ROOT), "-p", port],
            env=env,
        )
        while True:
            try:
                return honcho.wait()
            except KeyboardInterrupt:
                # Ctrl-C reached honcho too, a SIGTERM did not: either way, it stops its processes.
                honcho.send_signal(signal.SIGINT)
    finally:
        if redis is not None:
            redis.stop()
            print("Embedded Redis stopped.", flush=True)


if __name__ == "__main__":
    sys.exit(main())
