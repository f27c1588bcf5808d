"""/3pid/bind, /3pid/unbind, and the lookups: /lookup, /bulk_lookup, /hash_details."""

from dataclasses import dataclass

from flask import Blueprint
from flask import request

from identity import binding
from identity import lookup
from identity import routing
from identity import validation
from identity.addresses import lookup_form
from identity.addresses import normalise_email
from identity.api.auth import require_user
from identity.api.auth import require_v1_enabled
from identity.api.http import V1
from identity.api.http import V2
from identity.api.http import current_user
from identity.api.http import json_body
from identity.api.http import now
from identity.api.http import parse
from identity.api.http import route
from identity.api.http import settings
from identity.errors import CallerNotAllowed
from identity.errors import Forbidden
from identity.errors import MissingParams
from identity.errors import Unauthorized
from identity.extensions import db
from identity.federation.signatures import authenticate_request
from identity.keys import current_signing_key
from identity.storage import associations

bp = Blueprint("binding", __name__, url_prefix="/_matrix/identity")


@dataclass(frozen=True)
class BindBody:
    sid: str
    client_secret: str
    mxid: str


@dataclass(frozen=True)
class UnbindBody:
    mxid: str
    threepid: dict
    sid: str | None = None
    client_secret: str | None = None


@dataclass(frozen=True)
class LookupBody:
    addresses: list
    algorithm: str
    pepper: str


@dataclass(frozen=True)
class BulkLookupBody:
    threepids: list


@dataclass(frozen=True)
class LookupQuery:
    medium: str
    address: str


def signer() -> binding.Signer:
    return binding.Signer(settings().server_name, current_signing_key())


@route(bp, "/3pid/bind", methods=["POST"], auth=require_user)
def bind(v2: bool):
    if not v2:
        require_v1_enabled(settings().v1_bind_enabled)
    user_id = current_user()
    body = parse(BindBody, json_body(allow_form=not v2))
    if user_id is not None and user_id != body.mxid:
        raise CallerNotAllowed("You may only bind addresses to your own Matrix ID")
    session = validation.get_validated_session(
        body.sid,
        body.client_secret,
        now=now(),
        lifetime_seconds=settings().session_lifetime_seconds,
    )
    association = binding.bind(
        session,
        body.mxid,
        now=now(),
        signer=signer(),
        routing=routing.current() if settings().restrict_binds_to_routing else None,
    )
    db.session.commit()
    return association


@route(bp, "/3pid/unbind", methods=["POST"])
def unbind(v2: bool):
    """Remove a binding, proven by the validation session or by the homeserver's signature."""
    raw = json_body(allow_form=not v2)
    body = parse(UnbindBody, raw)
    medium, address = _threepid(body.threepid)
    if body.sid and body.client_secret:
        session = validation.get_validated_session(
            body.sid,
            body.client_secret,
            now=now(),
            lifetime_seconds=settings().session_lifetime_seconds,
        )
        binding.check_session_matches(session, medium, address)
    else:
        binding.check_origin_owns(_signing_homeserver(raw), body.mxid)
    binding.unbind(medium, address, body.mxid)
    db.session.commit()
    return {}


def _threepid(threepid: dict) -> tuple[str, str]:
    medium, address = threepid.get("medium"), threepid.get("address")
    if not isinstance(medium, str) or not isinstance(address, str):
        raise MissingParams("threepid must have a medium and an address")
    return medium, normalise_email(address) if medium == "email" else address


def _signing_homeserver(content: dict) -> str:
    headers = request.headers.getlist("Authorization")
    if not any(h.startswith("X-Matrix") for h in headers):
        raise Forbidden("Send the sid and client_secret, or sign the request as the homeserver")
    try:
        return authenticate_request(
            request.method,
            request.full_path.rstrip("?"),
            content,
            headers,
            destination=settings().server_name,
            now=now(),
        )
    except Unauthorized as e:
        # The specification answers bad homeserver signatures with 403 M_FORBIDDEN.
        raise Forbidden(e.error) from None


@bp.get(V2 + "/hash_details")
def hash_details():
    require_user(allow_query_token=True)  # Synapse sends its token in the query here
    details = lookup.hash_details(now=now())
    db.session.commit()  # the pepper is created on first use
    return details


@bp.post(V2 + "/lookup")
def lookup_v2():
    require_user()
    body = parse(LookupBody, json_body())
    mappings = lookup.lookup(
        body.addresses,
        body.algorithm,
        body.pepper,
        now=now(),
        limit=settings().lookup_max_addresses,
    )
    return {"mappings": mappings}


@bp.get(V1 + "/lookup")
def lookup_v1():
    require_v1_enabled(settings().v1_lookup_enabled)
    query = parse(LookupQuery, request.args.to_dict())
    association = associations.find(query.medium, lookup_form(query.address))
    if association is None or association.not_after <= now():
        return {}
    return signer().sign(binding.association_json(association))


@bp.post(V1 + "/bulk_lookup")
def bulk_lookup():
    require_v1_enabled(settings().v1_lookup_enabled)
    body = parse(BulkLookupBody, json_body(allow_form=True))
    found = lookup.bulk_lookup(
        body.threepids, now=now(), limit=settings().bulk_lookup_max_threepids
    )
    return {"threepids": found}
