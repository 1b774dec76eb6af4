"""Outbound HTTP that a client cannot turn against the service's own network.

`http.request` and completion webhooks call URLs that clients give. Unchecked,
anyone with an `enqueue` token could make a worker reach what only it can reach:
loopback, the cloud metadata address (169.254.169.254), private ranges. So
every connection made by a `client()` is checked as it is made: the host is
resolved once, the call is refused if ANY of its addresses is not a public one,
and the socket then goes to an address that was checked, so a DNS server that
answers differently a second time (rebinding) is never asked again. A redirect
opens a connection of its own, so each hop is checked too.

Settings (environment variables, read on every call):

- `OUTBOUND_ALLOWED_HOSTS`: what may be reached although it is not public,
  comma-separated: host names (matched as the URL writes them, exactly),
  IP addresses and CIDR ranges (matched against every address a host resolves
  to). `api.internal,10.20.0.0/16`. Empty by default.
- `OUTBOUND_ALLOW_PRIVATE`: `true` turns the check off, for a network where
  everything reachable is trusted (`make run` sets it for a local run unless
  it is set). Default `false`.

Calls made this way go direct: `HTTP_PROXY`/`HTTPS_PROXY` are not used, since
behind a proxy the connection's address says nothing of where the call goes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, IPv6Network, ip_address, ip_network
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import AfterValidator, HttpUrl

from ._failures import PermanentFailure

if TYPE_CHECKING:
    import httpx

Address = IPv4Address | IPv6Address

_NAT64 = IPv6Network("64:ff9b::/96")
#: The kinds of address refused, in the order they are named (the first that fits).
_KINDS = ("unspecified", "loopback", "link_local", "multicast", "site_local", "reserved", "private")


class Refused(PermanentFailure):
    """A call to an address outbound calls may not reach; retrying cannot help."""


def kind_of(address: Address) -> str | None:
    """Why `address` is not a public one (`"loopback"`, `"private"`, ...), or None when it is."""
    embedded = _embedded_ipv4(address)
    if embedded is not None:
        return kind_of(embedded)
    for kind in _KINDS:
        if getattr(address, f"is_{kind}", False):
            return kind.replace("_", "-")
    return None if address.is_global else "non-public"


def _embedded_ipv4(address: Address) -> IPv4Address | None:
    """The IPv4 address an IPv6 one stands for (IPv4-mapped, 6to4, NAT64), which is where it leads."""
    if isinstance(address, IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64:
        return IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _host_name(host: str) -> str:
    return host.strip("[]").rstrip(".").lower()


@dataclass(frozen=True)
class Policy:
    """Which non-public hosts and addresses outbound calls may reach."""

    allow_private: bool = False
    names: frozenset[str] = frozenset()
    networks: tuple[Any, ...] = ()

    @classmethod
    def from_env(cls) -> "Policy":
        names, networks = set(), []
        for entry in os.environ.get("OUTBOUND_ALLOWED_HOSTS", "").split(","):
            entry = entry.strip()
            if not entry:
                continue
            try:
                networks.append(ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                if "/" in entry or ":" in entry:
                    raise ValueError(f"OUTBOUND_ALLOWED_HOSTS: {entry!r} is neither a host name nor an IP range") from None
                names.add(_host_name(entry))
        allow_private = os.environ.get("OUTBOUND_ALLOW_PRIVATE", "").strip().lower() in ("1", "true", "yes", "on")
        return cls(allow_private, frozenset(names), tuple(networks))

    def refusal(self, host: str, address: Address) -> str | None:
        """Why `host` may not be reached at `address`, or None when it may."""
        if self.allow_private or _host_name(host) in self.names:
            return None
        kind = kind_of(address)
        if kind is None:
            return None
        targets = [address, _embedded_ipv4(address)]
        if any(target in network for target in targets if target for network in self.networks):
            return None
        where = f"{address} is" if _host_name(host) == str(address) else f"{host} resolves to {address},"
        article = "an" if kind[0] in "aeiou" else "a"
        return (
            f"refused: {where} {article} {kind} address, and outbound calls reach public addresses only "
            f"(OUTBOUND_ALLOWED_HOSTS lists exceptions)"
        )

    def literal_refusal(self, host: str) -> str | None:
        """Why a URL's host, as written, may not be reached (an IP literal, `localhost`), or None.

        Cheap and certain, for checking a request before anything is written;
        other names are resolved, and checked, when the call is made.
        """
        name = _host_name(host)
        if self.allow_private or name in self.names:
            return None
        if name == "localhost" or name.endswith(".localhost"):
            return f"refused: {name} is this machine, and outbound calls reach public addresses only (OUTBOUND_ALLOWED_HOSTS lists exceptions)"
        try:
            address = ip_address(name)
        except ValueError:
            return None
        return self.refusal(name, address)


def _reachable(url: HttpUrl) -> HttpUrl:
    reason = Policy.from_env().literal_refusal(url.host or "")
    if reason:
        raise ValueError(reason)
    return url


#: An http(s) URL whose host, as written, is not plainly internal (checked again on connecting).
OutboundUrl = Annotated[HttpUrl, AfterValidator(_reachable)]


def client(**options: Any) -> "httpx.Client":
    """An `httpx.Client` (same options) whose every connection, redirects included, is checked."""
    # httpx and httpcore hold ~5 MB that a process which never calls out
    # (the web, an idle worker) need not carry.
    from ._outbound_connections import checked_client

    return checked_client(Policy.from_env(), **options)


def shown(url: str) -> str:
    """`url` as an error message (kept on the job, written to the logs) shows it: without
    its query string, where API keys travel, or a user and password."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2], query="…" if parts.query else "",
                                     fragment=""))
