"""All configuration, read once from environment variables (12-factor).

Every knob has a typed default that suits a laptop; Heroku-style platforms set
`REDIS_URL`, `PORT` and `WEB_CONCURRENCY` themselves.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass


def _env_list(name: str, default: str) -> tuple[str, ...]:
    raw = os.environ.get(name, default)
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"{name} must be an integer, got {raw!r}") from None


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise SystemExit(f"{name} must be a number, got {raw!r}") from None


def _env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    return raw.strip().lower() in ("1", "true", "yes", "on")


def mask_url(url: str) -> str:
    """`url` with any password replaced, for logs and pages."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def _env_seconds(name: str, default: tuple[int, ...]) -> tuple[int, ...]:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        values = tuple(int(part) for part in raw.split(",") if part.strip())
    except ValueError:
        values = (-1,)
    if any(value < 0 for value in values):
        raise SystemExit(f"{name} must be whole seconds separated by commas, got {raw!r}")
    return values


@dataclass(frozen=True)
class Settings:
    #: Redis to use; `rediss://` for TLS. Local runs set it to the embedded server.
    redis_url: str = "redis://127.0.0.1:6379/0"
    #: Verify the TLS certificate of a `rediss://` server. Heroku Redis uses
    #: self-signed certificates, so verification is off unless asked for.
    redis_tls_verify: bool = False
    #: Queues a worker listens on, highest priority first.
    queues: tuple[str, ...] = ("high", "default", "low")
    #: Queue a job goes to when neither the request nor the job names one.
    default_queue: str = "default"
    #: Seconds a job may run before the worker kills it.
    job_timeout: int = 180
    #: Seconds a finished job's result is kept.
    result_ttl: int = 24 * 3600
    #: Seconds a failed job is kept (with its exception) for inspection.
    failure_ttl: int = 7 * 24 * 3600
    #: Largest request body accepted, in bytes.
    max_body_bytes: int = 1024 * 1024
    #: Jobs a queue may hold; beyond it enqueue answers 503 instead of growing Redis.
    max_queue_depth: int = 100_000
    #: API tokens: `token` or `token:scope+scope`, comma-separated (scopes: enqueue, read, admin).
    api_tokens: str = ""
    #: Enqueue rate limits ("100 per minute", the `limits` syntax), per token and per client IP.
    rate_limit_per_token: str = "6000 per minute"
    rate_limit_per_ip: str = "1200 per minute"
    #: Proxies in front of the web process whose X-Forwarded-* headers to trust (Heroku: 1).
    trusted_proxies: int = 0
    #: The dashboard shows but changes nothing.
    dashboard_read_only: bool = False
    #: Longest sleep of a scheduler (cron, or the worker's for jobs given a time)
    #: between looks for due jobs, in seconds; it wakes earlier when one is due.
    scheduler_interval: float = 1.0
    #: Time zone that cron expressions are read in unless a schedule names one.
    schedule_timezone: str = "UTC"
    #: TOML file of declared schedules; empty means `jobs/schedules.toml`.
    schedules_file: str = ""
    #: Port the web process listens on.
    port: int = 5000
    #: Signs completion webhooks whose request gives no secret of its own.
    webhook_secret: str = ""
    #: Seconds before each retry of an undelivered webhook (as many retries as delays).
    webhook_backoff: tuple[int, ...] = (10, 60, 300, 1800, 7200, 21600)
    #: Seconds a webhook receiver has to answer.
    webhook_timeout: float = 10.0

    # --- Reliability (see README, "Reliability") ---
    #: Seconds to connect to Redis or wait for a reply; the web answers 503
    #: within about this long when Redis is unreachable.
    redis_timeout: float = 1.0
    #: Run on a Redis whose maxmemory-policy may evict keys (i.e. delete jobs).
    redis_allow_eviction: bool = False
    #: Seconds between a worker's heartbeats, idle or busy.
    worker_heartbeat_interval: int = 5
    #: Seconds without a heartbeat after which a worker counts as dead and the
    #: jobs it held are recovered.
    orphan_timeout: int = 30
    #: Seconds between a worker's looks for jobs held by dead workers.
    recovery_interval: float = 10.0
    #: Times a job may lose its worker (killed, crashed) before it is failed
    #: instead of requeued, so a job that kills its worker cannot loop forever.
    job_max_abandons: int = 3
    #: Seconds a worker lets its running job finish after SIGTERM before it
    #: stops the job and puts it back on its queue (Heroku sends SIGKILL at 30 s).
    shutdown_grace: float = 25.0
    #: Seconds an idle worker blocks on its first queue before looking at the others.
    dequeue_poll_interval: float = 0.25
    #: Replace the executor (the process that runs jobs) after this many jobs (0: never).
    worker_max_jobs: int = 0
    #: The most an executor may use, in MiB: above it after a job, the executor
    #: is replaced; above it during a job, the job is stopped and failed (0: no limit).
    #: 512 MiB is the memory of Heroku's smallest dyno.
    worker_max_memory_mb: int = 512
    #: `json` (one JSON object a line) or `text`.
    log_format: str = "json"
    #: Level of the service's own log events.
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        if self.orphan_timeout <= self.worker_heartbeat_interval:
            raise SystemExit(
                f"ORPHAN_TIMEOUT ({self.orphan_timeout}) must be longer than WORKER_HEARTBEAT_INTERVAL "
                f"({self.worker_heartbeat_interval}): every live worker would look dead between two beats"
            )

    @classmethod
    def from_env(cls) -> "Settings":
        return cls(
            redis_url=os.environ.get("REDIS_URL") or cls.redis_url,
            redis_tls_verify=_env_bool("REDIS_TLS_VERIFY", cls.redis_tls_verify),
            queues=_env_list("RQ_QUEUES", ",".join(cls.queues)),
            default_queue=os.environ.get("RQ_DEFAULT_QUEUE", cls.default_queue),
            job_timeout=_env_int("JOB_TIMEOUT", cls.job_timeout),
            result_ttl=_env_int("JOB_RESULT_TTL", cls.result_ttl),
            failure_ttl=_env_int("JOB_FAILURE_TTL", cls.failure_ttl),
            max_body_bytes=_env_int("MAX_BODY_BYTES", cls.max_body_bytes),
            max_queue_depth=_env_int("MAX_QUEUE_DEPTH", cls.max_queue_depth),
            api_tokens=os.environ.get("API_TOKENS", cls.api_tokens),
            rate_limit_per_token=os.environ.get("RATE_LIMIT_PER_TOKEN", cls.rate_limit_per_token),
            rate_limit_per_ip=os.environ.get("RATE_LIMIT_PER_IP", cls.rate_limit_per_ip),
            trusted_proxies=_env_int("TRUSTED_PROXIES", cls.trusted_proxies),
            dashboard_read_only=_env_bool("DASHBOARD_READ_ONLY", cls.dashboard_read_only),
            scheduler_interval=_env_float("SCHEDULER_INTERVAL", cls.scheduler_interval),
            schedule_timezone=os.environ.get("SCHEDULE_TIMEZONE") or cls.schedule_timezone,
            schedules_file=os.environ.get("SCHEDULES_FILE", cls.schedules_file),
            port=_env_int("PORT", cls.port),
            webhook_secret=os.environ.get("WEBHOOK_SECRET", cls.webhook_secret),
            webhook_backoff=_env_seconds("WEBHOOK_BACKOFF", cls.webhook_backoff),
            webhook_timeout=_env_float("WEBHOOK_TIMEOUT", cls.webhook_timeout),
            # Reliability
            redis_timeout=_env_float("REDIS_TIMEOUT", cls.redis_timeout),
            redis_allow_eviction=_env_bool("REDIS_ALLOW_EVICTION", cls.redis_allow_eviction),
            worker_heartbeat_interval=_env_int("WORKER_HEARTBEAT_INTERVAL", cls.worker_heartbeat_interval),
            orphan_timeout=_env_int("ORPHAN_TIMEOUT", cls.orphan_timeout),
            recovery_interval=_env_float("RECOVERY_INTERVAL", cls.recovery_interval),
            job_max_abandons=_env_int("JOB_MAX_ABANDONS", cls.job_max_abandons),
            shutdown_grace=_env_float("SHUTDOWN_GRACE", cls.shutdown_grace),
            dequeue_poll_interval=_env_float("DEQUEUE_POLL_INTERVAL", cls.dequeue_poll_interval),
            worker_max_jobs=_env_int("WORKER_MAX_JOBS", cls.worker_max_jobs),
            worker_max_memory_mb=_env_int("WORKER_MAX_MEMORY_MB", cls.worker_max_memory_mb),
            log_format=os.environ.get("LOG_FORMAT", cls.log_format),
            log_level=os.environ.get("LOG_LEVEL", cls.log_level),
        )
