"""The HTTP API, one blueprint an area."""
from __future__ import annotations

from typing import Any

from flask import current_app


def service(name: str) -> Any:
    """The app's settings, Redis connection or job registry (`settings`, `redis`, `registry`)."""
    return services()[name]


def services() -> dict[str, Any]:
    """Every one of `service`'s objects by name, at one look through Flask's
    `current_app` proxy (about 0.8 µs a look) for a view that needs several."""
    return current_app.extensions["jobservice"]
