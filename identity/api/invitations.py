"""/store-invite: a homeserver asks us to invite an email address into a room."""

from dataclasses import dataclass
from functools import partial

from flask import Blueprint

from identity import invitations
from identity import presentation
from identity.api.auth import require_user
from identity.api.http import current_user
from identity.api.http import invite_policy
from identity.api.http import json_body
from identity.api.http import now
from identity.api.http import parse
from identity.api.http import route
from identity.api.http import routing_table
from identity.api.validation import requested_brand
from identity.extensions import db
from identity.services import services

bp = Blueprint("invitations", __name__, url_prefix="/_matrix/identity")


@dataclass(slots=True)
class StoreInviteBody:
    medium: str
    address: str
    room_id: str
    sender: str


@route(
    bp, "/store-invite", methods=["POST"], auth=require_user, v1_switch="v1_store_invite_enabled"
)
def store_invite(v2: bool):
    """Store an invitation and mail the guest (v2: the sender must be the token's user)."""
    raw = json_body(allow_form=not v2)
    body = parse(StoreInviteBody, raw)
    details = {
        key: value
        for key, value in raw.items()
        if isinstance(value, str) and key not in invitations.REQUIRED_FIELDS
    }
    policy = invite_policy()
    response = invitations.store_invite(
        body.medium,
        body.address,
        body.room_id,
        body.sender,
        details,
        caller=current_user(),
        now=now(),
        policy=policy,
        routing=routing_table(),
        brand=requested_brand(),
        send=partial(presentation.send_invitation, policy=policy, mailer=services().mailer),
    )
    db.session.commit()
    return response
