"""Who may call what: API tokens with scopes, checked before every request.

`API_TOKENS` is a comma-separated list of `token` (every scope) or
`token:scope+scope` entries. A request authenticates with
`Authorization: Bearer <token>`, or HTTP Basic with the token as the password
(what a browser offers for the dashboard and the docs). Tokens are compared in
constant time and never logged; only a short digest of one names it in rate
limit keys.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass
from functools import cached_property
from typing import Callable, TypeVar

from flask import Flask, Request, g, request

from .problems import problem

SCOPES = ("enqueue", "read", "admin")
MIN_TOKEN_LENGTH = 16
#: Endpoints anyone may call: the liveness probe of the platform, the /ui page
#: with its static files, and Swagger UI's files (they hold no data; the pages
#: ask for a token to call the API).
PUBLIC = frozenset({"health.health", "ui.home", "ui.page", "static", "docs.asset"})
#: Endpoints for browsers, which get a Basic challenge so the browser asks for the token.
_BROWSER_BLUEPRINTS = frozenset({"rq_dashboard", "openapi", "docs", "ui"})

F = TypeVar("F", bound=Callable)


class TokenError(ValueError):
    pass


@dataclass(frozen=True)
class Token:
    secret: str
    scopes: frozenset[str]

    @cached_property
    def id(self) -> str:
        """A name for the token that reveals nothing of it (for rate-limit keys)."""
        return hashlib.sha256(self.secret.encode()).hexdigest()[:16]

    def allows(self, scope: str) -> bool:
        # An administrator may look at what they administer.
        return scope in self.scopes or (scope == "read" and "admin" in self.scopes)


def parse_tokens(raw: str) -> tuple[Token, ...]:
    tokens = []
    for entry in filter(None, (part.strip() for part in raw.split(","))):
        secret, _, scope_list = entry.partition(":")
        scopes = frozenset(filter(None, scope_list.split("+"))) if scope_list else frozenset(SCOPES)
        unknown = scopes - set(SCOPES)
        if unknown:
            raise TokenError(f"API_TOKENS: unknown scope {', '.join(sorted(unknown))}; scopes are {', '.join(SCOPES)}")
        if len(secret) < MIN_TOKEN_LENGTH:
            raise TokenError(f"API_TOKENS: every token must have at least {MIN_TOKEN_LENGTH} characters")
        tokens.append(Token(secret, scopes))
    return tuple(tokens)


def check_declared(registry) -> None:
    """A job that declares a scope there is not stops the service at start."""
    for spec in registry:
        if spec.scope not in SCOPES:
            raise TokenError(f"{spec.name}: @defaults(scope={spec.scope!r}); scopes are {', '.join(SCOPES)}")


def requires(scope: str) -> Callable[[F], F]:
    """Mark a view as needing `scope` (by default GET needs `read`, anything else `admin`)."""
    assert scope in SCOPES

    def mark(view: F) -> F:
        view.required_scope = scope  # type: ignore[attr-defined]
        return view

    return mark


def _presented_secret(req: Request) -> str | None:
    header = req.headers.get("Authorization", "")
    kind, _, value = header.partition(" ")
    if kind.lower() == "bearer":
        return value.strip() or None
    if kind.lower() == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[2] or None
    return None


def authenticate(tokens: tuple[Token, ...], secret: str | None) -> Token | None:
    if not secret:
        return None
    found = None
    for token in tokens:  # every one, so the time taken says nothing about which matched
        if hmac.compare_digest(token.secret.encode(), secret.encode()):
            found = token
    return found


def install(app: Flask, tokens: tuple[Token, ...], scope_of: Callable[[Request], str]) -> None:
    """Require a token with the right scope on every request but PUBLIC ones."""

    @app.before_request
    def check_token():
        # The request itself, not Flask's proxy to it: each attribute read through
        # the proxy costs about 0.8 µs, and the hooks run on every request.
        req = request._get_current_object()
        if req.endpoint in PUBLIC:
            return
        token = authenticate(tokens, _presented_secret(req))
        if token is None:
            browser = req.blueprint in _BROWSER_BLUEPRINTS
            challenge = 'Basic realm="RQ Job Service"' if browser else 'Bearer realm="RQ Job Service"'
            raise problem(
                401,
                "Send an API token: Authorization: Bearer <token>.",
                title="Unauthorized",
                headers={"WWW-Authenticate": challenge},
            )
        scope = scope_of(req)
        if not token.allows(scope):
            raise problem(403, f"This token lacks the {scope!r} scope this request needs.", title="Forbidden")
        g.token = token


def view_scope(app: Flask, req: Request) -> str:
    """The scope `req` needs: its view's own mark, else by method."""
    view = app.view_functions.get(req.endpoint or "")
    marked = getattr(view, "required_scope", None)
    if marked:
        return marked
    return "read" if req.method in ("GET", "HEAD", "OPTIONS") else "admin"
