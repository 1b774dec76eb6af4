"""Headers every response carries, and the Content-Security-Policy of each kind of page."""
from __future__ import annotations

import secrets

from flask import Flask, g, request

#: JSON answers: nothing in them may ever load or run anything.
API_POLICY = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"

def page_policy(nonce: str) -> str:
    """For pages of our own and the dashboard: scripts only from this origin or
    carrying this response's nonce, so markup smuggled into a page runs nothing.

    rq-dashboard compiles its Underscore templates with `new Function`, hence
    'unsafe-eval'; that compiles the dashboard's own templates, never page markup.
    """
    return (
        f"default-src 'self'; script-src 'self' 'nonce-{nonce}' 'unsafe-eval'; "
        "style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; "
        "object-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    )


def docs_policy(nonce: str) -> str:
    """For Swagger UI at /docs: its files from this origin, its one inline script
    carrying this response's nonce; it styles its elements inline."""
    return (
        f"default-src 'none'; script-src 'self' 'nonce-{nonce}'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    )


def csp_nonce() -> str:
    """This response's script nonce (templates put it on their inline scripts)."""
    if "csp_nonce" not in g:
        g.csp_nonce = secrets.token_urlsafe(16)
    return g.csp_nonce


#: Every response carries these, unless a view set its own.
_ALWAYS = (
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
    ("Permissions-Policy", "camera=(), microphone=(), geolocation=()"),
)
_HSTS = ("Strict-Transport-Security", "max-age=31536000; includeSubDomains")


def install(app: Flask, page_blueprints: frozenset[str]) -> None:
    app.jinja_env.globals["csp_nonce"] = csp_nonce

    @app.after_request
    def add_headers(response):
        # One look at the names a view set, then appends: werkzeug's setdefault
        # scans every header for each name, and this runs on every response.
        req = request._get_current_object()  # one look through Flask's proxy
        headers = response.headers
        present = {name.lower() for name in headers.keys()}
        wanted = [*_ALWAYS, _HSTS] if req.is_secure else _ALWAYS
        for name, value in wanted:
            if name.lower() not in present:
                headers.add(name, value)
        if "content-security-policy" not in present:
            if req.endpoint == "docs.page":
                policy = docs_policy(csp_nonce())
            elif req.blueprint in page_blueprints:
                policy = page_policy(csp_nonce())
            else:
                policy = API_POLICY
            headers.add("Content-Security-Policy", policy)
        return response
