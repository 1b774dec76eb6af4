"""The HTTP API, one blueprint an area."""
from __future__ import annotations

from typing import Any

from flask import current_app


def service(name: str) -> Any:
    """The app's settings, Redis connection or job registry (`settings`, `redis`, `registry`)."""
    return current_app.extensions["jobservice"][name]
