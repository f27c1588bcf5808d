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
from tests.helpers import V2


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


# The IANA special-purpose address registries (iana-ipv4-special-registry and
# iana-ipv6-special-registry), every entry that is not globally reachable or that no
# homeserver lives in, plus multicast and the reserved remainder of the address spaces.
# Written out here independently of the guard's own tables.
RESERVED_IPV4 = [
    "0.0.0.0/8",
    "0.0.0.0/32",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.0.0.0/29",
    "192.0.0.8/32",
    "192.0.0.9/32",
    "192.0.0.10/32",
    "192.0.0.170/32",
    "192.0.0.171/32",
    "192.0.2.0/24",
    "192.31.196.0/24",
    "192.52.193.0/24",
    "192.88.99.0/24",
    "192.88.99.2/32",
    "192.168.0.0/16",
    "192.175.48.0/24",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "255.255.255.255/32",
]
RESERVED_IPV6 = [
    "::/128",
    "::1/128",
    "::/96",  # IPv4-compatible, deprecated
    "::ffff:0:0:0/96",  # IPv4-translated
    "64:ff9b:1::/48",
    "100::/64",
    "100:0:0:1::/64",
    "2001::/23",
    "2001::/32",
    "2001:1::1/128",
    "2001:1::2/128",
    "2001:1::3/128",
    "2001:2::/48",
    "2001:3::/32",
    "2001:4:112::/48",
    "2001:10::/28",
    "2001:20::/28",
    "2001:30::/28",
    "2001:db8::/32",
    "2620:4f:8000::/48",
    "3fff::/20",
    "5f00::/16",
    "fc00::/7",
    "fe80::/10",
    "fec0::/10",
    "ff00::/8",
    "4000::/3",  # outside global unicast 2000::/3: not allocated
    "::2:0:0/96",  # reserved 0000::/8, neither compatible nor mapped
]
PUBLIC_IPV4 = "193.51.24.1"


def samples(network: str) -> list[str]:
    """The first, a middle and the last address of `network`."""
    net = ipaddress.ip_network(network)
    middle = net.network_address + net.num_addresses // 2
    return sorted({str(net.network_address), str(middle), str(net.broadcast_address)})


def embeddings(ipv4: str) -> dict[str, str]:
    """Every way of writing `ipv4` inside an IPv6 address that some path reaches."""
    v4 = int(ipaddress.IPv4Address(ipv4))
    hi16, lo16 = v4 >> 16, v4 & 0xFFFF

    def v6(value: int) -> str:
        return str(ipaddress.IPv6Address(value))

    return {
        "mapped": f"::ffff:{ipv4}",
        "compatible": f"::{ipv4}",
        "translated": f"::ffff:0:{ipv4}",
        "nat64": f"64:ff9b::{ipv4}",
        "nat64-local/96": f"64:ff9b:1::{ipv4}",
        # RFC 6052 section 2.2: bits 64-71 stay zero, the IPv4 address goes round them.
        "nat64-local/48": v6(0x0064FF9B0001 << 80 | hi16 << 64 | lo16 << 40),
        "nat64-local/56": v6(0x0064FF9B0001AB << 72 | (v4 >> 24) << 64 | (v4 & 0xFFFFFF) << 32),
        "nat64-local/64": v6(0x0064FF9B0001ABCD << 64 | v4 << 24),
        "6to4": v6(0x2002 << 112 | v4 << 80 | 1),
        # The client part is the public 193.51.24.2, inverted.
        "teredo-server": v6(0x20010000 << 96 | v4 << 64 | 0x8000_63BF << 32 | 0x3ECCE7FD),
        # The Teredo client address is stored with every bit inverted (RFC 4380).
        "teredo-client": v6(0x20010000 << 96 | 0x4136E378 << 64 | (v4 ^ 0xFFFFFFFF)),
        "isatap": v6(0x2A014F8000000001 << 64 | 0x00005EFE << 32 | v4),
        "isatap-global": v6(0x2A014F8000000001 << 64 | 0x02005EFE << 32 | v4),
    }


RESERVED_ADDRESSES = [
    pytest.param(address, id=address)
    for network in RESERVED_IPV4 + RESERVED_IPV6
    for address in samples(network)
]
EMBEDDED_RESERVED = [
    pytest.param(address, id=f"{form}-{ipv4}")
    for network in RESERVED_IPV4
    for ipv4 in samples(network)
    for form, address in embeddings(ipv4).items()
]


@pytest.mark.parametrize("address", RESERVED_ADDRESSES)
def test_reserved_addresses_are_refused(address):
    assert not make_client().policy.allows(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", EMBEDDED_RESERVED)
def test_ipv6_carrying_a_reserved_ipv4_is_refused(address):
    assert not make_client().policy.allows(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "address",
    [
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254, the cloud metadata service
        "64:ff9b::a00:1",
        "64:ff9b::7f00:1",
        "2002:a9fe:a9fe::",
        "::127.0.0.1",
        "::a9fe:a9fe",
        "fe80::1%lo",  # a zone does not change the address
    ],
)
def test_addresses_from_the_report_are_refused(address):
    assert not make_client().policy.allows(ipaddress.ip_address(address))


def test_public_ipv4_is_allowed_in_the_forms_that_reach_it_publicly():
    forms = embeddings(PUBLIC_IPV4)
    allowed = {
        form
        for form, address in forms.items()
        if make_client().policy.allows(ipaddress.ip_address(address))
    }
    # IPv4-mapped is the IPv4 address itself; NAT64 is how an IPv6-only host reaches
    # IPv4 homeservers; 6to4 and ISATAP carry their address over the Internet. The
    # other forms are ranges that are not globally reachable, whatever they carry.
    assert allowed == {"mapped", "nat64", "6to4", "isatap", "isatap-global"}
    assert make_client().policy.allows(ipaddress.ip_address(PUBLIC_IPV4))
    assert make_client().policy.allows(ipaddress.ip_address("2a01:4f8:1:2::3"))


def test_embedded_ipv4_is_judged_inside_an_allowlisted_ipv6_range():
    """Opening Teredo or local-use NAT64 does not open what they carry."""
    client = make_client(allow=["2001::/32", "64:ff9b:1::/48"])
    public, loopback = embeddings(PUBLIC_IPV4), embeddings("127.0.0.1")
    for form in ("teredo-server", "teredo-client"):
        assert client.policy.allows(ipaddress.ip_address(public[form])), form
    for form in ("teredo-server", "teredo-client", *(f for f in loopback if "local" in f)):
        assert not client.policy.allows(ipaddress.ip_address(loopback[form])), form


def test_allowlisted_ipv4_is_reached_through_nat64_only_with_the_prefix_allowlisted():
    nat64_loopback = ipaddress.ip_address("64:ff9b::7f00:1")
    assert not make_client(allow=["127.0.0.1/32"]).policy.allows(nat64_loopback)
    internal = ipaddress.ip_address("64:ff9b::10.20.1.1")
    assert not make_client(allow=["10.20.0.0/16"]).policy.allows(internal)
    through_nat64 = make_client(allow=["10.20.0.0/16", "64:ff9b::/96"])
    assert through_nat64.policy.allows(internal)
    assert not through_nat64.policy.allows(ipaddress.ip_address("64:ff9b::10.0.0.1"))
    assert not through_nat64.policy.allows(nat64_loopback)


def test_blocklisted_ipv4_is_refused_in_every_spelling():
    client = make_client(block=["193.51.0.0/16"])
    for form, address in embeddings(PUBLIC_IPV4).items():
        assert not client.policy.allows(ipaddress.ip_address(address)), form


def test_allowlist_opens_loopback_for_the_fake_homeservers():
    client = make_client(allow=["127.0.0.1/32"])
    assert client.policy.allows(ipaddress.ip_address("127.0.0.1"))
    assert client.policy.allows(ipaddress.ip_address("::ffff:127.0.0.1"))
    assert not client.policy.allows(ipaddress.ip_address("127.0.0.2"))
    assert not client.policy.allows(ipaddress.ip_address("::1"))
    # The deprecated IPv4-compatible range stays closed: only the IPv4 range was opened.
    assert not client.policy.allows(ipaddress.ip_address("::127.0.0.1"))


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


# -- every spelling the resolver accepts reaches the guard before any connection -------

DANGEROUS = [
    "127.0.0.1",
    "169.254.169.254",
    "10.0.0.1",
    "::1",
    "fe80::1",
    "::ffff:127.0.0.1",
    "::127.0.0.1",
    "::a9fe:a9fe",
    "64:ff9b::7f00:1",
    "64:ff9b::a9fe:a9fe",
    "64:ff9b::a00:1",
    "2002:a9fe:a9fe::",
    "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo, client 127.0.0.1
]


def literal(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def spellings(address: str) -> dict[str, tuple[str, dict, dict, dict]]:
    """Server name, .well-known answers, SRV records and DNS answers that lead to `address`."""
    name = literal(address)
    dns = {"victim.example": [address]}
    return {
        "literal": (name, {}, {}, {}),
        "literal-with-port": (f"{name}:8448", {}, {}, {}),
        "dns-answer": ("victim.example", {}, {}, dns),
        "dns-answer-with-port": ("victim.example:8448", {}, {}, dns),
        "well-known-literal": ("a.example", {"a.example": name}, {}, {}),
        "well-known-literal-with-port": ("a.example", {"a.example": f"{name}:443"}, {}, {}),
        "well-known-name": ("a.example", {"a.example": "victim.example"}, {}, dns),
        "srv-literal-target": (
            "a.example",
            {},
            {"_matrix-fed._tcp.a.example": [(address, 8448)]},
            {},
        ),
        "srv-name-target": (
            "a.example",
            {},
            {"_matrix._tcp.a.example": [("victim.example", 8448)]},
            dns,
        ),
        "well-known-then-srv": (
            "a.example",
            {"a.example": "b.example"},
            {"_matrix-fed._tcp.b.example": [("victim.example", 8448)]},
            dns,
        ),
    }


def numeric_or_table(dns: dict[str, list[str]]):
    """A DNS that answers from `dns`, or parses a numeric host the way the system's
    resolver does (AI_NUMERICHOST: never a query on the network)."""

    def lookup(host: str, port: int) -> list[str]:
        if host in dns:
            return dns[host]
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
        return [info[4][0] for info in infos]

    return lookup


def spelled_client(well_known: dict, srv: dict, dns: dict, **policy) -> FederationClient:
    client = FederationClient(
        make_client(**policy).policy,
        lookup_srv=lambda name: srv.get(name, []),
        lookup_addresses=numeric_or_table(dns),
    )

    def fetch(host: str) -> tuple[bytes | None, int | None]:
        if host not in well_known:
            return None, None
        return json.dumps({"m.server": well_known[host]}).encode(), None

    client.resolver = Resolver(fetch, lambda name: srv.get(name, []))
    return client


@pytest.fixture
def no_connection(monkeypatch):
    """Fail a test that opens any connection at all."""
    attempts = []

    def refuse(sock, address):
        attempts.append(address)
        raise AssertionError(f"connection attempted to {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    yield attempts
    assert attempts == []


@pytest.mark.parametrize(
    ("address", "spelling"),
    [(a, s) for a in DANGEROUS for s in spellings(a)],
)
def test_every_spelling_of_a_reserved_address_is_refused_before_connecting(
    address, spelling, no_connection
):
    server_name, well_known, srv, dns = spellings(address)[spelling]
    client = spelled_client(well_known, srv, dns)
    with pytest.raises(FederationError, match="refused"):
        client.get_json(server_name, "/_matrix/key/v2/server")


@pytest.mark.parametrize(
    "server_name",
    ["2130706433", "0x7f.1", "0177.0.0.1", "127.1", "0", "2852039166:8448", "0xa9.0xfe.0xa9.0xfe"],
)
def test_numeric_spellings_the_system_resolver_accepts_are_refused(server_name, no_connection):
    with pytest.raises(FederationError, match="refused"):
        spelled_client({}, {}, {}).get_json(server_name, "/_matrix/key/v2/server")


@pytest.mark.parametrize(
    "server_name",
    ["[fe80::1%25lo]", "[fe80::1%lo]:8448", "[::1] ", "a.example\r\nX: y", "a b.example", "[]"],
)
def test_server_names_outside_the_grammar_are_rejected(server_name):
    with pytest.raises(ValueError):
        split_server_name(server_name)


def test_allowlisted_loopback_is_reached_through_delegation(fake_homeserver):
    """The allowlist still lets the fake homeservers through, however they are named."""
    client = spelled_client(
        {"hs.example": fake_homeserver.server_name}, {}, {}, allow=["127.0.0.1/32"]
    )
    answer = client.get_json("hs.example", "/_matrix/key/v2/server")
    assert answer["server_name"] == fake_homeserver.server_name


def test_registration_naming_a_nat64_loopback_never_connects(client, no_connection):
    """The reproduction: the service tried to connect to [64:ff9b::7f00:1]:8448, although
    the test configuration allowlists only 127.0.0.1."""
    for server_name in ("[64:ff9b::7f00:1]:8448", "[64:ff9b::a9fe:a9fe]", "[::127.0.0.1]"):
        r = client.post(
            f"{V2}/account/register",
            json={"access_token": "t", "matrix_server_name": server_name},
        )
        assert (r.status_code, r.json["errcode"]) == (401, "M_UNAUTHORIZED")
