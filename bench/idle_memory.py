"""Idle memory: resident set size (RSS) of each process of the service once it is
up and has served a little, against the same processes written the plain way.

    python bench/idle_memory.py [--rounds 3]

Each round starts, on a Redis of its own: the service's web server (gunicorn as
in the Procfile, `gunicorn.conf.py` applies, with WEB_CONCURRENCY=2 unless set:
its workers are forked from a master that has loaded the app, so the PSS of
each and of all together is given too), `python worker.py` (two processes:
the supervisor and the executor it forks, which share most of their pages, so
their PSS sum is given too) and `python scheduler.py`; and as baselines the
tutorial app (`bench/_tutorial_app.py`) under `gunicorn -w 2`, the tutorial way
(sync workers, none of the service's settings), and plain `rq worker`. Each web
server answers a few enqueues and reads first, so the figure is that of a
process that has been used; then everything idles for `--settle` seconds before
RSS is read from /proc.
"""
from __future__ import annotations

import contextlib
import http.client
import json
import os
import time

import _common as c


def main() -> None:
    args = c.arguments(__doc__.splitlines()[0], settle=(float, 3.0, "seconds of idling before measuring"))
    directory = c.workdir("idle_memory")
    names = ["web master", "web worker (largest)", "web worker (largest), PSS", "web: all processes, PSS",
             "worker: supervisor", "worker: executor", "worker: both, PSS", "scheduler",
             "tutorial web worker (largest)", "tutorial web: all processes, PSS", "plain rq worker"]
    rss = {name: c.Figure() for name in names}
    web_workers = 0
    with c.redis_server(directory) as redis:
        env = c.service_env(redis.url)
        for round_ in range(args.rounds):
            redis.reset()
            c.log(f"round {round_ + 1}/{args.rounds}")
            log_path = directory / "processes.log"
            with contextlib.ExitStack() as stack:
                base, master = stack.enter_context(
                    c.gunicorn("service:create_app()", env=c.with_web_workers(env), log_path=log_path))
                tutorial, tutorial_master = stack.enter_context(
                    c.tutorial_gunicorn(env=env, log_path=log_path))
                worker = stack.enter_context(c.started([c.PYTHON, "worker.py"], env=env, log_path=log_path))
                scheduler = stack.enter_context(c.started([c.PYTHON, "scheduler.py"], env=env, log_path=log_path))
                plain = stack.enter_context(c.started(
                    c.rq_worker_command(redis.url, "plain"), env=env, log_path=log_path))
                c.wait_until(lambda: redis.client.scard("rq:workers") >= 2, 60, "the workers to register")
                c.wait_until(lambda: _executor(worker.pid), 60, "the worker's executor to start")
                _use(base, {"Authorization": f"Bearer {c.TOKEN}"})
                _use(tutorial, {})
                time.sleep(args.settle)
                workers = c.children(master.pid)
                web_workers = len(workers)
                rss["web master"].add(c.rss_mb(master.pid))
                rss["web worker (largest)"].add(max(c.rss_mb(pid) or 0 for pid in workers))
                rss["web worker (largest), PSS"].add(max(c.pss_mb(pid) or 0 for pid in workers))
                rss["web: all processes, PSS"].add(c.pss_total_mb([master.pid, *workers]))
                tutorial_workers = c.children(tutorial_master.pid)
                rss["tutorial web worker (largest)"].add(max(c.rss_mb(pid) or 0 for pid in tutorial_workers))
                rss["tutorial web: all processes, PSS"].add(c.pss_total_mb([tutorial_master.pid, *tutorial_workers]))
                executor = _executor(worker.pid)
                rss["worker: supervisor"].add(c.rss_mb(worker.pid))
                rss["worker: executor"].add(c.rss_mb(executor))
                rss["worker: both, PSS"].add(c.pss_total_mb([worker.pid, executor]))
                rss["scheduler"].add(c.rss_mb(scheduler.pid))
                rss["plain rq worker"].add(c.rss_mb(plain.pid))

    c.header("Idle memory (RSS; PSS where the row says so)", f"{args.rounds} rounds; MB median (lowest–highest); "
             f"the service: {web_workers} web worker(s); the tutorial: gunicorn -w {c.TUTORIAL_WORKERS} (sync)")
    c.table(["process", "MB"], [[name, rss[name].show(1)] for name in names])
    web, worker = rss["web worker (largest)"].median, rss["worker: supervisor"].median
    web_all, tutorial_all = rss["web: all processes, PSS"].median, rss["tutorial web: all processes, PSS"].median
    executor, both = rss["worker: executor"].median, rss["worker: both, PSS"].median
    print(f"\nweb worker ÷ tutorial web worker: {web / rss['tutorial web worker (largest)'].median:.2f}×")
    print(f"web, all processes ÷ tutorial, all processes (PSS): {web_all / tutorial_all:.2f}×")
    print(f"worker (supervisor) ÷ plain rq worker: {worker / rss['plain rq worker'].median:.2f}×")
    print("\nTargets")
    print("  " + c.verdict("worker RSS MB (supervisor)", worker, "≤ 40", worker <= 40))
    print("  " + c.verdict("worker RSS MB (executor)", executor, "≤ 40", executor <= 40))
    # RSS counts the pages the two share once in each; PSS splits them between the two.
    print("  " + c.verdict("worker MB, supervisor + executor (PSS)", both, "≤ 40", both <= 40))
    print("  " + c.verdict("each web worker RSS MB", web, "≤ 50", web <= 50))
    # The web workers are forked from a master that has loaded the app, so most of
    # their pages are the master's, shared: RSS counts those in every worker.
    web_pss = rss["web worker (largest), PSS"].median
    print("  " + c.verdict("each web worker MB, counted as PSS", web_pss, "≤ 50", web_pss <= 50))


def _executor(worker_pid: int) -> int | None:
    """The worker's executor: its child that leads a process group of its own (RQ's scheduler does not)."""
    for pid in c.children(worker_pid):
        try:
            if os.getpgid(pid) == pid:
                return pid
        except OSError:
            continue
    return None


def _use(base: str, headers: dict[str, str], count: int = 50) -> None:
    """A few enqueues, job reads and health checks, spread over the server's workers."""
    headers = {**headers, "Content-Type": "application/json"}
    body = json.dumps(c.NOOP_JOB)
    for _ in range(count):
        connection = http.client.HTTPConnection(base.removeprefix("http://"), timeout=10)
        connection.request("POST", "/jobs", body=body, headers=headers)
        answer = connection.getresponse()
        job = json.loads(answer.read())
        if answer.status != 202:
            raise SystemExit(f"POST /jobs answered {answer.status}: {job}")
        if "Authorization" in headers:
            connection.request("GET", f"/jobs/{job['id']}", headers=headers)
            connection.getresponse().read()
        connection.request("GET", "/health")
        connection.getresponse().read()
        connection.close()


if __name__ == "__main__":
    main()
