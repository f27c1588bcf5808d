"""Requests signed by homeservers (X-Matrix authorization, server-server API).

A homeserver proves a request came from it by signing the request's method, URI,
origin, destination and JSON content with one of its keys, published at
/_matrix/key/v2/server. We fetch those keys and cache them in the database, so that
every worker and host shares the cache.
"""

import logging
import re
from datetime import UTC
from datetime import datetime
from datetime import timedelta
from typing import Any

import signedjson.key
import signedjson.sign
from signedjson.sign import SignatureVerifyException
from signedjson.types import VerifyKey

from identity.errors import Forbidden
from identity.federation.client import FederationClient
from identity.federation.client import FederationError
from identity.storage import server_keys

logger = logging.getLogger(__name__)

# Keys are trusted until their valid_until_ts, but never for more than this.
MAX_KEY_CACHE = timedelta(days=7)
_PARAM = re.compile(r'\s*([A-Za-z]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))\s*(?:,|$)')


def parse_x_matrix(header: str) -> dict[str, str] | None:
    """Parse ``X-Matrix origin=…,destination=…,key="ed25519:1",sig="…"``."""
    scheme, _, params = header.partition(" ")
    if scheme != "X-Matrix":
        return None
    fields = {}
    for name, quoted, bare in _PARAM.findall(params):
        fields[name.lower()] = quoted.replace('\\"', '"') if quoted else bare
    return fields if {"origin", "key", "sig"} <= fields.keys() else None


def authenticate_request(
    method: str,
    uri: str,
    content: dict[str, Any] | None,
    authorization_headers: list[str],
    *,
    destination: str,
    federation: FederationClient,
    now: datetime,
) -> str:
    """Return the origin server of a correctly X-Matrix-signed request.

    :param destination: our own server name; a header naming another one is refused.
    :param federation: fetches the origin's keys when they are not cached.
    :raises MatrixError: 403 M_FORBIDDEN when no header carries a valid signature (the
        specification's answer to a bad homeserver signature).
    """
    for header in authorization_headers:
        fields = parse_x_matrix(header)
        if fields is None:
            continue
        if fields.get("destination", destination) != destination:
            raise Forbidden("The request was signed for another destination")
        origin = fields["origin"]
        verify_key = _verify_key(origin, fields["key"], federation, now=now)
        # The server-server form signs `destination`; homeservers calling identity
        # servers (Synapse's unbind) sign `destination_is`, as Sydent checks.
        for destination_field in ("destination", "destination_is"):
            signed: dict[str, Any] = {"method": method, "uri": uri, "origin": origin}
            signed[destination_field] = destination
            if content is not None:
                signed["content"] = content
            signed["signatures"] = {origin: {fields["key"]: fields["sig"]}}
            try:
                signedjson.sign.verify_signed_json(signed, origin, verify_key)
            except SignatureVerifyException:
                continue
            return origin
        raise Forbidden("Invalid X-Matrix signature")
    raise Forbidden("Missing X-Matrix authorization")


def _verify_key(
    origin: str, key_id: str, federation: FederationClient, *, now: datetime
) -> VerifyKey:
    if not key_id.startswith("ed25519:"):
        raise Forbidden(f"Unsupported key algorithm in {key_id}")
    cached = server_keys.find(origin, key_id, now=now)
    if cached is None:  # unknown or expired: the homeserver may have a new key
        _fetch_keys(origin, federation, now=now)
        cached = server_keys.find(origin, key_id, now=now)
    if cached is None:
        raise Forbidden(f"Unknown key {key_id} for {origin}")
    return decode_key(key_id, cached)


def decode_key(key_id: str, base64_key: str) -> VerifyKey:
    return signedjson.key.decode_verify_key_bytes(key_id, signedjson.key.decode_base64(base64_key))


def _fetch_keys(origin: str, federation: FederationClient, *, now: datetime) -> None:
    """Fetch the origin's current keys, check their self-signature and cache them."""
    try:
        answer = federation.get_json(origin, "/_matrix/key/v2/server")
    except FederationError as e:
        logger.info("Could not fetch the keys of %s: %s", origin, e)
        raise Forbidden(f"Could not fetch the keys of {origin}") from None
    try:
        keys = {kid: v["key"] for kid, v in answer["verify_keys"].items()}
        valid_until = datetime.fromtimestamp(answer["valid_until_ts"] / 1000, UTC)
        if answer["server_name"] != origin:
            raise ValueError("server_name mismatch")
        for kid, key in keys.items():
            verify = signedjson.key.decode_verify_key_bytes(kid, signedjson.key.decode_base64(key))
            signedjson.sign.verify_signed_json(answer, origin, verify)
            break
    except (
        KeyError,
        TypeError,
        ValueError,
        AttributeError,
        signedjson.sign.SignatureVerifyException,
    ):
        raise Forbidden(f"Invalid key response from {origin}") from None
    server_keys.store(origin, keys, min(valid_until, now + MAX_KEY_CACHE), now)
