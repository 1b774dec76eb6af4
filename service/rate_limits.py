"""Enqueue rate limits: which counters a request to POST /jobs draws on.

Three limits apply: per token, per client IP, and the job's own
`@defaults(rate_limit=...)` per client IP ("one contact email per visitor per
10 s"). Limits are written the `limits` library's way ("100 per minute") and
counted in fixed windows that start at a key's first hit.

The counting itself happens in the enqueue script (`service.admission`), in the
same Redis round trip that writes the job: a request over a limit gets 429 with
Retry-After and writes nothing, and one within every limit costs no extra trip.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from limits import parse as parse_limit

from .registry import JobRegistry, JobSpec
from .settings import Settings

KEY_PREFIX = "jobservice:ratelimit:"


@dataclass(frozen=True)
class Counter:
    """One fixed-window counter: at most `amount` hits per `seconds` on `key`."""

    key: str
    amount: int
    seconds: int
    #: The limit as configured, for the 429's message.
    text: str


class RateLimited(Exception):
    """A counter is full; nothing was written."""

    def __init__(self, counter: Counter, retry_after: int):
        self.counter, self.retry_after = counter, retry_after
        super().__init__(f"at most {counter.text}")


@lru_cache(maxsize=64)
def _parsed(text: str) -> tuple[int, int]:
    item = parse_limit(text)
    return item.amount, item.get_expiry()


def counter(scope: str, text: str) -> Counter:
    amount, seconds = _parsed(text)
    return Counter(f"{KEY_PREFIX}{scope}:{amount}/{seconds}", amount, seconds, text)


def for_enqueue(settings: Settings, token_id: str, spec: JobSpec, remote_addr: str | None) -> list[Counter]:
    """The counters an enqueue of `spec` by this token, from the client at
    `remote_addr`, draws on."""
    ip = remote_addr or "unknown"
    counters = [
        counter(f"token:{token_id}", settings.rate_limit_per_token),
        counter(f"ip:{ip}", settings.rate_limit_per_ip),
    ]
    own = spec.declared.get("rate_limit")
    if own:
        counters.append(counter(f"job:{spec.name}:{ip}", own))
    return counters


def check_declared(settings: Settings, registry: JobRegistry) -> None:
    """A malformed limit stops the service at start, not a request."""
    for text in (settings.rate_limit_per_token, settings.rate_limit_per_ip):
        _parsed(text)
    for spec in registry:
        declared = spec.declared.get("rate_limit")
        if declared:
            _parsed(declared)
