"""Refuse state-changing requests that a browser sends on behalf of another site.

A browser adds Basic credentials to any request to this origin, whichever page
made it, so a request that changes something must come from this origin: the
browser's `Sec-Fetch-Site` says so, or else its `Origin`. Clients that are not
browsers send neither and are judged by their token alone.

A GET can carry neither header even from a browser (one without Fetch Metadata,
or any browser over plain HTTP to a host that is not localhost): an `<img>` on
another site would pass. So an endpoint that changes something is refused as a
GET altogether, and answers only a POST.
"""
from __future__ import annotations

from urllib.parse import urlsplit

from flask import Flask, request

from .problems import problem

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def install(app: Flask, post_only: frozenset[str]) -> None:
    """`post_only`: endpoints that change something although their route takes a GET."""

    @app.before_request
    def same_origin_only():
        req = request._get_current_object()  # one look through Flask's proxy
        if req.method in SAFE_METHODS:
            if req.endpoint in post_only:
                raise problem(405, "This changes something: send it as a POST.", title="Method Not Allowed",
                              headers={"Allow": "POST"})
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
