"""Calls to homeservers: server discovery, safe HTTP, X-Matrix request signatures."""

from collections.abc import Mapping
from typing import Any

from identity.federation.client import FederationClient
from identity.federation.client import FederationError
from identity.federation.client import Policy

__all__ = ["FederationClient", "FederationError", "build"]


def build(config: Mapping[str, Any]) -> FederationClient:
    """The app's client for homeservers, from its FEDERATION_* settings."""
    policy = Policy(
        verify_tls=config["FEDERATION_VERIFY_TLS"],
        ca_file=config["FEDERATION_CA_FILE"],
        allowlist=tuple(config["FEDERATION_IP_ALLOWLIST"]),
        blocklist=tuple(config["FEDERATION_IP_BLOCKLIST"]),
        timeout=float(config["FEDERATION_TIMEOUT_SECONDS"]),
        max_response_bytes=config["FEDERATION_MAX_RESPONSE_BYTES"],
    )
    return FederationClient(policy)
