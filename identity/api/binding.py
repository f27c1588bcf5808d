"""/3pid/bind, /3pid/unbind, and the lookups: /lookup, /bulk_lookup, /hash_details."""

from dataclasses import dataclass

from flask import Blueprint
from flask import request

from identity import binding
from identity import lookup
from identity.api.auth import request_pepper
from identity.api.auth import require_user
from identity.api.http import V2
from identity.api.http import current_user
from identity.api.http import json_answer
from identity.api.http import json_body
from identity.api.http import now
from identity.api.http import parse
from identity.api.http import route
from identity.api.http import routing_table
from identity.api.http import settings
from identity.api.http import this_request
from identity.extensions import db
from identity.services import services

bp = Blueprint("binding", __name__, url_prefix="/_matrix/identity")


@dataclass(slots=True)
class BindBody:
    sid: str
    client_secret: str
    mxid: str


@dataclass(slots=True)
class UnbindBody:
    mxid: str
    threepid: dict
    sid: str | None = None
    client_secret: str | None = None


@dataclass(slots=True)
class LookupBody:
    addresses: list
    algorithm: str
    pepper: str


@dataclass(slots=True)
class BulkLookupBody:
    threepids: list


@dataclass(slots=True)
class LookupQuery:
    medium: str
    address: str


def signer() -> binding.Signer:
    return services().signer()


@route(bp, "/3pid/bind", methods=["POST"], auth=require_user, v1_switch="v1_bind_enabled")
def bind(v2: bool):
    body = parse(BindBody, json_body(allow_form=not v2))
    association = binding.bind(
        binding.SessionProof(body.sid, body.client_secret),
        body.mxid,
        caller=current_user(),
        now=now(),
        session_lifetime=settings().session_lifetime,
        signer=signer(),
        routing=routing_table() if settings().restrict_binds_to_routing else None,
    )
    db.session.commit()
    return association


@route(bp, "/3pid/unbind", methods=["POST"])
def unbind(v2: bool):
    """Remove a binding, proven by the validation session or by the homeserver's signature."""
    raw = json_body(allow_form=not v2)
    body = parse(UnbindBody, raw)
    proof: binding.SessionProof | binding.SignedRequest
    if body.sid and body.client_secret:
        proof = binding.SessionProof(body.sid, body.client_secret)
    else:
        proof = binding.SignedRequest(
            method=request.method,
            uri=request.full_path.rstrip("?"),
            content=raw,
            authorization=request.headers.getlist("Authorization"),
        )
    binding.unbind_proven(
        body.threepid,
        body.mxid,
        proof,
        server_name=settings().server_name,
        federation=services().federation,
        now=now(),
        session_lifetime=settings().session_lifetime,
    )
    db.session.commit()
    return {}


@bp.get(V2 + "/hash_details")
def hash_details():
    require_user(allow_query_token=True)  # Synapse sends its token in the query here
    # The pepper came with the token check: one read. A first pepper commits itself.
    return lookup.hash_details(now=now(), known_pepper=request_pepper())


@bp.post(V2 + "/lookup")
def lookup_v2():
    require_user()
    body = parse(LookupBody, json_body())
    mappings = lookup.lookup(
        body.addresses,
        body.algorithm,
        body.pepper,
        now=now(),
        known_pepper=request_pepper(),
        limit=settings().lookup_max_addresses,
    )
    return {"mappings": mappings}


@route(bp, "/lookup", methods=["GET"], v2=False, v1_switch="v1_lookup_enabled")
def lookup_v1(v2: bool):
    query = parse(LookupQuery, this_request().args)
    current = services()
    return json_answer(
        lookup.lookup_v1(
            query.medium, query.address, now=current.clock.now(), sign=current.signer().sign
        )
    )


@route(bp, "/bulk_lookup", methods=["POST"], v2=False, v1_switch="v1_lookup_enabled")
def bulk_lookup(v2: bool):
    body = parse(BulkLookupBody, json_body(allow_form=True))
    found = lookup.bulk_lookup(
        body.threepids, now=now(), limit=settings().bulk_lookup_max_threepids
    )
    return {"threepids": found}
