"""End-to-end latency: from enqueue to the result being visible, one job at a time
on an idle worker, p50/p99 over `--jobs` jobs, for the service and its baselines.

    python bench/e2e_latency.py [--rounds 3] [--jobs 500]

- service over HTTP: `POST /jobs`, then `GET /jobs/<id>?wait=10` (the long poll
  answers as soon as the job ends): what an API client sees, gunicorn as in the
  Procfile and one `python worker.py`;
- service worker: the same job enqueued through `service.enqueue`, its result
  read with RQ's blocking read of the job's result stream (no HTTP);
- plain rq worker and rq SimpleWorker: `Queue.enqueue`, then the same blocking read;
- Celery solo: `task.delay(...).get()` with the Redis result backend.
"""
from __future__ import annotations

import http.client
import json
import time

import _common as c

WARMUP = 20


def main() -> None:
    args = c.arguments(__doc__.splitlines()[0], jobs=(int, 500, "jobs per system and round"))
    directory = c.workdir("e2e_latency")
    celery_python, celery_state = c.celery_python()
    systems = ["service over HTTP", "service worker", "plain rq worker", "rq SimpleWorker"]
    if celery_python:
        systems.append("Celery solo")
    p50 = {name: c.Figure() for name in systems}
    p99 = {name: c.Figure() for name in systems}
    with c.redis_server(directory) as redis:
        env = c.service_env(redis.url)
        rq_cli = c.rq_worker_command(redis.url, "default")
        for round_ in range(args.rounds):
            for name in systems:
                redis.reset()
                c.log(f"round {round_ + 1}/{args.rounds}: {name}")
                log_path = directory / f"{name.replace(' ', '-')}.log"
                if name == "service over HTTP":
                    with c.started([c.PYTHON, "worker.py"], env=env, log_path=log_path), \
                         c.gunicorn("service:create_app()", env=env, log_path=log_path) as (base, _):
                        samples = _http(base, args.jobs)
                elif name == "Celery solo":
                    with c.started(c.celery_worker_command(celery_python), env=c.celery_env(redis.url),
                                   log_path=log_path, cwd=c.BENCH):
                        samples = c.celery_client(celery_python, redis.url, "latency", str(args.jobs))["ms"]
                else:
                    command, enqueue = {
                        "service worker": ([c.PYTHON, "worker.py"], c.service_enqueuer(redis.url)),
                        "plain rq worker": (rq_cli, c.plain_rq_enqueuer(redis.url)),
                        "rq SimpleWorker": (rq_cli + ["-w", "rq.worker.SimpleWorker"], c.plain_rq_enqueuer(redis.url)),
                    }[name]
                    with c.started(command, env=env, log_path=log_path):
                        samples = _python(enqueue, args.jobs)
                p50[name].add(c.percentile(samples, 50))
                p99[name].add(c.percentile(samples, 99))

    c.header(
        "End-to-end latency, enqueue to result visible (idle worker)",
        f"{args.rounds} rounds of {args.jobs} jobs, one at a time; median (lowest–highest) of each round's percentile",
    )
    c.table(["system", "p50 ms", "p99 ms"], [[name, p50[name].show(2), p99[name].show(2)] for name in systems])
    if not celery_python:
        print(f"Celery: not measured. {celery_state}")
    print("\nTargets")
    celery = p50["Celery solo"].median if celery_python else None
    for name in ("service over HTTP", "service worker"):
        ours, tail = p50[name].median, p99[name].median
        print("  " + c.verdict(f"{name}: p50 ÷ Celery's p50", ours / celery if celery else None, "≤ 1.0",
                               None if celery is None else ours <= celery))
        print("  " + c.verdict(f"{name}: p99 ms", tail, "≤ 10", tail is not None and tail <= 10))


def _python(enqueue, count: int) -> list[float]:
    """Enqueue one job, block on its result stream until it is written; repeat."""
    samples = []
    for index in range(WARMUP + count):
        started = time.perf_counter()
        job = enqueue()
        if job.latest_result(timeout=10) is None:
            raise SystemExit(f"job {job.id} gave no result within 10 s")
        if index >= WARMUP:
            samples.append((time.perf_counter() - started) * 1000)
    return samples


def _http(base: str, count: int) -> list[float]:
    """POST /jobs, then long-poll GET /jobs/<id>?wait=10 until it has ended; repeat."""
    connection = http.client.HTTPConnection(base.removeprefix("http://"), timeout=30)
    headers = {"Authorization": f"Bearer {c.TOKEN}", "Content-Type": "application/json"}
    body = json.dumps(c.NOOP_JOB)
    samples = []
    for index in range(WARMUP + count):
        started = time.perf_counter()
        connection.request("POST", "/jobs", body=body, headers=headers)
        answer = connection.getresponse()
        job = json.loads(answer.read())
        if answer.status != 202:
            raise SystemExit(f"POST /jobs answered {answer.status}: {job}")
        connection.request("GET", f"/jobs/{job['id']}?wait=10", headers=headers)
        answer = connection.getresponse()
        view = json.loads(answer.read())
        if view.get("status") != "finished":
            raise SystemExit(f"job {job['id']} is {view.get('status')} after 10 s")
        if index >= WARMUP:
            samples.append((time.perf_counter() - started) * 1000)
    connection.close()
    return samples


if __name__ == "__main__":
    main()
