"""Interactive API documentation (/docs): Swagger UI, served by this service itself.

Swagger UI's built files come from the `flask-swagger-ui` package and are sent
from this origin: no third party decides what runs on a page a token opens, and
/docs works without the internet.
"""
from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

from apiflask import APIBlueprint
from flask import current_app, render_template, send_from_directory

from ..problems import problem

bp = APIBlueprint("docs", __name__, enable_openapi=False)

#: Swagger UI's files, found without importing the package (its blueprint is not used).
_DIST = Path(find_spec("flask_swagger_ui").submodule_search_locations[0]) / "dist"
#: What the page loads; nothing else of the package is served.
ASSETS = frozenset({"swagger-ui.css", "swagger-ui-bundle.js", "swagger-ui-standalone-preset.js", "favicon-32x32.png"})


@bp.get("/docs")
def page():
    return render_template("docs.html", title=current_app.title, version=current_app.version)


@bp.get("/docs/<name>")
def asset(name: str):
    if name not in ASSETS:
        raise problem(404, f"/docs has no file {name!r}.")
    return send_from_directory(_DIST, name, max_age=86400)
