"""Structured logs: one JSON object a line, from every process.

Each line carries `time`, `level`, `process` (web, worker, scheduler), `logger`
and `message`; the service's own events add `event` (`job.finished`, ...) and,
for a job, `job_id` and `job` (its name, `demo.add`). `LOG_FORMAT=text` gives
plain lines instead, for reading in a terminal.
"""
from __future__ import annotations

import json
import logging
import sys
from datetime import date, datetime, timezone
from typing import Any

from .settings import Settings

_HANDLER_NAME = "jobservice"


def setup(process: str, settings: Settings) -> None:
    """Send every log record of this process to stderr, formatted once.

    Idempotent, and it leaves other handlers (a test runner's) alone.
    """
    root = logging.getLogger()
    if not any(handler.get_name() == _HANDLER_NAME for handler in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.set_name(_HANDLER_NAME)
        if settings.log_format == "text":
            handler.setFormatter(logging.Formatter(f"%(asctime)s {process} %(levelname)s %(name)s %(message)s"))
        else:
            handler.setFormatter(json_formatter(process))
        root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    # No line carries the caller's file and line, thread or process id, and
    # each costs every record a look (a walk up the stack, a getpid system call).
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging._srcfile = None
    # RQ's own lines repeat the events below without ids; keep its warnings.
    for name in ("rq.worker", "rq.job", "rq.queue", "rq.scheduler"):
        logging.getLogger(name).setLevel(logging.WARNING)
    worker_log = logging.getLogger("rq.worker")
    if _drop_job_arguments not in worker_log.filters:
        worker_log.addFilter(_drop_job_arguments)
    # httpx writes each request's whole URL at INFO, query string (an API key) and all.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def _drop_job_arguments(record: logging.LogRecord) -> bool:
    """RQ's line for a job that raised carries the job's arguments as extras: an
    email's recipients, an HTTP call's Authorization header. Logs reach more
    people than the job's record does, so they go; the traceback stays."""
    record.__dict__.pop("arguments", None)
    record.__dict__.pop("kwargs", None)
    return True


def json_formatter(process: str) -> logging.Formatter:
    """The JSON formatter of every log line; `process` is web, worker or scheduler."""
    return JsonFormatter(process)


#: The one attribute an `event` puts its members under, so that formatting a
#: line need not pick them out of the record's own attributes.
_FIELDS = "jobservice_fields"
#: What every LogRecord carries; anything else on a record came as `extra`.
_RECORD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object a record: level, logger, message, process, the record's
    extra fields, then exc_info and time. Written out here because it runs for
    every request and every job: a general-purpose JSON formatter costs about
    three times as much per line."""

    def __init__(self, process: str):
        super().__init__()
        self._process = process

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": self._process,
        }
        fields = record.__dict__.get(_FIELDS)
        if fields is not None:  # an `event`: its members, already gathered
            line.update(fields)
        else:  # any other record: what it was given as `extra`
            for key, value in record.__dict__.items():
                if key not in _RECORD_ATTRIBUTES:
                    line[key] = value
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack_info"] = self.formatStack(record.stack_info)
        line["time"] = datetime.fromtimestamp(record.created, timezone.utc).isoformat()
        return _ENCODER.encode(line)


def _plain(value: Any) -> str:
    """Values JSON has no type for: times in ISO 8601, anything else as text."""
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    return str(value)


#: One encoder for every line: `json.dumps` with `default` builds a new one per call.
_ENCODER = json.JSONEncoder(default=_plain)


def event(logger: logging.Logger, name: str, *, level: int = logging.INFO, exc_info=None, **fields: Any) -> None:
    """Log the event `name` (`job.finished`) with `fields` as JSON members."""
    message = name
    if fields.get("job_id"):  # not for job_id=None, an event that concerns no job this time
        message = f"{name} {fields.get('job') or ''} {fields['job_id']}".replace("  ", " ")
    logger.log(level, message, extra={_FIELDS: {"event": name, **fields}}, exc_info=exc_info)


def job_fields(job) -> dict[str, Any]:
    """`job_id`, `job` (the allow-listed name) and `queue` of an RQ job."""
    return {"job_id": job.id, "job": job_name(job), "queue": job.origin}


def job_name(job) -> str:
    """The allow-listed name of `job` (`demo.add`); `unknown` for a record outside it."""
    from .queues import job_registry

    try:
        spec = job_registry().by_path(job.func_name)
    except Exception:  # a record that does not deserialize
        return "unknown"
    return spec.name if spec else "unknown"
