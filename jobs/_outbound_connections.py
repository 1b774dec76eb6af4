"""The connections of `jobs._outbound.client()`: httpcore's sockets, opened only to
addresses the policy lets through, to the very address that was checked."""
from __future__ import annotations

import socket
from ipaddress import ip_address
from typing import Any, Iterable

import httpcore
import httpx

from ._outbound import Address, Policy, Refused


class _CheckedBackend(httpcore.NetworkBackend):
    """httpcore's own sockets, opened only to addresses the policy lets through."""

    def __init__(self, policy: Policy) -> None:
        self._policy = policy
        self._backend = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        addresses = _resolve(host, port)
        for address in addresses:
            reason = self._policy.refusal(host, address)
            if reason:
                raise Refused(reason)
        failure: Exception | None = None
        for address in addresses:  # in resolver order, as socket.create_connection tries them
            try:
                return self._backend.connect_tcp(str(address), port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as error:
                failure = error
        assert failure is not None
        raise failure

    def connect_unix_socket(self, path, timeout=None, socket_options=None):  # pragma: no cover
        raise Refused("refused: outbound calls do not use Unix sockets")

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


def _resolve(host: str, port: int) -> list[Address]:
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
        raise httpcore.ConnectError(f"cannot resolve {host}: {error}") from error
    return list(dict.fromkeys(ip_address(info[4][0]) for info in found))


def checked_client(policy: Policy, **options: Any) -> httpx.Client:
    """An `httpx.Client` (same options) whose every connection, redirects included, `policy` checks."""
    transport = httpx.HTTPTransport()
    # httpx takes no network backend of its own; the httpcore pool under its transport does.
    transport._pool = httpcore.ConnectionPool(
        ssl_context=httpx.create_ssl_context(), network_backend=_CheckedBackend(policy)
    )
    return httpx.Client(transport=transport, **options)
