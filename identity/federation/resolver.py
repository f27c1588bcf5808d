"""Where to reach a homeserver: server-name resolution of the server-server API.

Order (server-server API, "Resolving server names"): an IP literal or an explicit port
is used directly; otherwise /.well-known/matrix/server (cached), then the SRV records
`_matrix-fed._tcp` and `_matrix._tcp`, then port 8448.
"""

import ipaddress
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import dns.exception
import dns.resolver

from identity.matrix_ids import split_server_name

logger = logging.getLogger(__name__)

DEFAULT_PORT = 8448
WELL_KNOWN_TTL = 24 * 3600
WELL_KNOWN_MAX_TTL = 48 * 3600
WELL_KNOWN_ERROR_TTL = 3600


@dataclass(frozen=True)
class Target:
    """One place to connect to: `host` is resolved to addresses by the client."""

    host: str
    port: int
    # The Host header and the name the TLS certificate must carry.
    host_header: str
    tls_name: str


# Fetches https://<host>/.well-known/matrix/server: host → (body or None, max-age or None).
WellKnownFetcher = Callable[[str], tuple[bytes | None, int | None]]
# Looks up SRV records: name → [(target host, port)], ordered by priority/weight.
SrvLookup = Callable[[str], list[tuple[str, int]]]


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def srv_lookup(name: str) -> list[tuple[str, int]]:
    try:
        answer = dns.resolver.resolve(name, "SRV", lifetime=5)
    except (dns.exception.DNSException, OSError):
        return []
    records = sorted(answer, key=lambda r: (r.priority, -r.weight))
    return [(str(r.target).rstrip("."), int(r.port)) for r in records if str(r.target) != "."]


class Resolver:
    def __init__(self, fetch_well_known: WellKnownFetcher, lookup_srv: SrvLookup = srv_lookup):
        self._fetch_well_known = fetch_well_known
        self._lookup_srv = lookup_srv
        self._cache: dict[str, tuple[float, str | None]] = {}
        self._lock = threading.Lock()

    def resolve(self, server_name: str) -> list[Target]:
        host, port = split_server_name(server_name)
        if is_ip_literal(host) or port is not None:
            return [Target(host, port or DEFAULT_PORT, server_name, host)]
        delegated = self.well_known(host)
        if delegated is None:
            return self._srv_or_default(host, host_header=server_name)
        d_host, d_port = split_server_name(delegated)
        if is_ip_literal(d_host) or d_port is not None:
            return [Target(d_host, d_port or DEFAULT_PORT, delegated, d_host)]
        return self._srv_or_default(d_host, host_header=delegated)

    def _srv_or_default(self, host: str, *, host_header: str) -> list[Target]:
        for prefix in ("_matrix-fed._tcp.", "_matrix._tcp."):
            records = self._lookup_srv(prefix + host)
            if records:
                return [Target(t, p, host_header, host) for t, p in records]
        return [Target(host, DEFAULT_PORT, host_header, host)]

    def well_known(self, host: str) -> str | None:
        """The delegated server name from /.well-known/matrix/server, cached."""
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(host)
        if cached and cached[0] > now:
            return cached[1]
        delegated, ttl = self._fetch_delegation(host)
        with self._lock:
            self._cache[host] = (now + ttl, delegated)
        return delegated

    def _fetch_delegation(self, host: str) -> tuple[str | None, int]:
        try:
            body, max_age = self._fetch_well_known(host)
            server = json.loads(body)["m.server"] if body else None
            if server is not None:
                split_server_name(server)
        except (ValueError, KeyError, TypeError) as e:
            logger.info("No usable .well-known for %s: %s", host, type(e).__name__)
            return None, WELL_KNOWN_ERROR_TTL
        if server is None:
            return None, WELL_KNOWN_ERROR_TTL
        return server, min(max_age or WELL_KNOWN_TTL, WELL_KNOWN_MAX_TTL)
