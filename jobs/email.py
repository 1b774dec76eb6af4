"""Email: send a message through SMTP without making anyone wait.

Settings (environment variables):

- `SMTP_URL`: `smtp://user:pass@host:587` (STARTTLS; required when a user is
  given, so a password never crosses the network in clear) or
  `smtps://user:pass@host:465` (TLS from the first byte). User and password are
  percent-encoded. Unset: messages are written to `EMAIL_OUTBOX_DIR` instead.
- `SMTP_CA_FILE`: a CA bundle to trust instead of the system's (a relay with a
  private certificate). `SMTP_TIMEOUT`: seconds per network operation (30).
- `EMAIL_FROM`: the From address (`RQ Job Service <jobs@localhost>`).
- `EMAIL_OUTBOX_DIR`: where messages go without `SMTP_URL` (`var/outbox`).
- `EMAIL_MAX_ATTACHMENT_BYTES`: largest total of attachments (10 MiB).
"""
from __future__ import annotations

import logging
import os
import smtplib
import ssl
import time
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import unquote, urlsplit

from pydantic import EmailStr, Field, StringConstraints
from rq import get_current_job

from jobs import _artifacts, defaults
from jobs._failures import PermanentFailure, TransientFailure, classified

log = logging.getLogger(__name__)

Recipients = Annotated[list[EmailStr], Field(max_length=100)]
# A header is one line, and Python's email package ends a line wherever
# `str.splitlines` does: \v, \f, \x1c-\x1e, NEL, U+2028 and U+2029 as well as \r and \n.
Subject = Annotated[str, StringConstraints(max_length=500, pattern=r"^[^\r\n\v\f\x1c-\x1e\x85\u2028\u2029]*$")]


@defaults(
    retry={"max": 8, "backoff": {"base": 30, "factor": 2, "cap": 3600, "jitter": True}},
    timeout=300,
)
def send(
    to: Annotated[list[EmailStr], Field(min_length=1, max_length=100)],
    subject: Subject,
    text: str,
    html: str | None = None,
    cc: Recipients | None = None,
    bcc: Recipients | None = None,
    reply_to: EmailStr | None = None,
    attachments: Annotated[list[_artifacts.ArtifactRef], Field(max_length=20)] | None = None,
) -> dict[str, Any]:
    """Send an email: plain `text`, optionally `html` too, to `to` (and `cc`, `bcc`).

    `attachments` are files other jobs produced, named by job id and file name
    (`{"job": "<id>", "name": "report.csv"}`). Connection failures, timeouts and
    4xx replies are retried with backoff; 5xx replies (a refused address, bad
    credentials) fail at once. Without `SMTP_URL`, the message is written to the
    outbox folder instead. Returns the Message-ID and who the server accepted.
    """
    with classified():
        message = _message(to, subject, text, html, cc or [], reply_to, attachments or [])
        recipients = list(dict.fromkeys([*to, *(cc or []), *(bcc or [])]))
        smtp_url = os.environ.get("SMTP_URL", "").strip()
        if not smtp_url:
            written = _write_to_outbox(message)
            log.warning("SMTP_URL is not set: wrote %s to %s instead of sending it", message["Message-ID"], written)
            return {"message_id": message["Message-ID"], "outbox": str(written), "recipients": recipients}
        server = _Server.parse(smtp_url)
        refused = server.send(message, recipients)
        if refused:
            log.warning("sent %s, but %d recipient(s) were refused: %s", message["Message-ID"], len(refused), refused)
        return {
            "message_id": message["Message-ID"],
            "via": server.display,
            "accepted": [r for r in recipients if r not in refused],
            "refused": refused,
        }


def _message(
    to: list[str],
    subject: str,
    text: str,
    html: str | None,
    cc: list[str],
    reply_to: str | None,
    attachments: list[_artifacts.ArtifactRef],
) -> EmailMessage:
    sender = os.environ.get("EMAIL_FROM") or "RQ Job Service <jobs@localhost>"
    message = EmailMessage()
    message["From"] = sender
    message["To"] = ", ".join(to)
    if cc:
        message["Cc"] = ", ".join(cc)
    if reply_to:
        message["Reply-To"] = reply_to
    message["Subject"] = subject
    message["Date"] = formatdate(localtime=False, usegmt=True)
    message["Message-ID"] = _message_id(sender)
    message.set_content(text)
    if html is not None:
        message.add_alternative(html, subtype="html")
    budget = int(os.environ.get("EMAIL_MAX_ATTACHMENT_BYTES") or 10 * 1024 * 1024)
    for ref in attachments:
        try:
            source = _artifacts.existing(ref["job"], ref["name"])
        except _artifacts.ArtifactNotFound as error:
            raise PermanentFailure(f"cannot attach {ref['name']!r} of job {ref['job']}: {error}") from None
        data = source.read_bytes()
        budget -= len(data)
        if budget < 0:
            raise PermanentFailure("the attachments are larger than EMAIL_MAX_ATTACHMENT_BYTES allows")
        maintype, _, subtype = _artifacts.content_type(source.name).partition("/")
        message.add_attachment(data, maintype=maintype, subtype=subtype, filename=source.name)
    return message


def _message_id(sender: str) -> str:
    # Every attempt of one job sends the same Message-ID, so a message that did
    # get through before a retry can be recognised as a duplicate.
    domain = parseaddr(sender)[1].rpartition("@")[2] or "localhost"
    job = get_current_job()
    return f"<{job.id}@{domain}>" if job is not None else make_msgid(domain=domain)


def _write_to_outbox(message: EmailMessage) -> Path:
    outbox = Path(os.environ.get("EMAIL_OUTBOX_DIR") or "var/outbox")
    outbox.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    local = message["Message-ID"].strip("<>").partition("@")[0]
    target = outbox / f"{stamp}-{local}.eml"
    target.write_bytes(bytes(message))
    return target


@dataclass(frozen=True)
class _Server:
    """An SMTP server as `SMTP_URL` names it."""

    implicit_tls: bool
    host: str
    port: int
    user: str | None
    password: str | None

    @classmethod
    def parse(cls, url: str) -> "_Server":
        parts = urlsplit(url)
        if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
            raise PermanentFailure("SMTP_URL must look like smtp://user:pass@host:587 or smtps://user:pass@host:465")
        implicit = parts.scheme == "smtps"
        return cls(
            implicit_tls=implicit,
            host=parts.hostname,
            port=parts.port or (465 if implicit else 587),
            user=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
        )

    @property
    def display(self) -> str:
        """The server without its credentials, for results and errors."""
        return f"{'smtps' if self.implicit_tls else 'smtp'}://{self.host}:{self.port}"

    def _tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=os.environ.get("SMTP_CA_FILE") or None)

    def send(self, message: EmailMessage, recipients: list[str]) -> dict[str, str]:
        """Send; returns the refused recipients (when others were accepted). Raises a classified failure."""
        timeout = float(os.environ.get("SMTP_TIMEOUT") or 30)
        try:
            if self.implicit_tls:
                smtp: smtplib.SMTP = smtplib.SMTP_SSL(self.host, self.port, timeout=timeout, context=self._tls())
            else:
                smtp = smtplib.SMTP(self.host, self.port, timeout=timeout)
            with smtp:
                smtp.ehlo()
                if not self.implicit_tls:
                    if smtp.has_extn("starttls"):
                        smtp.starttls(context=self._tls())
                        smtp.ehlo()
                    elif self.user:
                        raise PermanentFailure(
                            f"{self.display} does not offer STARTTLS; not sending the password in clear"
                        )
                if self.user:
                    smtp.login(self.user, self.password or "")
                refused = smtp.send_message(message, to_addrs=recipients)
        except (PermanentFailure, TransientFailure):
            raise
        except Exception as error:
            raise _classify(error, self.display) from error
        return {address: _reply(code, text) for address, (code, text) in refused.items()}


def _reply(code: int, text: bytes | str) -> str:
    return f"{code} {text.decode(errors='replace') if isinstance(text, bytes) else text}".strip()


def _classify(error: Exception, server: str) -> Exception:
    """Whether trying again later can help: 4xx replies and network trouble yes, 5xx no."""
    if isinstance(error, smtplib.SMTPRecipientsRefused):
        replies = "; ".join(f"{address}: {_reply(code, text)}" for address, (code, text) in error.recipients.items())
        transient = any(400 <= code < 500 for code, _ in error.recipients.values())
        kind = TransientFailure if transient else PermanentFailure
        return kind(f"{server} refused every recipient: {replies}")
    if isinstance(error, smtplib.SMTPResponseException) and error.smtp_code >= 400:
        kind = TransientFailure if error.smtp_code < 500 else PermanentFailure
        return kind(f"{server} answered {_reply(error.smtp_code, error.smtp_error)}")
    if isinstance(error, ssl.SSLCertVerificationError):
        return PermanentFailure(f"{server}: TLS certificate not trusted ({error.verify_message}); see SMTP_CA_FILE")
    if isinstance(error, smtplib.SMTPNotSupportedError):
        return PermanentFailure(f"{server}: {error}")
    # Refused or dropped connections, timeouts, DNS trouble, an unexpected disconnect.
    return TransientFailure(f"{server}: {type(error).__name__}: {error}")
