"""The Redis connection, as every process of the service opens it."""
from __future__ import annotations

import ssl

from redis import BlockingConnectionPool, Redis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.retry import Retry

from .settings import Settings


#: Connections a process's pool may hold at once: redis-py's own limit.
POOL_SIZE = 100


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

    redis-py's pool opens at most `POOL_SIZE` connections and refuses the next
    at once ("Too many connections"): 300 clients of one gevent web process
    reading at the same moment got 201 503s. This pool makes the one more wait
    for a connection to come free, for up to `REDIS_TIMEOUT` (a command takes
    well under a millisecond); only then is it a 503 (so a 503 may take that
    wait and a connect's timeout: about twice `REDIS_TIMEOUT`). Waiters are not
    served in order: under a sustained overload, rather than a burst, some
    wait the whole time and get their 503.
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
    pool = BlockingConnectionPool.from_url(
        settings.redis_url, max_connections=POOL_SIZE, timeout=settings.redis_timeout, **options
    )
    return Redis.from_pool(pool)
