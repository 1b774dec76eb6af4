"""rq-dashboard, mounted at /rq and reading JSON job records."""
from __future__ import annotations

from urllib.parse import urlencode, urlsplit, urlunsplit

import rq_dashboard
from flask import Flask
from rq.serializers import JSONSerializer

from .settings import Settings

URL_PREFIX = "/rq"


def mount(app: Flask, settings: Settings) -> None:
    # The dashboard keeps its serializer in a module-level config object.
    rq_dashboard.web.config.serializer = JSONSerializer
    app.config["RQ_DASHBOARD_REDIS_URL"] = _dashboard_redis_url(settings)
    rq_dashboard.web.setup_rq_connection(app)
    # A plain Flask blueprint; APIFlask asks every blueprint whether to document it.
    rq_dashboard.blueprint.enable_openapi = False
    app.register_blueprint(rq_dashboard.blueprint, url_prefix=URL_PREFIX)


def _dashboard_redis_url(settings: Settings) -> str:
    """The dashboard opens its own clients from a URL, so TLS options go in it."""
    url = settings.redis_url
    if url.startswith("rediss://") and not settings.redis_tls_verify:
        parts = urlsplit(url)
        query = "&".join(filter(None, [parts.query, urlencode({"ssl_cert_reqs": "none"})]))
        url = urlunsplit(parts._replace(query=query))
    return url
