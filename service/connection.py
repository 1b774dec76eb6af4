"""The Redis connection, as every process of the service opens it."""
from __future__ import annotations

import ssl

from redis import Redis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.retry import Retry

from .settings import Settings


def connect(settings: Settings) -> Redis:
    """Open a client for `settings.redis_url` (`redis://`, `rediss://` or `unix://`).

    Heroku Redis serves TLS with a self-signed certificate, so a `rediss://` URL is
    not verified unless `REDIS_TLS_VERIFY` is on.

    Every wait is bounded by `REDIS_TIMEOUT` so that a caller learns within about
    that long that Redis is unreachable (the web turns it into a 503). A command
    is retried once, at once, and only after a connection error (a pooled
    connection that a Redis restart broke): never after a timeout, when Redis
    may have applied the command already and a retry could push a job twice.
    RQ's worker raises the read timeout itself for its blocking commands.
    """
    options: dict = {
        "health_check_interval": 30,
        "socket_keepalive": True,
        "socket_connect_timeout": settings.redis_timeout,
        "socket_timeout": settings.redis_timeout,
        "retry": Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
    }
    if settings.redis_url.startswith("rediss://") and not settings.redis_tls_verify:
        options["ssl_cert_reqs"] = ssl.CERT_NONE
    return Redis.from_url(settings.redis_url, **options)
