"""Artifacts: files a job produces (a report), kept by job id, downloaded over HTTP.

They live in `ARTIFACTS_DIR` (default `var/artifacts`), one folder a job:
`<ARTIFACTS_DIR>/<job id>/<name>`. The web service serves them at
`GET /jobs/<id>/artifact`, `email.send` attaches them, and `maintenance.cleanup`
removes old ones. A client only ever names an artifact by job id and file name,
both checked against strict patterns, and the resolved path must stay inside the
folder: no client-supplied value can reach any other file on the server.
"""
from __future__ import annotations

import mimetypes
import os
import re
import tempfile
from pathlib import Path
from typing import Annotated

from typing_extensions import TypedDict  # pydantic needs it on Python < 3.12

from pydantic import StringConstraints

JOB_ID = r"^[A-Za-z0-9_-]{1,100}$"
#: A plain file name: no separators, no leading dot, no `..`.
NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,119}$"

JobIdText = Annotated[str, StringConstraints(pattern=JOB_ID)]
NameText = Annotated[str, StringConstraints(pattern=NAME)]


class ArtifactRef(TypedDict):
    """An artifact another job produced: `{"job": "<job id>", "name": "report.csv"}`."""

    job: JobIdText
    name: NameText


class ArtifactNotFound(LookupError):
    pass


def root() -> Path:
    """The artifacts folder (`ARTIFACTS_DIR`), as an absolute path."""
    return Path(os.environ.get("ARTIFACTS_DIR") or "var/artifacts").resolve()


def path(job_id: str, name: str) -> Path:
    """Where artifact `name` of job `job_id` is (or would be) kept; ValueError for a bad id or name."""
    if not re.fullmatch(JOB_ID, job_id or "") or not re.fullmatch(NAME, name or "") or ".." in name:
        raise ValueError(f"not an artifact: job {job_id!r}, name {name!r}")
    base = root()
    candidate = (base / job_id / name).resolve()
    # A symlink planted in the folder must not lead elsewhere.
    if not candidate.is_relative_to(base):
        raise ValueError(f"artifact {job_id}/{name} resolves outside {base}")
    return candidate


def existing(job_id: str, name: str) -> Path:
    """The path of an artifact that exists; ArtifactNotFound otherwise."""
    try:
        found = path(job_id, name)
    except ValueError as error:
        raise ArtifactNotFound(str(error)) from None
    if not found.is_file():
        raise ArtifactNotFound(f"job {job_id} has no artifact {name!r}")
    return found


def names(job_id: str) -> list[str]:
    """The artifacts job `job_id` produced, by name."""
    if not re.fullmatch(JOB_ID, job_id or ""):
        return []
    folder = root() / job_id
    if not folder.is_dir():
        return []
    return sorted(entry.name for entry in folder.iterdir() if entry.is_file() and re.fullmatch(NAME, entry.name))


def save(job_id: str, name: str, data: bytes) -> Path:
    """Write an artifact atomically (a reader never sees half a file); returns its path."""
    target = path(job_id, name)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=".partial-")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target


def content_type(name: str) -> str:
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


def url(job_id: str, name: str) -> str:
    """Where the web service serves it (relative to the service's base URL)."""
    return f"/jobs/{job_id}/artifact?name={name}"
