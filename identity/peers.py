"""The keys of the Sydent peers of a migrated deployment.

A Sydent deployment can be several peers that replicate to each other, each signing
with its own long-term key. A room's third-party invite names the public key of the
peer that stored the invitation, and a homeserver accepts the invitation only with a
signature that verifies with one of the keys the invite names (Synapse tries the
first ed25519 signature of `signed` against each of them, then asks the key's
`key_validity_url` whether it is still valid). So after a migration:

* every peer's public key stays valid (`pubkey/isvalid`): recorded in the database
  (`peer_key`), shared by every worker;
* an invitation a peer stored is signed, on delivery, with that peer's key alone and
  under its server name. The private half of a peer's key is kept like ours: in a
  file, owner-only, in `peer-keys/` beside SIGNING_KEY_PATH, named after the peer.
"""

import logging
import os
from collections.abc import Callable
from datetime import datetime
from typing import Any

from signedjson.types import SigningKey

from identity import keys
from identity.matrix_ids import is_server_name
from identity.storage import invites
from identity.storage import peer_keys

logger = logging.getLogger(__name__)

KEYS_DIR = "peer-keys"


def keys_dir(signing_key_path: str) -> str:
    """The directory of the peers' private keys: beside our own key."""
    return os.path.join(os.path.dirname(os.path.abspath(signing_key_path)), KEYS_DIR)


def key_path(signing_key_path: str, server_name: str) -> str:
    """The file of `server_name`'s private key.

    :raises ValueError: `server_name` is not a server name (it names a file).
    """
    if not is_server_name(server_name):
        raise ValueError(f"{server_name!r} is not a server name")
    return os.path.join(keys_dir(signing_key_path), f"{server_name}.key")


def read_private_key(signing_key_path: str, server_name: str) -> SigningKey | None:
    """The peer's private key, or None when it was not imported or cannot be read."""
    try:
        return keys.read(key_path(signing_key_path, server_name))
    except (OSError, ValueError):
        return None


def record_public_key(server_name: str, public_key: str, *, now: datetime) -> bool:
    """Record `server_name`'s public key; False when it is already recorded as is.

    :raises ValueError: another key is recorded for that peer, or that key for
        another peer.
    """
    known = peer_keys.find(server_name)
    if known is not None and known.public_key == public_key:
        return False
    if known is not None:
        raise ValueError(f"another public key is recorded for {server_name}")
    other = peer_keys.by_public_key(public_key)
    if other is not None:
        raise ValueError(f"this key is recorded for {other.server_name}")
    peer_keys.save(server_name, public_key, now)
    return True


def is_long_term_key(public_key: str, our_key: SigningKey) -> bool:
    """Whether `public_key` is our key or the key of a peer whose data we hold."""
    return public_key == keys.public_key_base64(our_key) or peer_keys.is_known(public_key)


def signing_key_for(
    stored_by: str | None, *, server_name: str, our_key: SigningKey, signing_key_path: str
) -> tuple[str, SigningKey]:
    """The (server name, key) that signs the delivery of an invitation `stored_by` stored.

    Our own invitations, and those of the peer whose key became ours, are signed with
    our key. A peer's invitation without that peer's private key falls back to ours,
    with a warning: the homeserver will refuse it until the key is imported.
    """
    if stored_by is None:
        return server_name, our_key
    peer = peer_keys.find(stored_by)
    if peer is None:
        logger.warning("Invitation stored by unknown peer %s: signed with our key", stored_by)
        return server_name, our_key
    if peer.public_key == keys.public_key_base64(our_key):
        return stored_by, our_key
    private = read_private_key(signing_key_path, stored_by)
    if private is None or keys.public_key_base64(private) != peer.public_key:
        logger.warning(
            "No private key of peer %s in %s: its invitation is signed with our key",
            stored_by,
            keys_dir(signing_key_path),
        )
        return server_name, our_key
    return stored_by, private


def invitation_signer(
    *, server_name: str, our_key: SigningKey, signing_key_path: str
) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """Sign an onbind `signed` block ({"mxid", "token"}) with the key of the peer that
    stored the token's invitation, alone: Synapse checks only the first signature."""

    def sign(payload: dict[str, Any]) -> dict[str, Any]:
        invitation = invites.by_token(payload["token"])
        name, key = signing_key_for(
            invitation.stored_by if invitation is not None else None,
            server_name=server_name,
            our_key=our_key,
            signing_key_path=signing_key_path,
        )
        return keys.sign(payload, name, key)

    return sign
