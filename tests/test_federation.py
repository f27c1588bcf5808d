"""Outbound calls to homeservers: resolution, refused addresses, limits."""

import ipaddress
import json
import socket
import threading
import time

import pytest

from identity.federation.client import FederationClient
from identity.federation.client import FederationError
from identity.federation.client import Policy
from identity.federation.resolver import Resolver
from identity.federation.resolver import Target
from identity.federation.resolver import split_server_name
from tests.fake_homeserver import CA_FILE


def make_client(*, allow=(), block=(), timeout=2.0, max_bytes=1024 * 1024) -> FederationClient:
    return FederationClient(
        Policy(
            verify_tls=True,
            ca_file=CA_FILE,
            allowlist=tuple(ipaddress.ip_network(n) for n in allow),
            blocklist=tuple(ipaddress.ip_network(n) for n in block),
            timeout=timeout,
            max_response_bytes=max_bytes,
        )
    )


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "::1",
        "fc00::1",
        "fe80::1",
        "::ffff:10.0.0.1",
        "240.0.0.1",
    ],
)
def test_reserved_addresses_are_refused(address):
    assert not make_client().policy.allows(ipaddress.ip_address(address))


def test_public_addresses_are_allowed_unless_blocklisted():
    assert make_client().policy.allows(ipaddress.ip_address("193.51.24.1"))
    blocked = make_client(block=["193.51.0.0/16"])
    assert not blocked.policy.allows(ipaddress.ip_address("193.51.24.1"))


def test_allowlist_opens_an_internal_range_but_not_a_blocklisted_one():
    client = make_client(allow=["10.20.0.0/16"], block=["10.20.30.0/24"])
    assert client.policy.allows(ipaddress.ip_address("10.20.1.1"))
    assert not client.policy.allows(ipaddress.ip_address("10.20.30.1"))


def test_private_address_is_refused_before_any_connection(monkeypatch):
    connections = []
    monkeypatch.setattr(socket.socket, "connect", lambda *a: connections.append(a))
    with pytest.raises(FederationError, match="refused"):
        make_client().get_json("10.0.0.1:8448", "/_matrix/key/v2/server")
    with pytest.raises(FederationError, match="refused"):
        make_client().get_json("localhost:8448", "/_matrix/key/v2/server")
    assert connections == []


def test_call_to_allowlisted_loopback_homeserver(fake_homeserver):
    client = make_client(allow=["127.0.0.1/32"])
    answer = client.get_json(fake_homeserver.server_name, "/_matrix/key/v2/server")
    assert answer["server_name"] == fake_homeserver.server_name


def test_certificate_is_verified(fake_homeserver):
    client = make_client(allow=["127.0.0.1/32"])
    untrusting = FederationClient(Policy(True, None, client.policy.allowlist, (), 2.0, 1024 * 1024))
    with pytest.raises(FederationError):
        untrusting.get_json(fake_homeserver.server_name, "/_matrix/key/v2/server")


def test_non_2xx_and_refusal_become_federation_errors(fake_homeserver):
    client = make_client(allow=["127.0.0.1/32"])
    with pytest.raises(FederationError, match="404"):
        client.get_json(fake_homeserver.server_name, "/_matrix/nothing")
    fake_homeserver.stop()
    with pytest.raises(FederationError):
        client.get_json(fake_homeserver.server_name, "/_matrix/key/v2/server")


def test_response_size_is_capped(fake_homeserver):
    client = make_client(allow=["127.0.0.1/32"], max_bytes=100)
    with pytest.raises(FederationError, match="larger than 100 bytes"):
        client.get_json(fake_homeserver.server_name, "/_matrix/key/v2/server")


def test_slow_homeserver_times_out():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    accepted = []
    threading.Thread(target=lambda: accepted.append(listener.accept()), daemon=True).start()
    client = make_client(allow=["127.0.0.1/32"], timeout=0.3)
    started = time.monotonic()
    with pytest.raises(FederationError):
        client.get_json(f"127.0.0.1:{listener.getsockname()[1]}", "/x")
    assert time.monotonic() - started < 5
    for connection, _ in accepted:
        connection.close()
    listener.close()


# -- resolution (server-server API, "Resolving server names") ----------------------


def resolver(well_known=None, srv=None):
    def fetch(host):
        body = well_known.get(host) if well_known else None
        return (json.dumps(body).encode() if isinstance(body, dict) else body, None)

    return Resolver(fetch, lambda name: (srv or {}).get(name, []))


def test_ip_literals_and_explicit_ports_are_used_directly():
    r = resolver()
    assert r.resolve("192.0.2.7") == [Target("192.0.2.7", 8448, "192.0.2.7", "192.0.2.7")]
    assert r.resolve("[2001:db8::1]:443") == [
        Target("2001:db8::1", 443, "[2001:db8::1]:443", "2001:db8::1")
    ]
    assert r.resolve("hs.example:8443") == [
        Target("hs.example", 8443, "hs.example:8443", "hs.example")
    ]


def test_well_known_delegation_then_srv_then_default():
    r = resolver(
        well_known={"interieur.gouv.fr": {"m.server": "matrix.interieur.gouv.fr"}},
        srv={"_matrix-fed._tcp.matrix.interieur.gouv.fr": [("fed.interieur.gouv.fr", 8449)]},
    )
    assert r.resolve("interieur.gouv.fr") == [
        Target(
            "fed.interieur.gouv.fr", 8449, "matrix.interieur.gouv.fr", "matrix.interieur.gouv.fr"
        )
    ]


def test_well_known_with_port_is_used_directly():
    r = resolver(well_known={"a.example": {"m.server": "b.example:443"}})
    assert r.resolve("a.example") == [Target("b.example", 443, "b.example:443", "b.example")]


def test_srv_fallbacks_without_well_known():
    r = resolver(srv={"_matrix._tcp.old.example": [("legacy.old.example", 8000)]})
    assert r.resolve("old.example") == [
        Target("legacy.old.example", 8000, "old.example", "old.example")
    ]
    assert resolver().resolve("plain.example") == [
        Target("plain.example", 8448, "plain.example", "plain.example")
    ]


def test_invalid_well_known_is_ignored_and_cached():
    calls = []

    def fetch(host):
        calls.append(host)
        return b"not json", None

    r = Resolver(fetch, lambda name: [])
    assert r.resolve("x.example")[0].port == 8448
    r.resolve("x.example")
    assert calls == ["x.example"]


@pytest.mark.parametrize("name", ["", ":80", "host:0", "host:99999", "[::1", "host:abc"])
def test_malformed_server_names_are_rejected(name):
    with pytest.raises(ValueError):
        split_server_name(name)
