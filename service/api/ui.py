"""A small web page to submit a report or an email and watch it run (/ui)."""
from __future__ import annotations

from apiflask import APIBlueprint
from flask import current_app, redirect, url_for

bp = APIBlueprint("ui", __name__, enable_openapi=False)

#: The page loads its script and style from this origin and talks only to it.
POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


@bp.get("/")
def home():
    return redirect(url_for(".page"))


@bp.get("/ui")
def page():
    response = current_app.send_static_file("ui.html")
    response.headers["Content-Security-Policy"] = POLICY
    response.headers["Cache-Control"] = "no-cache"
    return response
