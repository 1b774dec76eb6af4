"""Refuse state-changing requests that a browser sends on behalf of another site.

A browser adds Basic credentials to any request to this origin, whichever page
made it, so a request that changes something must come from this origin: the
browser's `Sec-Fetch-Site` says so, or else its `Origin`. Clients that are not
browsers send neither and are judged by their token alone.
"""
from __future__ import annotations

from urllib.parse import urlsplit

from flask import Flask, request

from .problems import problem

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def install(app: Flask, state_changing_gets: frozenset[str]) -> None:
    @app.before_request
    def same_origin_only():
        req = request._get_current_object()  # one look through Flask's proxy
        if req.method in SAFE_METHODS and req.endpoint not in state_changing_gets:
            return
        fetch_site = req.headers.get("Sec-Fetch-Site")
        if fetch_site in ("cross-site", "same-site"):
            raise problem(403, "Cross-site requests may not change anything here.", title="Forbidden")
        origin = req.headers.get("Origin")
        if origin and origin != "null":
            if _origin(origin) != _origin(req.host_url):
                raise problem(403, "Requests from another origin may not change anything here.", title="Forbidden")
        elif origin == "null":
            raise problem(403, "Requests from an opaque origin may not change anything here.", title="Forbidden")


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc.lower()
