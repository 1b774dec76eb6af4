"""The application factory."""
from __future__ import annotations

from apiflask import APIFlask
from redis import Redis
from werkzeug.middleware.proxy_fix import ProxyFix

from . import auth, cli, csrf, dashboard, json_body, problems, rate_limits, security_headers
from .api import artifacts, docs, health, jobs, ops, queues, schedules, ui
from .connection import connect
from .queues import job_registry
from .registry import JobRegistry
from .settings import Settings

#: Blueprints whose write requests must carry JSON, and endpoints that need a body.
_JSON_API = {"jobs", "schedules"}
_BODY_REQUIRED = {"jobs.create_job", "schedules.put_schedule"}
#: Blueprints that serve pages to browsers (they get a script-nonce CSP).
_PAGES = frozenset({dashboard.BLUEPRINT})


class MissingTokens(RuntimeError):
    pass


def create_app(
    settings: Settings | None = None,
    connection: Redis | None = None,
    registry: JobRegistry | None = None,
) -> APIFlask:
    settings = settings or Settings.from_env()
    tokens = auth.parse_tokens(settings.api_tokens)
    if not tokens:
        raise MissingTokens(
            "API_TOKENS is empty, so anyone could run jobs: set API_TOKENS to one or more "
            "tokens of 16+ characters (`token` or `token:enqueue+read`, comma-separated). "
            "`make run` makes one for you."
        )
    app = APIFlask(
        __name__,
        title="RQ Job Service",
        version="0.1.0",
        spec_path="/openapi.json",
        docs_path=None,  # /docs is `api.docs`: Swagger UI from this origin, not a CDN
    )
    if settings.trusted_proxies:
        n = settings.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n, x_host=n)  # type: ignore[method-assign]
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    registry = registry or job_registry()
    connection = connection or connect(settings)
    app.extensions["jobservice"] = {"settings": settings, "redis": connection, "registry": registry}
    app.error_processor(problems.render)
    app.spec_processor(_finish_spec)

    # Order matters: who you are, then where the request comes from, then what it says.
    auth.install(app, tokens, lambda req: dashboard.scope(req) or auth.view_scope(app, req))
    csrf.install(app, post_only=dashboard.STATE_CHANGING)
    security_headers.install(app, page_blueprints=_PAGES)
    json_body.install(app, blueprints=_JSON_API, body_required=_BODY_REQUIRED)

    app.register_blueprint(health.bp)
    app.register_blueprint(jobs.bp)
    app.register_blueprint(queues.bp)
    app.register_blueprint(artifacts.bp)
    app.register_blueprint(ui.bp)
    app.register_blueprint(docs.bp)
    app.register_blueprint(schedules.bp)
    ops.init_app(app)  # /ready, /metrics, 503 when Redis fails, request logs
    dashboard.mount(app, settings)
    rate_limits.check_declared(settings, registry)
    auth.check_declared(registry)
    app.cli.add_command(cli.jobs)
    return app


def _finish_spec(spec: dict) -> dict:
    """Errors as problem+json, and the token every operation but /health needs."""
    problems.document_errors(spec)
    spec["components"]["securitySchemes"] = {
        "token": {"type": "http", "scheme": "bearer", "description": "An API token from API_TOKENS."},
        "browser": {"type": "http", "scheme": "basic", "description": "Any user name, an API token as password."},
    }
    spec["security"] = [{"token": []}, {"browser": []}]
    for path, operations in spec.get("paths", {}).items():
        for operation in operations.values():
            if path == "/health":
                operation["security"] = []
            else:
                operation.setdefault("responses", {}).setdefault("401", {"description": "No valid token"})
                operation["responses"].setdefault("403", {"description": "The token lacks the scope"})
    problems.document_errors(spec)
    return spec
