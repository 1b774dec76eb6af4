"""Redis commands and Redis CPU per job, from Redis's own counters (INFO
commandstats, INFO cpu): enqueueing, then running, `--jobs` no-op jobs.

    python bench/redis_commands.py [--rounds 3] [--jobs 500]

- service: `POST /jobs` over HTTP (auth, rate limits, queue cap, index: every
  command a client's enqueue costs), then one `python worker.py`;
- plain rq worker: `Queue.enqueue`, then one `rq worker`;
- Celery solo: `task.delay()`, then one `celery worker -P solo` (results in Redis).

The enqueue phase ends when the last job is written, the run phase when the last
has finished; the commands this benchmark sends to watch them are not counted.
The most frequent commands of each phase are listed after the totals.
"""
from __future__ import annotations

import collections
import http.client
import json

import _common as c

#: Commands this benchmark itself sends (snapshots), never counted.
OWN = {"info", "config|resetstat", "config", "flushall"}


def main() -> None:
    args = c.arguments(__doc__.splitlines()[0], jobs=(int, 500, "jobs per system and round"))
    directory = c.workdir("redis_commands")
    celery_python, celery_state = c.celery_python()
    systems = ["service", "plain rq worker"] + (["Celery solo"] if celery_python else [])
    phases = ("enqueue", "run")
    per_job = {(name, phase): c.Figure() for name in systems for phase in (*phases, "total")}
    cpu_us = {(name, phase): c.Figure() for name in systems for phase in (*phases, "total")}
    breakdown: dict[tuple[str, str], collections.Counter] = collections.defaultdict(collections.Counter)
    ratio = c.Figure()
    with c.redis_server(directory) as redis:
        env = c.service_env(redis.url)
        with c.gunicorn("service:create_app()", env=env, log_path=directory / "service.log") as (base, _):
            for round_ in range(args.rounds):
                totals = {}
                for name in systems:
                    c.log(f"round {round_ + 1}/{args.rounds}: {name}")
                    counted = _measure(name, redis, base, env, celery_python, args.jobs, directory)
                    for phase, (commands, cpu) in counted.items():
                        calls = sum(commands.values())
                        per_job[name, phase].add(calls / args.jobs)
                        cpu_us[name, phase].add(cpu / args.jobs * 1e6)
                        breakdown[name, phase].update(commands)
                    total = sum(sum(commands.values()) for commands, _ in counted.values())
                    per_job[name, "total"].add(total / args.jobs)
                    cpu_us[name, "total"].add(sum(cpu for _, cpu in counted.values()) / args.jobs * 1e6)
                    totals[name] = total
                ratio.add(totals["service"] / totals["plain rq worker"])

    c.header(
        "Redis commands and Redis CPU per job",
        f"{args.rounds} rounds of {args.jobs} jobs; median (lowest–highest)",
    )
    c.table(
        ["system", "commands/job: enqueue", "run", "total", "Redis CPU µs/job: enqueue", "run", "total"],
        [[name, *(per_job[name, p].show(1) for p in (*phases, "total")),
          *(cpu_us[name, p].show(0) for p in (*phases, "total"))] for name in systems],
    )
    if not celery_python:
        print(f"Celery: not measured. {celery_state}")
    rounds_jobs = args.rounds * args.jobs
    for name in systems:
        for phase in phases:
            top = [(command, calls / rounds_jobs) for command, calls in breakdown[name, phase].most_common()]
            shown = ", ".join(f"{command} {calls:.2f}" for command, calls in top if calls >= 0.05)
            print(f"  {name}, {phase}: {shown}")
    print(f"\nservice ÷ plain rq worker, commands per job: {ratio.show(2, '×')}")
    print("\nTargets")
    print("  " + c.verdict("commands per job, service/plain RQ", ratio.median, "≤ 0.5",
                           ratio.median is not None and ratio.median <= 0.5))


def _measure(name, redis: c.RedisServer, base, env, celery_python, jobs, directory):
    """{phase: (commands by name, Redis CPU seconds)} for enqueueing, then running, `jobs` jobs."""
    redis.reset()
    snapshot = _Counters(redis)
    if name == "service":
        _post_jobs(base, jobs)
    elif name == "plain rq worker":
        enqueue = c.plain_rq_enqueuer(redis.url)
        for _ in range(jobs):
            enqueue()
    else:
        c.celery_client(celery_python, redis.url, "produce", str(jobs))
    enqueued = snapshot.take()
    log_path = directory / f"{name.split()[0]}-worker.log"
    if name == "Celery solo":
        command, cwd, worker_env = c.celery_worker_command(celery_python), c.BENCH, c.celery_env(redis.url)
        done = lambda: snapshot.query("llen", "celery") == 0 and snapshot.query("hlen", "unacked") == 0  # noqa: E731
    else:
        cli = [c.PYTHON, "worker.py"] if name == "service" else c.rq_worker_command(redis.url)
        command, cwd, worker_env = cli, c.ROOT, env
        done = lambda: snapshot.query("zcard", "rq:finished:default") >= jobs  # noqa: E731
    with c.started(command, env=worker_env, log_path=log_path, cwd=cwd):
        c.wait_until(done, 120, f"{name} to run {jobs} jobs", interval=0.05)
        ran = snapshot.take()
    return {"enqueue": enqueued, "run": ran}


class _Counters:
    """Differences of Redis's counters between snapshots, minus the commands we sent."""

    def __init__(self, redis: c.RedisServer):
        self.redis = redis
        self.own: collections.Counter = collections.Counter()
        self.commands, self.cpu = redis.commands(), redis.cpu_seconds()

    def query(self, command: str, *arguments):
        self.own[command] += 1
        return self.redis.client.execute_command(command.upper(), *arguments)

    def take(self) -> tuple[collections.Counter, float]:
        commands, cpu = self.redis.commands(), self.redis.cpu_seconds()
        delta = collections.Counter({k: v - self.commands.get(k, 0) for k, v in commands.items()})
        delta.subtract(self.own)
        for command in OWN:
            delta.pop(command, None)
        delta = collections.Counter({k: v for k, v in delta.items() if v > 0})
        used = cpu - self.cpu
        self.commands, self.cpu, self.own = commands, cpu, collections.Counter()
        return delta, used


def _post_jobs(base: str, count: int) -> None:
    connection = http.client.HTTPConnection(base.removeprefix("http://"), timeout=30)
    headers = {"Authorization": f"Bearer {c.TOKEN}", "Content-Type": "application/json"}
    body = json.dumps(c.NOOP_JOB)
    for _ in range(count):
        connection.request("POST", "/jobs", body=body, headers=headers)
        answer = connection.getresponse()
        answer.read()
        if answer.status != 202:
            raise SystemExit(f"POST /jobs answered {answer.status}")
    connection.close()


if __name__ == "__main__":
    main()
