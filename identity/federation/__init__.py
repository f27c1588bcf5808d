"""Calls to homeservers: server discovery, safe HTTP, X-Matrix request signatures."""

from flask import Flask

from identity.federation.client import FederationClient
from identity.federation.client import FederationError
from identity.federation.client import Policy
from identity.services import services

__all__ = ["FederationClient", "FederationError", "client", "init_app"]


def init_app(app: Flask) -> FederationClient:
    config = app.config
    policy = Policy(
        verify_tls=config["FEDERATION_VERIFY_TLS"],
        ca_file=config["FEDERATION_CA_FILE"],
        allowlist=tuple(config["FEDERATION_IP_ALLOWLIST"]),
        blocklist=tuple(config["FEDERATION_IP_BLOCKLIST"]),
        timeout=float(config["FEDERATION_TIMEOUT_SECONDS"]),
        max_response_bytes=config["FEDERATION_MAX_RESPONSE_BYTES"],
    )
    return FederationClient(policy)


def client() -> FederationClient:
    return services().federation
