"""Queues and their depth."""
from __future__ import annotations

from apiflask import APIBlueprint

from ..queues import queue
from . import service

bp = APIBlueprint("queues", __name__)


@bp.get("/queues")
@bp.doc(summary="Each queue with the number of jobs waiting in it")
def list_queues():
    connection = service("redis")
    return {
        "queues": [
            {"name": name, "depth": queue(name, connection).count} for name in service("settings").queues
        ]
    }
