"""The Celery baseline: the same no-op job as a Celery task, on the same Redis.

Runs only in the Celery virtualenv the benchmarks make (`var/celery-venv`), never
in the service's: `celery -A _celery_app worker -P solo` with `bench/` on the path.
As a script it is the producer the benchmarks drive, answering in JSON:

    python bench/_celery_app.py produce N    # send N tasks, return at once
    python bench/_celery_app.py latency N    # N tasks one at a time, each to its result
"""
from __future__ import annotations

import json
import os
import sys
import time

from celery import Celery

URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")

app = Celery("_celery_app", broker=URL, backend=URL)
# Results kept, as RQ keeps them, and JSON, as the service stores its jobs.
app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"],
                worker_hijack_root_logger=False, broker_connection_retry_on_startup=True)


@app.task
def add(x, y):
    return x + y


def produce(count: int) -> dict:
    started = time.perf_counter()
    for _ in range(count):
        add.delay(1, 2)
    return {"sent": count, "seconds": time.perf_counter() - started}


def latency(count: int) -> dict:
    add.delay(1, 2).get(timeout=30)  # connections and the worker warm
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        add.delay(1, 2).get(timeout=30)
        samples.append((time.perf_counter() - started) * 1000)
    return {"ms": samples}


if __name__ == "__main__":
    action, count = sys.argv[1], int(sys.argv[2])
    print(json.dumps({"produce": produce, "latency": latency}[action](count)))
