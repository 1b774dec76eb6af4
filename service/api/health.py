"""Liveness."""
from apiflask import APIBlueprint

bp = APIBlueprint("health", __name__)


@bp.get("/health")
@bp.doc(summary="The web process is alive")
def health():
    return {"status": "ok"}
