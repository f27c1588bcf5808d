"""HTTP calls to homeservers that cannot be turned against our own network.

Every name is resolved here and each resolved address is checked before we connect
to that very address (no second lookup that DNS rebinding could change): loopback,
private, link-local and other reserved ranges are refused unless allowlisted.
"""

import ipaddress
import json
import logging
import re
import socket
from collections.abc import Callable
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import urllib3

from identity.errors import Unauthorized
from identity.federation import guard
from identity.federation.guard import IPAddress
from identity.federation.guard import Network
from identity.federation.resolver import Resolver
from identity.federation.resolver import SrvLookup
from identity.federation.resolver import Target
from identity.federation.resolver import srv_lookup

logger = logging.getLogger(__name__)


_MAX_AGE = re.compile(r"max-age=(\d+)")


class FederationError(Exception):
    """A homeserver could not be reached, or answered something unusable."""


@dataclass(frozen=True)
class Policy:
    verify_tls: bool
    ca_file: str | None
    allowlist: tuple[Network, ...]
    blocklist: tuple[Network, ...]
    timeout: float
    max_response_bytes: int

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "Policy":
        """The FEDERATION_* settings, read once."""
        return cls(
            verify_tls=config["FEDERATION_VERIFY_TLS"],
            ca_file=config["FEDERATION_CA_FILE"],
            allowlist=tuple(config["FEDERATION_IP_ALLOWLIST"]),
            blocklist=tuple(config["FEDERATION_IP_BLOCKLIST"]),
            timeout=float(config["FEDERATION_TIMEOUT_SECONDS"]),
            max_response_bytes=config["FEDERATION_MAX_RESPONSE_BYTES"],
        )

    def allows(self, address: IPAddress) -> bool:
        """Whether we may connect to `address` (see `identity.federation.guard`)."""
        return guard.allows(address, allowlist=self.allowlist, blocklist=self.blocklist)


def lookup_addresses(host: str, port: int) -> list[str]:
    """The addresses `host` resolves to (IP literals included), as the system resolves them."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


# Resolves a host name to addresses: (host, port) → addresses; raises OSError.
AddressLookup = Callable[[str, int], list[str]]


class FederationClient:
    def __init__(
        self,
        policy: Policy,
        *,
        lookup_srv: SrvLookup = srv_lookup,
        lookup_addresses: AddressLookup = lookup_addresses,
    ) -> None:
        self.policy = policy
        self.resolver = Resolver(self._fetch_well_known, lookup_srv)
        self._lookup_addresses = lookup_addresses

    def get_json(self, server_name: str, path: str, params: dict[str, str] | None = None) -> Any:
        return self.request("GET", server_name, path, params=params)

    def post_json(self, server_name: str, path: str, body: dict[str, Any]) -> Any:
        return self.request("POST", server_name, path, body=body)

    def openid_userinfo(self, server_name: str, access_token: str) -> str:
        """Ask `server_name` whose OpenID token this is; return the user ID (`sub`).

        :raises MatrixError: M_UNAUTHORIZED when the homeserver does not vouch for it.
        """
        try:
            answer = self.get_json(
                server_name,
                "/_matrix/federation/v1/openid/userinfo",
                params={"access_token": access_token},
            )
        except FederationError as e:
            logger.info("OpenID token not verified by %s: %s", server_name, e)
            raise Unauthorized("The homeserver did not accept the OpenID token") from None
        sub = answer.get("sub") if isinstance(answer, dict) else None
        if not isinstance(sub, str):
            raise Unauthorized("The homeserver did not name a user for the OpenID token")
        return sub

    def request(
        self,
        method: str,
        server_name: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: dict[str, Any] | None = None,
    ) -> Any:
        """Send one request to `server_name`, trying its resolved targets in order.

        :raises FederationError: when no target gives a 2xx JSON answer.
        """
        try:
            targets = self.resolver.resolve(server_name)
        except ValueError as e:
            raise FederationError(str(e)) from None
        url = path + ("?" + urlencode(params) if params else "")
        payload = json.dumps(body).encode() if body is not None else None
        error = FederationError(f"no address for {server_name}")
        for target in targets:
            try:
                status, data, _ = self._send(method, target, url, payload)
            except FederationError as e:
                error = e
                continue
            if not 200 <= status < 300:
                raise FederationError(f"{server_name} answered HTTP {status}")
            try:
                return json.loads(data)
            except ValueError:
                raise FederationError(
                    f"{server_name} answered something that is not JSON"
                ) from None
        logger.info("Could not reach %s: %s", server_name, error)
        raise error

    def _send(
        self, method: str, target: Target, url: str, payload: bytes | None
    ) -> tuple[int, bytes, dict[str, str]]:
        headers = {"Host": target.host_header, "User-Agent": "tchap-identity"}
        if payload is not None:
            headers["Content-Type"] = "application/json"
        last_error = FederationError(f"cannot resolve {target.host}")
        for address in self.safe_addresses(target.host, target.port):
            pool = urllib3.HTTPSConnectionPool(
                str(address),
                target.port,
                server_hostname=target.tls_name,
                assert_hostname=target.tls_name if self.policy.verify_tls else False,
                cert_reqs="CERT_REQUIRED" if self.policy.verify_tls else "CERT_NONE",
                ca_certs=self.policy.ca_file,
                timeout=urllib3.Timeout(connect=self.policy.timeout, read=self.policy.timeout),
                retries=False,
                maxsize=1,
            )
            try:
                response = pool.urlopen(
                    method,
                    url,
                    body=payload,
                    headers=headers,
                    preload_content=False,
                    redirect=False,
                )
                return response.status, self._read_capped(response), dict(response.headers)
            except urllib3.exceptions.HTTPError as e:
                last_error = FederationError(f"{target.host}: {type(e).__name__}")
            finally:
                pool.close()
        raise last_error

    def _read_capped(self, response: urllib3.BaseHTTPResponse) -> bytes:
        limit = self.policy.max_response_bytes
        chunks, size = [], 0
        try:
            for chunk in response.stream(64 * 1024):
                size += len(chunk)
                if size > limit:
                    raise FederationError(f"response larger than {limit} bytes")
                chunks.append(chunk)
        finally:
            response.release_conn()
        return b"".join(chunks)

    def safe_addresses(self, host: str, port: int) -> list[IPAddress]:
        """Resolve `host` and keep the addresses we may connect to.

        :raises FederationError: when every address is refused or none resolves.
        """
        try:
            found = self._lookup_addresses(host, port)
            addresses = list(dict.fromkeys(ipaddress.ip_address(a) for a in found))
        except (OSError, UnicodeError, ValueError) as e:
            raise FederationError(f"cannot resolve {host}: {e}") from None
        allowed = [a for a in addresses if self.policy.allows(a)]
        if not allowed:
            raise FederationError(f"{host} resolves only to refused addresses")
        return allowed

    def _fetch_well_known(self, host: str) -> tuple[bytes | None, int | None]:
        target = Target(host, 443, host, host)
        try:
            status, data, headers = self._send("GET", target, "/.well-known/matrix/server", None)
        except FederationError:
            return None, None
        if status != 200:
            return None, None
        match = _MAX_AGE.search(headers.get("Cache-Control", "") or "")
        return data, int(match.group(1)) if match else None
