"""HTTP: call a slow or flaky third-party API from a worker.

Settings (environment variables):

- `HTTP_HOST_CONCURRENCY`: how many `http.request` jobs for one host (scheme,
  name and port) may be queued or running at once across all workers (4); the
  rest wait, marked `rate_limited`, and go on as slots free up. Read where jobs
  are enqueued (the web process).
- `HTTP_MAX_RESPONSE_BYTES`: the most of a response body kept in the result (1 MiB).
- `HTTP_MAX_RETRY_AFTER`: the longest `Retry-After` waited for, in seconds (3600);
  a server asking for longer fails the job.
- `OUTBOUND_ALLOWED_HOSTS`, `OUTBOUND_ALLOW_PRIVATE`: which non-public hosts a
  call may reach (none by default; see `jobs/_outbound.py`).
"""
from __future__ import annotations

import base64
import json as jsonlib
import os
import time
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, StringConstraints

from jobs import _outbound, defaults
from jobs._failures import PermanentFailure, TransientFailure, classified

if TYPE_CHECKING:
    import httpx

Method = Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
#: Headers that frame the message or the connection: the HTTP client writes
#: them itself, and one given by hand would contradict it (and fail every try).
_FRAMING = frozenset({"connection", "content-length", "keep-alive", "proxy-connection", "te", "trailer",
                      "transfer-encoding", "upgrade"})


def _not_framing(name: str) -> str:
    if name.lower() in _FRAMING:
        raise ValueError(f"{name} is set by the HTTP client itself")
    return name


HeaderName = Annotated[
    str, StringConstraints(pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,100}$"), AfterValidator(_not_framing)
]
# What the HTTP client sends as it is: visible ASCII, inner spaces and tabs, no
# space at either end (a value is trimmed on the wire; the client refuses one that is not).
HeaderValue = Annotated[
    str, StringConstraints(max_length=8192, pattern=r"^(?:[\x21-\x7e](?:[\x20-\x7e\t]*[\x21-\x7e])?)?$")
]

_TEXT_TYPES = ("text/", "application/json", "application/xml", "application/javascript", "+json", "+xml")


def _per_host(arguments: dict[str, Any]) -> tuple[str, int]:
    """The concurrency key and limit of one call: at most N calls in flight to one host."""
    parts = urlsplit(str(arguments["url"]))
    port = parts.port or (443 if parts.scheme == "https" else 80)
    limit = int(os.environ.get("HTTP_HOST_CONCURRENCY") or 4)
    return f"http:{parts.scheme}://{(parts.hostname or '').lower()}:{port}", max(1, limit)


@defaults(
    retry={"max": 5, "backoff": {"base": 5, "factor": 4, "cap": 1800, "jitter": True}},
    timeout=360,
    concurrency=_per_host,
)
def request(
    url: _outbound.OutboundUrl,
    method: Method = "GET",
    headers: dict[HeaderName, HeaderValue] | None = None,
    json: Any = None,
    timeout: Annotated[float, Field(gt=0, le=300)] = 30.0,
    follow_redirects: bool = False,
) -> dict[str, Any]:
    """Make one HTTP request and return its status, headers and body (the body bounded in size).

    `json`, when given, is sent as the JSON body. 5xx and 429 answers, timeouts
    and network errors are retried with backoff, waiting at least as long as a
    `Retry-After` header asks; any other 4xx fails at once. Redirects are
    returned as they are unless `follow_redirects`. A host (or a redirect's
    host) that is not public fails the job at once, unless OUTBOUND_ALLOWED_HOSTS
    allows it.
    """
    import httpx  # here, not at the top: processes that never call out need not load it

    url = str(url)
    limit = int(os.environ.get("HTTP_MAX_RESPONSE_BYTES") or 1024 * 1024)
    with classified():
        started = time.monotonic()
        try:
            with _outbound.client(timeout=timeout, follow_redirects=follow_redirects) as client:
                content = None if json is None else jsonlib.dumps(json).encode()
                sent_headers = {**({"Content-Type": "application/json"} if content is not None else {}), **(headers or {})}
                with client.stream(method, url, headers=sent_headers, content=content) as response:
                    body, truncated = _read_bounded(response, limit)
        except _outbound.Refused as error:
            raise PermanentFailure(f"{method} {_outbound.shown(url)}: {error}") from error
        except httpx.LocalProtocolError as error:
            # The request itself is one HTTP cannot carry: every try would fail alike.
            raise PermanentFailure(f"{method} {_outbound.shown(url)}: {error}") from error
        except httpx.TransportError as error:
            # Refused connections, timeouts, resets, broken responses.
            detail = f"{type(error).__name__}: {error or 'no detail'}"
            raise TransientFailure(f"{method} {_outbound.shown(url)}: {detail}") from error
        elapsed = round(time.monotonic() - started, 3)
        result = _result(response, body, truncated, elapsed)
        status = response.status_code
        if status >= 500 or status == 429:
            raise TransientFailure(_describe(method, url, response, body), retry_after=_retry_after(response))
        if status >= 400:
            raise PermanentFailure(_describe(method, url, response, body))
        return result


def _read_bounded(response: httpx.Response, limit: int) -> tuple[bytes, bool]:
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            return b"".join(chunks)[:limit], True
    return b"".join(chunks), False


def _result(response: httpx.Response, body: bytes, truncated: bool, elapsed: float) -> dict[str, Any]:
    content_type = response.headers.get("content-type", "")
    result: dict[str, Any] = {
        "status": response.status_code,
        "reason": response.reason_phrase,
        "url": str(response.url),
        "headers": {name: ", ".join(response.headers.get_list(name)) for name in response.headers.keys()},
        "bytes": len(body),
        "truncated": truncated,
        "elapsed": elapsed,
    }
    if not body or any(kind in content_type for kind in _TEXT_TYPES) or not content_type:
        result["body"] = body.decode(response.encoding or "utf-8", errors="replace")
        if "json" in content_type and not truncated:
            try:
                result["json"] = jsonlib.loads(body)
            except ValueError:
                pass
    else:
        result["body_base64"] = base64.b64encode(body).decode()
    return result


def _describe(method: str, url: str, response: httpx.Response, body: bytes) -> str:
    snippet = body[:300].decode(errors="replace").strip()
    return f"{method} {_outbound.shown(url)} answered {response.status_code} {response.reason_phrase}" + (f": {snippet}" if snippet else "")


def _retry_after(response: httpx.Response, now: datetime | None = None) -> float | None:
    """Seconds a `Retry-After` header asks to wait (delta-seconds or an HTTP date), if any."""
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return None
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            moment = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        seconds = max(0.0, (moment - (now or datetime.now(timezone.utc))).total_seconds())
    longest = float(os.environ.get("HTTP_MAX_RETRY_AFTER") or 3600)
    if seconds > longest:
        raise PermanentFailure(
            f"{response.request.method} {_outbound.shown(str(response.request.url))} asks to retry after {seconds:.0f} s, "
            f"longer than HTTP_MAX_RETRY_AFTER ({longest:.0f} s)"
        )
    return seconds
