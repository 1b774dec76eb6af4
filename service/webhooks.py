"""Completion webhooks: when a job ends, POST its outcome to a URL its client gave.

A client asks for one on POST /jobs with `"webhook": {"url": ..., "secret": ...}`.
The URL and secret are kept beside the job (never in its record, so neither the
API nor the dashboard shows the secret). When the job ends (finished, failed,
stopped or canceled) a delivery job is enqueued on the job's queue; it POSTs

    {"type": "job.finished", "timestamp": "...Z", "data": <the job, as GET /jobs/<id> shows it>}

signed as Standard Webhooks (https://www.standardwebhooks.com) sign: headers
`webhook-id` (the delivery's id, the same on every retry), `webhook-timestamp`
(Unix seconds) and `webhook-signature: v1,<base64 HMAC-SHA256 of
"<id>.<timestamp>.<body>">`. The HMAC key is the secret's UTF-8 bytes, or for a
secret written `whsec_<base64>`, those decoded bytes (so that the Standard
Webhooks libraries verify it as they are). Anything but a 2xx answer is retried
after each delay of `WEBHOOK_BACKOFF`; a 410 Gone stops the retries. A URL whose
host is not public (loopback, private, link-local, ...) is refused: at once when
written as such (`localhost`, an IP literal), else when the delivery connects
(see `jobs/_outbound.py`; OUTBOUND_ALLOWED_HOSTS lists exceptions).

RQ 3's own `rq.webhook.Webhook` posts once, unsigned, and only logs a failure,
so it does not fit; RQ does call `Job.send_webhooks` wherever a job ends
(including an abandoned job found by maintenance), which is where ServiceJob
hands over to `job_ended` here.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import time
import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, HttpUrl
from redis import Redis
from rq import get_current_job
from rq.job import Retry

from jobs import _outbound
from jobs._failures import PermanentFailure, TransientFailure, classified

from .settings import Settings

log = logging.getLogger(__name__)

KEY_PREFIX = "jobservice:webhook:"
#: How long a webhook is kept for a job that has not ended yet; beyond any TTL
#: the API lets a job's record have, and counted from the job's start time.
KEEP_SECONDS = 35 * 24 * 3600


class WebhookRequest(BaseModel):
    """Where to POST a job's outcome when it ends, and the secret to sign it with."""

    model_config = ConfigDict(extra="forbid")

    url: HttpUrl = Field(description="An http(s) URL.", examples=["https://example.com/hooks/jobs"])
    secret: str | None = Field(
        None,
        min_length=16,
        max_length=256,
        description="Signs each delivery (HMAC-SHA256, Standard Webhooks). Default: the service's WEBHOOK_SECRET.",
    )


def key(job_id: str) -> str:
    return KEY_PREFIX + job_id


def resolve(webhook: WebhookRequest, settings: Settings) -> dict[str, str]:
    """The webhook to keep for a job; ValueError when there is no secret to sign with,
    or the URL's host is plainly not public."""
    secret = webhook.secret or settings.webhook_secret
    if not secret:
        raise ValueError("give a `secret` to sign the deliveries with (the service has no WEBHOOK_SECRET)")
    try:
        _signing_key(secret)
    except binascii.Error:
        raise ValueError("a `whsec_` secret is base64 after its prefix (Standard Webhooks); this one is not") from None
    if len(str(webhook.url)) > 2048:
        raise ValueError("the URL is longer than 2048 characters")
    refusal = _outbound.Policy.from_env().literal_refusal(webhook.url.host or "")
    if refusal:
        raise ValueError(refusal)
    return {"url": str(webhook.url), "secret": secret}


def remember(connection: Redis, job_id: str, webhook: dict[str, str], delay_seconds: float = 0) -> None:
    """Keep a job's webhook until well after the job can have ended."""
    with connection.pipeline() as pipe:
        pipe.hset(key(job_id), mapping=webhook)
        pipe.expire(key(job_id), KEEP_SECONDS + int(delay_seconds))
        pipe.execute()


def job_ended(job, status: str) -> str | None:
    """Enqueue the delivery of `job`'s outcome, if its client asked for one; returns the delivery's id.

    Never raises: the job's outcome is already saved, and a webhook must not change it.
    """
    try:
        known = getattr(job, "has_webhook", None)  # learnt by the worker when it took the job
        if not (known if known is not None else job.connection.exists(key(job.id))):
            return None
        return _enqueue_delivery(job, status)
    except Exception:
        log.exception("could not enqueue the webhook delivery of job %s", job.id)
        return None


def _enqueue_delivery(job, status: str) -> str:
    from . import job_index
    from .job_view import describe
    from .queues import ServiceQueue, job_registry

    settings = Settings.from_env()
    event = {
        "type": f"job.{status}",
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "data": describe(job, job_registry()),
    }
    body = json.dumps(event, separators=(",", ":"), default=str)
    # Kept for as long as the deliveries may take, from now.
    job.connection.expire(key(job.id), sum(settings.webhook_backoff) + 7 * 24 * 3600)
    queue = ServiceQueue(job.origin, connection=job.connection)
    delays = list(settings.webhook_backoff)
    delivery = queue.create_job(
        deliver,
        args=[job.id, body],
        job_id=f"webhook-{uuid.uuid4()}",
        retry=Retry(max=len(delays), interval=delays) if delays else None,
        timeout=int(settings.webhook_timeout * 2 + 30),
        result_ttl=settings.result_ttl,
        failure_ttl=settings.failure_ttl,
        description=f"webhook: job.{status} of {job.id}",
    )
    queue.enqueue_job(delivery)
    job_index.add(job.connection, delivery)
    return delivery.id


def signature(secret: str, message_id: str, timestamp: int, body: str) -> str:
    """The `webhook-signature` header value for one delivery."""
    digest = hmac.new(_signing_key(secret), f"{message_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def _signing_key(secret: str) -> bytes:
    """Standard Webhooks' `whsec_<base64>` form, or any other text as it is."""
    if secret.startswith("whsec_"):
        return base64.b64decode(secret[len("whsec_"):], validate=True)
    return secret.encode()


def deliver(job_id: str, body: str) -> dict[str, Any]:
    """POST `body` (a job's outcome) to the webhook of job `job_id`; raises to be retried."""
    current = get_current_job()
    connection = current.connection
    stored = {k.decode(): v.decode() for k, v in connection.hgetall(key(job_id)).items()}
    if not stored:
        return {"delivered": False, "reason": "the webhook has expired"}
    settings = Settings.from_env()
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "rq-job-service-webhooks",
        "webhook-id": current.id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(stored["secret"], current.id, timestamp, body),
    }
    url = stored["url"]
    shown = _outbound.shown(url)
    import httpx  # here, not at the top: processes that never call out need not load it

    with classified():
        try:
            with _outbound.client(timeout=settings.webhook_timeout) as client:
                response = client.post(url, content=body.encode(), headers=headers)
        except _outbound.Refused as error:
            raise PermanentFailure(f"POST {shown}: {error}") from error
        except httpx.TransportError as error:
            raise TransientFailure(f"POST {shown}: {type(error).__name__}: {error or 'no detail'}") from error
        if response.status_code == 410:
            raise PermanentFailure(f"POST {shown} answered 410 Gone: the receiver wants no more deliveries")
        if not 200 <= response.status_code < 300:
            raise TransientFailure(f"POST {shown} answered {response.status_code} {response.reason_phrase}")
    # The result is shown to the client and on the dashboard: the URL as errors show it.
    return {"delivered": True, "url": shown, "status": response.status_code}
