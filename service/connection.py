"""The Redis connection, as every process of the service opens it."""
from __future__ import annotations

import ssl

from redis import Redis

from .settings import Settings


def connect(settings: Settings) -> Redis:
    """Open a client for `settings.redis_url` (`redis://`, `rediss://` or `unix://`).

    Heroku Redis serves TLS with a self-signed certificate, so a `rediss://` URL is
    not verified unless `REDIS_TLS_VERIFY` is on.
    """
    options: dict = {"health_check_interval": 30, "socket_keepalive": True}
    if settings.redis_url.startswith("rediss://") and not settings.redis_tls_verify:
        options["ssl_cert_reqs"] = ssl.CERT_NONE
    return Redis.from_url(settings.redis_url, **options)
