"""HTTP enqueue: requests/s and p50/p99 of `POST /jobs` against `GET /health` of the
same server and against a tutorial Flask+RQ endpoint, at 16 and 64 clients.

    python bench/http_enqueue.py [--rounds 3] [--seconds 5] [--clients 16,64]

Starts its own Redis, the service under gunicorn exactly as the Procfile does
(`gunicorn.conf.py` applies) with WEB_CONCURRENCY=2 unless set, and
`bench/_tutorial_app.py` deployed the tutorial way: `gunicorn -w 2`, gunicorn's
default sync workers, none of the service's settings. Two processes each, one a
core. POST /jobs runs with
everything on: token auth, request validation, the three rate limits (set too
high to refuse, so each is counted), the queue-depth cap, the newest-first index.
No worker runs: the queues are emptied between measurements instead, so the web
server and wrk have the two cores to themselves.
"""
from __future__ import annotations

import json

import _common as c


def main() -> None:
    args = c.arguments(
        __doc__.splitlines()[0], seconds=(float, 5.0, "seconds of load per measurement"),
        clients=(str, "16,64", "concurrent clients, comma-separated"),
    )
    clients = [int(n) for n in args.clients.split(",")]
    directory = c.workdir("http_enqueue")
    body = json.dumps(c.NOOP_JOB)
    json_headers = {"Content-Type": "application/json"}
    with c.redis_server(directory) as redis:
        env = c.service_env(redis.url)
        service_env = c.with_web_workers(env)
        with c.gunicorn("service:create_app()", env=service_env, log_path=directory / "service.log") as (service, master), \
             c.tutorial_gunicorn(env=env, log_path=directory / "tutorial.log") as (tutorial, tutorial_master):
            servers = {"POST /jobs": master, "GET /health": master, "tutorial POST /jobs": tutorial_master}
            endpoints = {
                "POST /jobs": dict(url=f"{service}/jobs", method="POST", body=body,
                                   headers={**json_headers, "Authorization": f"Bearer {c.TOKEN}"}),
                "GET /health": dict(url=f"{service}/health"),
                "tutorial POST /jobs": dict(url=f"{tutorial}/jobs", method="POST", body=body, headers=json_headers),
            }
            for options in endpoints.values():  # warm: imports, connections, first-request work
                c.wrk(connections=4, seconds=1, **options)
            figures = {(n, name, what): c.Figure() for n in clients for name in endpoints
                       for what in ("rps", "p50", "p99", "tail", "web_cpu", "redis_cpu")}
            ratios = {(n, what): c.Figure() for n in clients for what in ("health", "tutorial")}
            refused = 0
            for round_ in range(args.rounds):
                for n in clients:
                    rps = {}
                    for name, options in endpoints.items():
                        redis.client.flushall()  # the queue stays far below its cap; counters start afresh
                        c.log(f"round {round_ + 1}/{args.rounds}: {name}, {n} clients")
                        web = [servers[name].pid, *c.children(servers[name].pid)]
                        before = c.cpu_seconds(*web), c.cpu_seconds(redis.pid)
                        load = c.wrk(connections=n, seconds=args.seconds, **options)
                        after = c.cpu_seconds(*web), c.cpu_seconds(redis.pid)
                        figures[n, name, "web_cpu"].add((after[0] - before[0]) / load.requests * 1000)
                        figures[n, name, "redis_cpu"].add((after[1] - before[1]) / load.requests * 1000)
                        refused += load.bad
                        rps[name] = load.requests_per_s
                        figures[n, name, "rps"].add(load.requests_per_s)
                        figures[n, name, "p50"].add(load.p50_ms)
                        figures[n, name, "p99"].add(load.p99_ms)
                        figures[n, name, "tail"].add(load.p99_ms / load.p50_ms if load.p50_ms else None)
                    ratios[n, "health"].add(rps["POST /jobs"] / rps["GET /health"])
                    ratios[n, "tutorial"].add(rps["POST /jobs"] / rps["tutorial POST /jobs"])

    c.header(
        "HTTP enqueue (wrk, keep-alive where the server keeps connections)",
        f"{args.rounds} rounds of {args.seconds:g} s per endpoint and client count; median (lowest–highest)",
        f"service: {service_env['WEB_CONCURRENCY']} gevent workers; tutorial: gunicorn -w {c.TUTORIAL_WORKERS} (sync)",
    )
    for n in clients:
        print(f"\n{n} clients")
        c.table(
            ["endpoint", "requests/s", "p50 ms", "p99 ms", "p99/p50", "web CPU ms/req", "Redis CPU ms/req"],
            [[name, figures[n, name, "rps"].show(0), figures[n, name, "p50"].show(2),
              figures[n, name, "p99"].show(2), figures[n, name, "tail"].show(2),
              figures[n, name, "web_cpu"].show(3), figures[n, name, "redis_cpu"].show(3)] for name in endpoints],
        )
        print(f"POST /jobs ÷ GET /health: {ratios[n, 'health'].show(2, '×')}")
        print(f"POST /jobs ÷ tutorial:    {ratios[n, 'tutorial'].show(2, '×')}")
    if refused:
        print(f"\nWARNING: {refused} answers were not 2xx or failed; the figures above do not hold.")
    print("\nTargets")
    first = clients[0]
    for n in clients:
        health, tutorial = ratios[n, "health"].median, ratios[n, "tutorial"].median
        print("  " + c.verdict(f"POST/health at {n} clients", health, "≥ 0.6", health is not None and health >= 0.6))
        print("  " + c.verdict(f"POST/tutorial at {n} clients", tutorial, "≥ 1.2", tutorial is not None and tutorial >= 1.2))
    tail = figures[first, "POST /jobs", "tail"].median
    print("  " + c.verdict(f"POST p99/p50 at {first} clients", tail, "≤ 2", tail is not None and tail <= 2))


if __name__ == "__main__":
    main()
