"""The internal API for homeservers: bind and unbind addresses they verified themselves.

A homeserver that checked an address at registration (its own email validation)
binds it here without a validation session of ours; pending invitations are
delivered as for any bind. Only for trusted callers (`require_internal_caller`),
and closed unless INTERNAL_API_TRUSTED_NETWORKS or INTERNAL_API_SECRET is set.
"""

from dataclasses import dataclass

from flask import Blueprint

from identity import binding
from identity.addresses import normalise_email
from identity.api.auth import require_internal_caller
from identity.api.binding import signer
from identity.api.http import json_body
from identity.api.http import now
from identity.api.http import parse
from identity.api.http import routing_table
from identity.api.http import settings
from identity.errors import Unrecognized
from identity.extensions import db

bp = Blueprint("internal", __name__, url_prefix="/_matrix/identity/internal")


@dataclass(slots=True)
class ThreepidBody:
    address: str
    mxid: str
    medium: str = "email"


def _threepid() -> tuple[str, str, str]:
    require_internal_caller()
    body = parse(ThreepidBody, json_body())
    if body.medium != "email":
        raise Unrecognized(f"Unsupported medium {body.medium!r}: only email", status=400)
    return body.medium, normalise_email(body.address), body.mxid


@bp.post("/bind")
def bind():
    medium, address, mxid = _threepid()
    association = binding.bind_address(
        medium,
        address,
        mxid,
        now=now(),
        signer=signer(),
        routing=routing_table() if settings().restrict_binds_to_routing else None,
    )
    db.session.commit()
    return association


@bp.post("/unbind")
def unbind():
    medium, address, mxid = _threepid()
    binding.unbind(medium, address, mxid)
    db.session.commit()
    return {}
