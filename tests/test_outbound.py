"""Outbound calls (http.request, webhooks) refuse hosts that are not public: at enqueue
when the URL says so plainly, else when the call connects, redirects included.

The test servers listen on 127.0.0.1, which the tests' environment allows
(OUTBOUND_ALLOWED_HOSTS, see conftest); a test that needs it refused takes the
allowance away. Names resolve through `dns`, which answers for made-up names as
a DNS server would and leaves every other lookup to the system.
"""
from __future__ import annotations

import socket
from ipaddress import ip_address

import pytest

from jobs import http
from jobs._failures import PermanentFailure
from jobs._outbound import kind_of
from tests.conftest import stored_keys
from tests.servers import Answer

SECRET = "a-secret-of-sixteen-or-more"


class FakeDns:
    def __init__(self) -> None:
        #: name -> the answers to its lookups, one a lookup; the last one repeats.
        self.answers: dict[str, list[list[str]]] = {}
        self.lookups: dict[str, int] = {}

    def __setitem__(self, name: str, addresses: list[str]) -> None:
        self.answers[name] = [addresses]


@pytest.fixture
def dns(monkeypatch):
    fake = FakeDns()
    system = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if host not in fake.answers:
            return system(host, port, *args, **kwargs)
        fake.lookups[host] = fake.lookups.get(host, 0) + 1
        answers = fake.answers[host]
        addresses = answers.pop(0) if len(answers) > 1 else answers[0]
        return [
            (socket.AF_INET6, socket.SOCK_STREAM, 6, "", (a, port, 0, 0)) if ":" in a
            else (socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
            for a in addresses
        ]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return fake


@pytest.fixture
def nothing_allowed(monkeypatch):
    """The production default: no exceptions, so loopback (the test servers) is refused too."""
    monkeypatch.delenv("OUTBOUND_ALLOWED_HOSTS")


def port_of(server) -> int:
    return int(server.base.rsplit(":", 1)[1])


def post(client, body):
    response = client.post("/jobs", json=body)
    assert response.status_code == 202, response.json
    return response.json["id"]


@pytest.mark.parametrize(
    "address, kind",
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("169.254.169.254", "link-local"),  # cloud metadata
        ("fe80::1", "link-local"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("fd00::1", "private"),
        ("100.64.0.1", "non-public"),  # carrier-grade NAT
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("fec0::1", "site-local"),
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped
        ("::ffff:169.254.169.254", "link-local"),
        ("2002:7f00:1::", "loopback"),  # 6to4 of 127.0.0.1
        ("2002:a9fe:a9fe::", "link-local"),  # 6to4 of 169.254.169.254
        ("64:ff9b::a00:1", "private"),  # NAT64 of 10.0.0.1
        ("93.184.215.14", None),
        ("2606:4700:4700::1111", None),
        ("::ffff:8.8.8.8", None),
    ],
)
def test_what_counts_as_not_public(address, kind):
    assert kind_of(ip_address(address)) == kind


@pytest.mark.parametrize(
    "url, says",
    [
        ("http://127.0.0.1/admin", "127.0.0.1 is a loopback address"),
        ("http://localhost:6379/", "localhost is this machine"),
        ("http://redis.localhost/", "redis.localhost is this machine"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a link-local address"),
        ("http://10.0.0.5:8080/", "10.0.0.5 is a private address"),
        ("http://[::1]/", "::1 is a loopback address"),
        ("http://[::ffff:a9fe:a9fe]/", "a link-local address"),
        ("http://0.0.0.0:5000/", "0.0.0.0 is an unspecified address"),
        ("http://2130706433/", "127.0.0.1 is a loopback address"),  # 127.0.0.1, written as a number
        ("http://0x7f.1/", "127.0.0.1 is a loopback address"),
    ],
)
def test_enqueue_refuses_a_url_that_names_an_internal_host_and_writes_nothing(client, connection, nothing_allowed, url, says):
    for body in (
        {"job": "http.request", "args": [url]},
        {"job": "demo.add", "args": [1, 2], "webhook": {"url": url, "secret": SECRET}},
    ):
        response = client.post("/jobs", json=body)
        assert response.status_code == 422, response.json
        assert response.mimetype == "application/problem+json"
        assert says in response.json["detail"]
        assert "OUTBOUND_ALLOWED_HOSTS" in response.json["detail"]
        assert stored_keys(connection) == []


def test_enqueue_accepts_an_internal_host_that_is_allowed(client, monkeypatch):
    monkeypatch.setenv("OUTBOUND_ALLOWED_HOSTS", "localhost, 10.0.0.0/8")
    post(client, {"job": "http.request", "args": ["http://localhost:8080/"]})
    post(client, {"job": "demo.add", "args": [1, 2], "webhook": {"url": "http://10.1.2.3/hook", "secret": SECRET}})


def test_a_name_that_resolves_to_loopback_fails_the_job_at_once(client, work, http_server, dns, nothing_allowed):
    dns["api.internal.test"] = ["127.0.0.1"]
    http_server.answer("/orders", Answer(200, {"secret": True}))
    url = f"http://api.internal.test:{port_of(http_server)}/orders"
    job_id = post(client, {"job": "http.request", "args": [url], "retry": {"max": 3, "backoff": [0]}})
    work()
    job = client.get(f"/jobs/{job_id}").json
    assert job["status"] == "failed"
    assert job["retries_left"] == 0
    assert [attempt["outcome"] for attempt in job["history"]] == ["failed"]
    assert job["error"]["type"].endswith("PermanentFailure")
    assert job["error"]["message"] == (
        f"GET {url}: refused: api.internal.test resolves to 127.0.0.1, a loopback address, "
        "and outbound calls reach public addresses only (OUTBOUND_ALLOWED_HOSTS lists exceptions)"
    )
    assert http_server.seen == []


def test_the_metadata_address_is_refused_without_connecting(nothing_allowed):
    with pytest.raises(PermanentFailure, match="169.254.169.254 is a link-local address"):
        http.request("http://169.254.169.254/latest/meta-data/", timeout=0.5)


def test_a_name_is_refused_if_any_of_its_addresses_is_internal(http_server, dns, nothing_allowed):
    dns["mixed.test"] = ["93.184.215.14", "10.0.0.7"]
    with pytest.raises(PermanentFailure, match="mixed.test resolves to 10.0.0.7, a private address"):
        http.request(f"http://mixed.test:{port_of(http_server)}/")
    assert http_server.seen == []


def test_the_connection_goes_to_the_address_that_was_checked(http_server, dns):
    # A rebinding DNS server: public-looking first, the metadata address after.
    # (127.0.0.1 stands for the public address: it is what these tests allow.)
    dns.answers["rebind.test"] = [["127.0.0.1"], ["169.254.169.254"]]
    http_server.answer("/", Answer(200, "hello"))
    result = http.request(f"http://rebind.test:{port_of(http_server)}/")
    assert result["body"] == "hello"
    assert dns.lookups["rebind.test"] == 1
    assert len(http_server.requests("/")) == 1


def test_a_redirect_to_an_internal_address_is_refused(client, work, http_server, dns, monkeypatch):
    monkeypatch.setenv("OUTBOUND_ALLOWED_HOSTS", "api.partner.test")  # the first hop only
    dns["api.partner.test"] = ["127.0.0.1"]
    port = port_of(http_server)
    http_server.answer("/start", Answer(302, "", {"Location": f"http://127.0.0.1:{port}/internal"}))
    http_server.answer("/internal", Answer(200, "internal data"))
    url = f"http://api.partner.test:{port}/start"
    job_id = post(client, {"job": "http.request", "kwargs": {"url": url, "follow_redirects": True}})
    work()
    job = client.get(f"/jobs/{job_id}").json
    assert job["status"] == "failed"
    assert [attempt["outcome"] for attempt in job["history"]] == ["failed"]
    assert f"GET {url}: refused: 127.0.0.1 is a loopback address" in job["error"]["message"]
    assert len(http_server.requests("/start")) == 1
    assert http_server.requests("/internal") == []


@pytest.mark.parametrize(
    "allowance",
    [
        {"OUTBOUND_ALLOWED_HOSTS": "api.internal.test"},
        {"OUTBOUND_ALLOWED_HOSTS": "127.0.0.0/8"},
        {"OUTBOUND_ALLOWED_HOSTS": "", "OUTBOUND_ALLOW_PRIVATE": "true"},
    ],
)
def test_an_allowed_internal_host_is_called(client, work, http_server, dns, monkeypatch, allowance):
    for name, value in allowance.items():
        monkeypatch.setenv(name, value)
    dns["api.internal.test"] = ["127.0.0.1"]
    http_server.answer("/status", Answer(200, {"ok": True}))
    job_id = post(client, {"job": "http.request", "args": [f"http://api.internal.test:{port_of(http_server)}/status"]})
    work()
    job = client.get(f"/jobs/{job_id}").json
    assert job["status"] == "finished", job["error"]
    assert job["result"]["json"] == {"ok": True}


def test_a_webhook_to_an_internal_address_is_not_delivered(client, work, http_server, dns, nothing_allowed):
    dns["hooks.internal.test"] = ["10.0.0.9", "127.0.0.1"]
    url = f"http://hooks.internal.test:{port_of(http_server)}/hook"
    job_id = post(client, {"job": "demo.add", "args": [1, 2], "webhook": {"url": url, "secret": SECRET}})
    work()
    assert client.get(f"/jobs/{job_id}").json["status"] == "finished"  # the job's own outcome stands
    [delivery] = [job for job in client.get("/jobs?limit=10").json["jobs"] if job["id"].startswith("webhook-")]
    delivery = client.get(f"/jobs/{delivery['id']}").json
    assert delivery["status"] == "failed"
    assert [attempt["outcome"] for attempt in delivery["history"]] == ["failed"]  # not retried
    assert delivery["error"]["message"].startswith(
        f"POST {url}: refused: hooks.internal.test resolves to 10.0.0.9, a private address"
    )
    assert http_server.seen == []


def test_a_malformed_allowance_is_named(monkeypatch):
    monkeypatch.setenv("OUTBOUND_ALLOWED_HOSTS", "10.0.0.0/33")
    with pytest.raises(ValueError, match="OUTBOUND_ALLOWED_HOSTS: '10.0.0.0/33'"):
        http.request("http://example.com/")
