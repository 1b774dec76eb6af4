"""Artifacts: download the files jobs produced (a report)."""
from __future__ import annotations

from apiflask import APIBlueprint
from flask import send_file
from pydantic import BaseModel, ConfigDict, Field

from jobs import _artifacts

from ..problems import problem

bp = APIBlueprint("artifacts", __name__)


class ArtifactQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(
        None, pattern=_artifacts.NAME, description="Which file, when the job produced several (e.g. `report.csv`)."
    )


@bp.get("/jobs/<job_id>/artifact")
@bp.input(ArtifactQuery, location="query", arg_name="query")
@bp.doc(
    summary="Download a file the job produced",
    description="The job's result links here (e.g. `result.artifact.url` of `reports.generate`). "
    "Files are kept until `maintenance.cleanup` removes them (JOB_RETENTION_DAYS).",
    responses={
        200: {
            "description": "The file, as an attachment",
            "content": {"application/octet-stream": {}, "text/csv": {}, "text/html": {}},
        },
        404: "No such artifact (never produced, or cleaned up)",
    },
)
def download_artifact(job_id: str, query: ArtifactQuery):
    names = _artifacts.names(job_id)
    if not names:
        raise problem(404, f"Job {job_id!r} has no artifact: it produced none, or they were cleaned up.")
    name = query.name or names[0]
    if query.name is None and len(names) > 1:
        raise problem(404, f"Job {job_id!r} has several artifacts; pick one with ?name=.", names=names)
    try:
        path = _artifacts.existing(job_id, name)
    except _artifacts.ArtifactNotFound:
        raise problem(404, f"Job {job_id!r} has no artifact {name!r}.", names=names) from None
    response = send_file(
        path, mimetype=_artifacts.content_type(name), as_attachment=True, download_name=name, max_age=0
    )
    # A report may hold client-supplied text: never let a browser run it on this origin.
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Content-Security-Policy"] = "default-src 'none'; style-src 'unsafe-inline'; sandbox"
    return response
