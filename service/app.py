"""The application factory."""
from __future__ import annotations

from apiflask import APIFlask
from flask import request
from redis import Redis
from werkzeug.exceptions import BadRequest

from . import dashboard, problems
from .api import health, jobs, ops, queues
from .connection import connect
from .queues import job_registry
from .registry import JobRegistry
from .settings import Settings

#: Blueprints whose write requests must carry JSON.
_JSON_API = {"jobs"}


def create_app(
    settings: Settings | None = None,
    connection: Redis | None = None,
    registry: JobRegistry | None = None,
) -> APIFlask:
    settings = settings or Settings.from_env()
    app = APIFlask(
        __name__,
        title="RQ Job Service",
        version="0.1.0",
        spec_path="/openapi.json",
        docs_path="/docs",
    )
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.extensions["jobservice"] = {
        "settings": settings,
        "redis": connection or connect(settings),
        "registry": registry or job_registry(),
    }
    app.error_processor(problems.render)

    @app.before_request
    def require_json_body():
        if (
            request.blueprint in _JSON_API
            and request.method in ("POST", "PUT", "PATCH")
            and request.content_length
        ):
            if not request.is_json:
                raise problems.problem(415, "Send the body as JSON (Content-Type: application/json).")
            try:
                request.get_json()
            except BadRequest:
                raise problems.problem(400, "The request body is not valid JSON.") from None

    app.register_blueprint(health.bp)
    app.register_blueprint(jobs.bp)
    app.register_blueprint(queues.bp)
    ops.init_app(app)  # /ready, /metrics, 503 when Redis fails, request logs
    dashboard.mount(app, settings)
    return app
