"""A Synapse module for the interop tests: registration gated by our routing.

Loaded by the test Synapse (its directory is on Synapse's PYTHONPATH), not by our
service. Before an email address may be used on this homeserver, Synapse's
`is_3pid_allowed` callback asks our `/internal-info` (with the shared secret) and lets
the address through only when it routes to this homeserver and, on an invitation-only
platform, has a pending invitation. Any failure to get an answer refuses.
"""

import logging
from typing import Any

logger = logging.getLogger(__name__)

INTERNAL_INFO = "/_matrix/identity/api/v1/internal-info"


class TchapGate:
    def __init__(self, config: dict[str, Any], api: Any) -> None:
        self._api = api
        self._url = config["identity_server"].rstrip("/") + INTERNAL_INFO
        self._auth = f"Bearer {config['secret']}".encode("ascii")
        api.register_password_auth_provider_callbacks(is_3pid_allowed=self.is_3pid_allowed)

    @staticmethod
    def parse_config(config: dict[str, Any]) -> dict[str, Any]:
        for key in ("identity_server", "secret"):
            if not isinstance(config.get(key), str):
                raise ValueError(f"tchap_gate: {key} is required")
        return config

    async def is_3pid_allowed(self, medium: str, address: str, registration: bool) -> bool:
        if medium != "email":
            return False
        try:
            answer = await self._api.http_client.get_json(
                self._url,
                {"medium": "email", "address": address},
                headers={b"Authorization": [self._auth]},
            )
        except Exception as e:  # fail closed: no answer, no registration
            logger.warning("tchap_gate: internal-info failed: %s", e)
            return False
        allowed = answer.get("hs") == self._api.server_name and (
            not answer.get("requires_invite") or bool(answer.get("invited"))
        )
        logger.info("tchap_gate: %s -> %s (registration=%s)", answer, allowed, registration)
        return allowed
