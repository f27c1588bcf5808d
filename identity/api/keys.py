"""/pubkey/* and /sign-ed25519: the keys homeservers check invitations against."""

from dataclasses import dataclass
from typing import Any

from flask import Blueprint
from flask import request

from identity import invitations
from identity import keys
from identity import peers
from identity.api.auth import require_user
from identity.api.http import json_body
from identity.api.http import now
from identity.api.http import parse
from identity.api.http import route
from identity.api.http import settings
from identity.errors import NotFound
from identity.extensions import db
from identity.services import services

bp = Blueprint("keys", __name__, url_prefix="/_matrix/identity")


@dataclass(slots=True)
class PublicKeyQuery:
    public_key: str


@dataclass(slots=True)
class SignBody:
    mxid: str
    private_key: str
    token: str


@route(bp, "/pubkey/<key_id>", methods=["GET"])
def public_key(v2: bool, key_id: str):
    key = services().keys.key()
    if key_id != keys.key_id(key):
        raise NotFound("The public key was not found")
    return {"public_key": keys.public_key_base64(key)}


@route(bp, "/pubkey/isvalid", methods=["GET"])
def is_valid(v2: bool):
    query = parse(PublicKeyQuery, request.args)
    return {"valid": peers.is_long_term_key(query.public_key, services().keys.key())}


@route(bp, "/pubkey/ephemeral/isvalid", methods=["GET"])
def is_valid_ephemeral(v2: bool):
    query = parse(PublicKeyQuery, request.args)
    valid = invitations.check_ephemeral_key(query.public_key, now=now())
    db.session.commit()
    return {"valid": valid}


@route(bp, "/sign-ed25519", methods=["POST"], auth=require_user)
def sign_ed25519(v2: bool):
    body = parse(SignBody, json_body() if v2 else _legacy_arguments())
    config = settings()
    signed = invitations.sign_with_ephemeral_key(
        body.token,
        body.mxid,
        body.private_key,
        server_name=config.server_name,
        now=now(),
        single_use=config.invite_single_use,
    )
    db.session.commit()  # the admission, before the signature leaves
    return signed


def _legacy_arguments() -> dict[str, Any]:
    """The v1 arguments: the query string, overridden by a JSON or form body if any.

    The invitation mail's `signurl` carries the token and private key in its query,
    and Element POSTs to it with no body after adding `mxid` to that query (older
    versions sent a JSON `null` body).
    """
    arguments: dict[str, Any] = request.args.to_dict()
    if request.get_data().strip() not in (b"", b"null"):
        arguments.update(json_body(allow_form=True))
    return arguments
