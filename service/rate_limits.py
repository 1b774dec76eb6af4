"""Enqueue rate limits (flask-limiter, counting in the service's own Redis).

Three limits apply to POST /jobs: per token, per client IP, and the job's own
`@defaults(rate_limit=...)` per client IP ("one contact email per visitor per
10 s"). A request over a limit gets 429 with Retry-After and enqueues nothing.
"""
from __future__ import annotations

import time

from flask import Flask, current_app, g, request
from flask_limiter import Limiter, RequestLimit
from limits import parse as parse_limit
from redis import Redis

from jobs._defaults import ATTRIBUTE as DEFAULTS_ATTRIBUTE

from .problems import problem
from .registry import JobRegistry
from .settings import Settings

ENQUEUE_ENDPOINT = "jobs.create_job"


def client_ip() -> str:
    return request.remote_addr or "unknown"


def _job_limit() -> str | None:
    registry: JobRegistry = current_app.extensions["jobservice"]["registry"]
    body = request.get_json(silent=True)
    name = body.get("job") if isinstance(body, dict) else None
    if name not in registry:
        return None
    return getattr(registry.get(name).func, DEFAULTS_ATTRIBUTE, {}).get("rate_limit")


def _too_many(limit: RequestLimit):
    retry_after = max(1, int(limit.reset_at - time.time()))  # reset_at is rounded up already
    raise problem(
        429,
        f"Too many requests: at most {limit.limit}. Try again in {retry_after} s.",
        title="Too Many Requests",
        headers={"Retry-After": str(retry_after)},
    )


def install(app: Flask, settings: Settings, connection: Redis, registry: JobRegistry) -> Limiter:
    for spec in registry:  # a malformed limit stops the service at start, not a request
        declared = getattr(spec.func, DEFAULTS_ATTRIBUTE, {}).get("rate_limit")
        if declared:
            parse_limit(declared)
    limiter = Limiter(
        key_func=client_ip,
        app=app,
        storage_uri="redis://",
        storage_options={"connection_pool": connection.connection_pool},
        strategy="fixed-window",
        # Its own headers would put a Retry-After on every response; a breach
        # gets one of ours instead.
        headers_enabled=False,
        on_breach=_too_many,
        key_prefix="jobservice:ratelimit",
    )
    # flask-limiter checks a decorated view's limits in its wrapper, so the
    # registered view is replaced by the wrapped one.
    view = app.view_functions[ENQUEUE_ENDPOINT]
    view = limiter.limit(settings.rate_limit_per_token, key_func=lambda: f"token:{g.token.id}")(view)
    view = limiter.limit(settings.rate_limit_per_ip, key_func=lambda: f"ip:{client_ip()}")(view)
    view = limiter.limit(
        lambda: _job_limit() or "1 per second",
        key_func=lambda: f"job:{request.get_json(silent=True).get('job')}:{client_ip()}",
        exempt_when=lambda: _job_limit() is None,
    )(view)
    app.view_functions[ENQUEUE_ENDPOINT] = view
    return limiter
