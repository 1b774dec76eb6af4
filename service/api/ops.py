"""Operating the service: readiness, metrics, and how the web behaves when Redis fails.

`init_app(app)` wires all of it: the /ready and /metrics endpoints, a 503 for
every request that Redis could not serve (down, full, read-only, loading), one
JSON log line a request, and the start-up check of Redis's eviction policy.
"""
from __future__ import annotations

import logging
import time

from apiflask import APIBlueprint, APIFlask
from flask import Response, g, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from redis.exceptions import OutOfMemoryError, RedisError

from .. import logs, redis_checks
from ..heartbeats import SchedulerBeats, worker_beats
from ..metrics_collector import JobServiceCollector
from ..problems import problem, render
from . import service

bp = APIBlueprint("ops", __name__)
log = logging.getLogger("service.web")

#: Seconds a client is asked to wait before trying again after a 503.
RETRY_AFTER = 5


def init_app(app: APIFlask) -> None:
    settings = app.extensions["jobservice"]["settings"]
    connection = app.extensions["jobservice"]["redis"]
    logs.setup("web", settings)
    try:
        redis_checks.check_eviction_policy(connection, settings)
    except redis_checks.OUTAGE_ERRORS as error:
        # Start anyway; /ready says what is wrong, and every write answers 503.
        logs.event(log, "redis.unreachable", level=logging.WARNING, error=str(error))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(JobServiceCollector(connection, settings.queues, worker_max_age=settings.orphan_timeout))
    app.extensions["jobservice"]["metrics"] = registry
    app.extensions["jobservice"]["scheduler_beats"] = SchedulerBeats()
    app.register_error_handler(RedisError, _redis_failed)
    app.before_request(_start_clock)
    app.after_request(_log_request)
    app.register_blueprint(bp)


def _start_clock():
    g.started = time.monotonic()


def _log_request(response):
    req, context = request._get_current_object(), g._get_current_object()  # one look through each proxy
    fields = {
        "method": req.method,
        "path": req.path,
        "status": response.status_code,
        "duration_ms": round((time.monotonic() - context.get("started", time.monotonic())) * 1000, 1),
    }
    name = "http.request"
    answered = context.get("job")  # the job a jobs view answered with (`api.jobs._answer`)
    if answered is not None:
        fields["job_id"], fields["job"] = answered
        if req.method == "POST" and response.status_code == 202:
            name = "job.enqueued"
    logs.event(log, name, **fields)
    return response


def _redis_failed(error: RedisError):
    reply = str(error)
    if not redis_checks.transient(error):
        log.error("Redis refused a request: %s", reply, exc_info=error)
        return render(problem(500, "Internal error: the job store refused the request."))
    logs.event(log, "redis.unavailable", level=logging.WARNING, path=request.path,
               error=f"{type(error).__name__}: {reply}")
    if isinstance(error, OutOfMemoryError) or "OOM" in reply.upper():
        cause = "is out of memory; nothing was stored"
    elif isinstance(error, redis_checks.OUTAGE_ERRORS):
        # The connection may have broken after Redis ran the write, before its answer.
        cause = "is unreachable; what was sent may or may not have been stored (an Idempotency-Key makes a retry safe)"
    else:
        cause = f"cannot take writes right now ({reply.split(' ', 1)[0]}); nothing was stored"
    return render(
        problem(
            503,
            f"The job store (Redis) {cause}. Try again later.",
            title="Service Unavailable",
            headers={"Retry-After": str(RETRY_AFTER)},
        )
    )


@bp.get("/ready")
@bp.doc(summary="Ready to take and run jobs: Redis, its eviction policy, a worker, a scheduler",
        responses={503: {"description": "Not ready; each check says why",
                         "content": {"application/json": {"schema": {"type": "object"}}}}})
def ready():
    settings, connection = service("settings"), service("redis")
    checks: dict[str, dict] = {}
    started = time.monotonic()
    try:
        connection.ping()
        checks["redis"] = {"ok": True, "latency_ms": round((time.monotonic() - started) * 1000, 1)}
    except RedisError as error:
        checks["redis"] = {"ok": False, "error": f"{type(error).__name__}: {error}"}
        for name in ("eviction_policy", "workers", "scheduler"):
            checks[name] = {"ok": False, "error": "Redis is unreachable"}
        return _ready_answer(checks)
    try:
        policy = redis_checks.eviction_policy(connection)
        safe = policy == redis_checks.SAFE_EVICTION_POLICY
        checks["eviction_policy"] = {"ok": safe or settings.redis_allow_eviction, "policy": policy}
        if not safe:
            checks["eviction_policy"]["warning"] = "this policy lets Redis delete jobs when memory is full"

        beats = worker_beats(connection)
        fresh = [beat for beat in beats if beat.fresh(settings.orphan_timeout)]
        checks["workers"] = {
            "ok": bool(fresh),
            "fresh": len(fresh),
            "registered": len(beats),
            "max_age_s": settings.orphan_timeout,
            "newest_heartbeat_age_s": round(min((b.age for b in fresh), default=0.0), 1) if fresh else None,
        }
        schedulers = [beat for beat in service("scheduler_beats").beats(connection) if not beat.dead]
        checks["scheduler"] = {"ok": bool(schedulers), "alive": len(schedulers)}
    except RedisError as error:
        checks.setdefault("eviction_policy", {"ok": False})
        for name in ("workers", "scheduler"):
            checks.setdefault(name, {"ok": False, "error": f"{type(error).__name__}: {error}"})
    return _ready_answer(checks)


def _ready_answer(checks: dict[str, dict]):
    ok = all(check["ok"] for check in checks.values())
    return {"status": "ready" if ok else "unready", "checks": checks}, 200 if ok else 503


@bp.get("/metrics")
@bp.doc(
    summary="Prometheus metrics: queues, jobs by name, durations, workers",
    responses={200: {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}}},
)
def prometheus_metrics():
    return Response(generate_latest(service("metrics")), content_type=CONTENT_TYPE_LATEST)
