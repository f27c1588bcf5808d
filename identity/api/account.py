"""/v2/account/* and /v2/terms."""

from dataclasses import dataclass

from flask import Blueprint

from identity import accounts
from identity.api.auth import bearer_token
from identity.api.auth import require_user
from identity.api.http import json_body
from identity.api.http import now
from identity.api.http import parse
from identity.api.http import settings
from identity.extensions import db
from identity.services import services

bp = Blueprint("account", __name__, url_prefix="/_matrix/identity/v2")


@dataclass(slots=True)
class RegisterBody:
    access_token: str
    matrix_server_name: str
    token_type: str = "Bearer"  # noqa: S105 (a scheme name, not a secret)
    expires_in: int = 0


@dataclass(slots=True)
class AcceptTermsBody:
    user_accepts: list


@bp.post("/account/register")
def register():
    body = parse(RegisterBody, json_body())
    token = accounts.register(
        body.access_token,
        body.matrix_server_name,
        now=now(),
        userinfo=services().federation.openid_userinfo,
        allowed_servers=settings().register_homeserver_allowlist,
    )
    db.session.commit()
    # Sydent also answered `access_token`; some clients still read it.
    return {"token": token, "access_token": token}


@bp.get("/account")
def account():
    return {"user_id": require_user(check_terms=False)}


@bp.post("/account/logout")
def logout():
    require_user(check_terms=False)
    accounts.logout(bearer_token() or "")
    db.session.commit()
    return {}


@bp.get("/terms")
def get_terms():
    return {"policies": services().terms.policies}


@bp.post("/terms")
def accept_terms():
    user_id = require_user(check_terms=False)
    body = parse(AcceptTermsBody, json_body())
    urls = [url for url in body.user_accepts if isinstance(url, str)]
    accounts.accept_terms(user_id, urls, services().terms, now=now())
    db.session.commit()
    return {}
