"""Real servers on loopback for the jobs to talk to: SMTP (aiosmtpd) and HTTP (http.server).

Each records what it received, and can be told how to answer: an SMTP reply
code for a recipient or for the next messages, an HTTP status, headers, body
and delay for a path.
"""
from __future__ import annotations

import contextlib
import email
import email.policy
import json
import ssl
import threading
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from service.embedded_redis import free_port

# --- SMTP -------------------------------------------------------------------


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    tls: bool
    user: str | None


class Mailbox:
    """An aiosmtpd handler that keeps every message, or answers as scripted."""

    def __init__(self) -> None:
        self.messages: list[Received] = []
        #: Reply to RCPT TO for these addresses instead of accepting them.
        self.refuse: dict[str, str] = {}
        #: Replies to the next DATA commands, one each, before messages are accepted again.
        self.data_replies: list[str] = []
        self.data_commands = 0

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.data_commands += 1
        if self.data_replies:
            return self.data_replies.pop(0)
        user = session.auth_data.login.decode() if isinstance(session.auth_data, LoginPassword) else None
        self.messages.append(
            Received(
                mail_from=envelope.mail_from,
                rcpt_tos=list(envelope.rcpt_tos),
                message=email.message_from_bytes(envelope.original_content, policy=email.policy.default),
                tls=server.transport.get_extra_info("ssl_object") is not None,
                user=user,
            )
        )
        return "250 Message accepted for delivery"


@dataclass
class SmtpServer:
    host: str
    port: int
    mailbox: Mailbox
    #: A CA file that trusts the server's certificate (TLS variants).
    ca_file: str | None = None

    def url(self, scheme: str = "smtp", user: str | None = None, password: str | None = None) -> str:
        credentials = f"{user}:{password}@" if user else ""
        return f"{scheme}://{credentials}{self.host}:{self.port}"


def certificate_authority(tmp_path: Path) -> tuple[trustme.CA, str]:
    """A throwaway CA and a PEM file that trusts it."""
    ca = trustme.CA()
    ca_file = tmp_path / "test-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return ca, str(ca_file)


def _server_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


@contextlib.contextmanager
def smtp_server(
    tmp_path: Path | None = None,
    *,
    mode: str = "plain",
    users: dict[str, str] | None = None,
    port: int | None = None,
    mailbox: Mailbox | None = None,
) -> Iterator[SmtpServer]:
    """An SMTP server on 127.0.0.1: `plain`, `starttls` (required) or `smtps` (TLS from the start).

    With `users`, AUTH is required (and, over STARTTLS, only after it).
    """
    mailbox = mailbox or Mailbox()
    options: dict[str, Any] = {}
    ca_file = None
    if mode != "plain":
        assert tmp_path is not None, "a TLS server needs a folder for its CA file"
        ca, ca_file = certificate_authority(tmp_path)
        context = _server_context(ca)
        if mode == "starttls":
            options.update(tls_context=context, require_starttls=True)
        else:
            options.update(ssl_context=context)
    if users:

        def authenticator(server, session, envelope, mechanism, auth_data):
            ok = isinstance(auth_data, LoginPassword) and users.get(auth_data.login.decode()) == auth_data.password.decode()
            return AuthResult(success=ok, auth_data=auth_data)

        # aiosmtpd counts only STARTTLS as TLS for AUTH; over smtps every byte is encrypted anyway.
        options.update(authenticator=authenticator, auth_required=True, auth_require_tls=mode == "starttls")
    controller = Controller(mailbox, hostname="127.0.0.1", port=port or free_port(), **options)
    controller.start()
    try:
        yield SmtpServer(controller.hostname, controller.port, mailbox, ca_file)
    finally:
        controller.stop()


# --- HTTP -------------------------------------------------------------------


@dataclass
class Answer:
    status: int = 200
    body: bytes | str | dict | list = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        return json.loads(self.body)


class HttpServer:
    """A threaded HTTP server on 127.0.0.1 that answers each path as scripted.

    `answer(path, a, b, c)` answers the first request with a, the second with b,
    and every later one with c. It counts requests in flight at once, per path.
    """

    def __init__(self) -> None:
        self._answers: dict[str, list[Answer]] = {}
        self._lock = threading.Lock()
        self.seen: list[Seen] = []
        self.in_flight: dict[str, int] = {}
        self.most_in_flight: dict[str, int] = {}
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                path = self.path.split("?", 1)[0]
                answer = recorder._begin(Seen(self.command, self.path, dict(self.headers), body, time.monotonic()), path)
                try:
                    if answer.delay:
                        time.sleep(answer.delay)  # a slow API, on purpose
                    payload = answer.body
                    headers = dict(answer.headers)
                    if isinstance(payload, (dict, list)):
                        payload = json.dumps(payload).encode()
                        headers.setdefault("Content-Type", "application/json")
                    elif isinstance(payload, str):
                        payload = payload.encode()
                        headers.setdefault("Content-Type", "text/plain; charset=utf-8")
                    self.send_response(answer.status)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                finally:
                    recorder._end(path)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _handle

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address) -> None:
                pass  # a client that hangs up early (a bounded read, a timeout) is expected here

        self._server = Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def base(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, path: str) -> str:
        return self.base + path

    def answer(self, path: str, *answers: Answer) -> None:
        with self._lock:
            self._answers[path] = list(answers)

    def requests(self, path: str) -> list[Seen]:
        with self._lock:
            return [seen for seen in self.seen if seen.path.split("?", 1)[0] == path]

    def _begin(self, seen: Seen, path: str) -> Answer:
        with self._lock:
            self.seen.append(seen)
            self.in_flight[path] = self.in_flight.get(path, 0) + 1
            self.most_in_flight[path] = max(self.most_in_flight.get(path, 0), self.in_flight[path])
            answers = self._answers.get(path) or [Answer(404, "no such path")]
            return answers.pop(0) if len(answers) > 1 else answers[0]

    def _end(self, path: str) -> None:
        with self._lock:
            self.in_flight[path] -= 1

    def __enter__(self) -> "HttpServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
