"""The application factory."""
from __future__ import annotations

from apiflask import APIFlask
from flask import request
from redis import Redis
from werkzeug.exceptions import BadRequest

from . import cli, dashboard, problems
from .api import artifacts, health, jobs, queues, ui
from .connection import connect
from .queues import job_registry
from .registry import JobRegistry
from .settings import Settings

#: Blueprints whose write requests must carry JSON, and endpoints that need a body.
_JSON_API = {"jobs"}
_BODY_REQUIRED = {"jobs.create_job"}


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
    app.spec_processor(problems.document_errors)

    @app.before_request
    def require_json_body():
        if request.blueprint not in _JSON_API or request.method not in ("POST", "PUT", "PATCH"):
            return
        if not request.content_length:
            if request.endpoint in _BODY_REQUIRED:
                raise problems.problem(400, "Send the request as a JSON body.")
            return
        if not request.is_json:
            raise problems.problem(415, "Send the body as JSON (Content-Type: application/json).")
        try:
            request.get_json()
        except BadRequest:
            raise problems.problem(400, "The request body is not valid JSON.") from None

    app.register_blueprint(health.bp)
    app.register_blueprint(jobs.bp)
    app.register_blueprint(queues.bp)
    app.register_blueprint(artifacts.bp)
    app.register_blueprint(ui.bp)
    dashboard.mount(app, settings)
    app.cli.add_command(cli.jobs)
    return app
