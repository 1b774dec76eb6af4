"""What a JSON request body must be, checked once before any view reads it.

JSON as RFC 8259 has it: UTF-8 text, numbers that are numbers. Python's parser
is laxer on three counts, each of which would store something other than what
the client meant, or something Redis and the answers cannot carry:
- `NaN`, `Infinity` and numbers past a double's range (`1e999`) parse to floats
  that every later JSON encoder writes as `null` or refuses;
- UTF-16 and UTF-32 bodies are read as well, past the checks below, which look
  at bytes;
- half of a UTF-16 surrogate pair (`"\\ud800"`, or its three UTF-8 bytes) parses
  to a string that is not text.
"""
from __future__ import annotations

import json
import math
from typing import Any

from flask import Flask, request
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import BadRequest, RequestEntityTooLarge

from .problems import problem


class NotANumber(ValueError):
    """A number JSON does not have."""


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise NotANumber(f"{text} is beyond a 64-bit float's range")
    return value


def _constant(name: str) -> Any:
    raise NotANumber(f"{name} is not a number in JSON")


#: One decoder for every body (`json.loads` with hooks builds a new one per call).
#: The hooks run only for the literals they are about: a body without floats
#: parses as fast as ever.
_DECODER = json.JSONDecoder(parse_float=_finite, parse_constant=_constant)


class StrictJSONProvider(DefaultJSONProvider):
    """Flask's JSON, reading only the numbers JSON has."""

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        if kwargs:
            return super().loads(s, **kwargs)
        if isinstance(s, (bytes, bytearray)):  # as json.loads reads bytes
            s = s.decode(json.detect_encoding(s), "surrogatepass")
        return _DECODER.decode(s)


def install(app: Flask, *, blueprints: set[str], body_required: set[str]) -> None:
    """Check the JSON body of every write to `blueprints`; `body_required` are
    the endpoints that must have one."""
    app.json = StrictJSONProvider(app)

    @app.before_request
    def require_json_body():
        req = request._get_current_object()  # one look through Flask's proxy
        if req.blueprint not in blueprints or req.method not in ("POST", "PUT", "PATCH"):
            return
        # A chunked body has no Content-Length; gunicorn hands it over whole,
        # and MAX_CONTENT_LENGTH still bounds it (`wsgi.input_terminated`).
        chunked = "chunked" in req.headers.get("Transfer-Encoding", "").lower()
        data = b""
        if req.content_length or chunked:
            if not req.is_json:
                raise problem(415, "Send the body as JSON (Content-Type: application/json).")
            data = req.get_data(cache=True)
            limit = req.max_content_length
            if chunked and limit is not None and len(data) >= limit and req.environ["wsgi.input"].read(1):
                # werkzeug stops reading a streamed body at the limit, silently: was there more?
                raise RequestEntityTooLarge()
        if not data:
            if req.endpoint in body_required:
                raise problem(400, "Send the request as a JSON body.")
            return
        if b"\x00" in data:  # UTF-16 or UTF-32: JSON text in UTF-8 never holds a NUL byte
            raise problem(400, "Send the JSON body as UTF-8.")
        try:
            body = req.get_json()
        except BadRequest as error:
            reason = _not_a_number(error)
            if reason:
                raise problem(400, f"The request body is not valid JSON: {reason}.") from None
            raise problem(400, "The request body is not valid JSON.") from None
        except RecursionError:
            raise problem(422, "The request body nests too deeply.") from None
        # Only a `\u` escape or a byte past ASCII can spell a surrogate, so most
        # bodies are not walked.
        if (b"\\u" in data or not data.isascii()) and _has_lone_surrogate(body):
            raise problem(400, "The request body has an unpaired surrogate (\\ud800-\\udfff): not text.")


def _not_a_number(error: BaseException | None) -> str | None:
    """The NotANumber behind `error`, which werkzeug and Flask each wrap in a BadRequest."""
    while error is not None:
        if isinstance(error, NotANumber):
            return str(error)
        error = error.__cause__ or error.__context__
    return None


def _has_lone_surrogate(body: Any) -> bool:
    try:
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False
