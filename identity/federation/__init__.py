"""Calls to homeservers: server discovery, safe HTTP, X-Matrix request signatures."""

from identity.federation.client import FederationClient
from identity.federation.client import FederationError
from identity.federation.client import Policy

__all__ = ["FederationClient", "FederationError", "Policy"]
