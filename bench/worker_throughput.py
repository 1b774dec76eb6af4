"""Worker throughput: no-op jobs drained per second by the service's worker
configuration, against plain `rq worker`, RQ's SimpleWorker and Celery's solo pool.

    python bench/worker_throughput.py [--rounds 3] [--seconds 8] [--workers 2]

Each round and system: an empty Redis of its own, a backlog of no-op jobs
(`demo.add(1, 2)`) enqueued the system's own way, then the workers start; the rate
is the jobs taken from the queue per second, measured from the first job taken
until the queue is empty or `--seconds` have passed, so start-up is not counted.

- service: `python worker.py` × `--workers` (the Procfile's worker, JSON jobs
  enqueued through `service.enqueue`);
- plain rq worker: `rq worker` as installed, one process, forking a child per job
  (jobs enqueued with `Queue.enqueue`, RQ's defaults; the same function from
  `bench/_noop.py`, which a work-horse imports in no time);
- rq SimpleWorker: `rq worker -w rq.worker.SimpleWorker`, one process, no fork;
- Celery solo: `celery worker -P solo`, one process, results kept in Redis, from a
  virtualenv of its own under var/ (made on first run; skipped if it cannot install).
"""
from __future__ import annotations

import time

import _common as c

QUEUE_KEY = {"service": "rq:queue:default", "rq": "rq:queue:default", "celery": "celery"}
#: First-round backlogs, a little more than each drains in the window; later rounds
#: size the backlog from the rate measured before.
FIRST_BACKLOG_PER_SECOND = {"service": 400, "plain rq worker": 80, "rq SimpleWorker": 300, "Celery solo": 1200}


def main() -> None:
    args = c.arguments(
        __doc__.splitlines()[0], seconds=(float, 8.0, "longest measuring window per system and round"),
        workers=(int, 2, "worker processes of the service"),
    )
    directory = c.workdir("worker_throughput")
    celery_python, celery_state = c.celery_python()
    service_name = f"service ({args.workers} × worker.py)"
    systems = [service_name, "plain rq worker", "rq SimpleWorker"] + (["Celery solo"] if celery_python else [])
    rates = {name: c.Figure() for name in systems}
    ratio_plain, ratio_celery = c.Figure(), c.Figure()
    with c.redis_server(directory) as redis:
        service_enqueue = c.service_enqueuer(redis.url)
        plain_enqueue = c.plain_rq_enqueuer(redis.url)
        env = c.service_env(redis.url)
        rq_cli = c.rq_worker_command(redis.url, "default")
        setups = {
            service_name: ("service", lambda n: _repeat(service_enqueue, n),
                           [([c.PYTHON, "worker.py"], env, c.ROOT)] * args.workers),
            "plain rq worker": ("rq", lambda n: _repeat(plain_enqueue, n), [(rq_cli, env, c.ROOT)]),
            "rq SimpleWorker": ("rq", lambda n: _repeat(plain_enqueue, n),
                                [(rq_cli + ["-w", "rq.worker.SimpleWorker"], env, c.ROOT)]),
        }
        if celery_python:
            setups["Celery solo"] = (
                "celery", lambda n: c.celery_client(celery_python, redis.url, "produce", str(n)),
                [(c.celery_worker_command(celery_python), c.celery_env(redis.url), c.BENCH)],
            )
        for round_ in range(args.rounds):
            measured = {}
            for name in systems:
                kind, enqueue, commands = setups[name]
                per_second = rates[name].median or FIRST_BACKLOG_PER_SECOND.get(name, 400)
                backlog = max(200, int(per_second * args.seconds * 1.3))
                redis.reset()
                c.log(f"round {round_ + 1}/{args.rounds}: {name}, {backlog} jobs")
                enqueue(backlog)
                rate = _drain(redis, QUEUE_KEY[kind], backlog, commands, directory, name, args.seconds)
                rates[name].add(rate)
                measured[name] = rate
            ratio_plain.add(measured[service_name] / measured["plain rq worker"])
            if "Celery solo" in measured:
                ratio_celery.add(measured[service_name] / measured["Celery solo"])

    c.header(
        "Worker throughput (no-op jobs)",
        f"{args.rounds} rounds; jobs/s median (lowest–highest); Redis and workers of this run only",
    )
    c.table(["system", "jobs/s"], [[name, rates[name].show(0)] for name in systems])
    if not celery_python:
        print(f"Celery: not measured. {celery_state}")
    print(f"\nservice ÷ plain rq worker: {ratio_plain.show(2, '×')}")
    print(f"service ÷ Celery solo:     {ratio_celery.show(2, '×')}")
    print("\nTargets")
    print("  " + c.verdict("service/plain rq worker", ratio_plain.median, "≥ 15", _at_least(ratio_plain.median, 15)))
    print("  " + c.verdict("service/Celery solo", ratio_celery.median, "≥ 1.0", _at_least(ratio_celery.median, 1.0)))


def _repeat(enqueue_one, count: int) -> None:
    for _ in range(count):
        enqueue_one()


def _at_least(value: float | None, target: float) -> bool | None:
    return None if value is None else value >= target


def _drain(redis: c.RedisServer, key: str, backlog: int, commands, directory, name: str, seconds: float) -> float:
    """Start the workers on a full queue; jobs taken per second once the first is taken."""
    log_path = directory / f"{name.split()[0]}-workers.log"
    with _all_started(commands, log_path):
        c.wait_until(lambda: redis.client.llen(key) < backlog, 60, f"{name} to take its first job", interval=0.005)
        t0, left0 = time.perf_counter(), redis.client.llen(key)
        while True:
            time.sleep(0.01)
            left, now = redis.client.llen(key), time.perf_counter()
            if left == 0 or now - t0 >= seconds:
                return (left0 - left) / (now - t0)


class _all_started:
    """Start every command; stop them all when the block ends."""

    def __init__(self, commands, log_path):
        self.commands, self.log_path, self.stack = commands, log_path, None

    def __enter__(self):
        import contextlib

        self.stack = contextlib.ExitStack()
        for command, env, cwd in self.commands:
            self.stack.enter_context(c.started(command, env=env, log_path=self.log_path, cwd=cwd))
        return self

    def __exit__(self, *exc):
        self.stack.close()


if __name__ == "__main__":
    main()
