"""/info and /internal-info: which homeserver serves an address (Tchap's extension).

Clients ask /info before login, registration and password reset; homeservers and the
authentication service ask /internal-info before letting an address register.
"""

from dataclasses import dataclass

from flask import Blueprint

from identity.addresses import normalise_email
from identity.api.auth import is_from
from identity.api.auth import require_internal_caller
from identity.api.http import parse
from identity.api.http import route
from identity.api.http import this_request
from identity.errors import Unrecognized
from identity.routing.answers import homeserver_info
from identity.services import Services
from identity.services import services

bp = Blueprint("info", __name__, url_prefix="/_matrix/identity")


@dataclass(slots=True)
class InfoQuery:
    address: str
    medium: str = "email"


@route(bp, "/info", methods=["GET"])
def info(v2: bool):
    current = services()  # looked up once: clients ask before every login
    networks = current.settings.info_trusted_networks
    # No list of trusted networks means everyone is trusted (a network without twins).
    trusted = not networks or is_from(networks)
    return _answer(current, trusted=trusted, internal=False)


@route(bp, "/internal-info", methods=["GET"])
def internal_info(v2: bool):
    require_internal_caller()
    return _answer(services(), trusted=True, internal=True)


def _answer(current: Services, *, trusted: bool, internal: bool) -> dict:
    address = _queried_address()
    return homeserver_info(
        address,
        table=current.routing.table(),
        trusted=trusted,
        internal=internal,
        now=current.clock.now(),
    )


def _queried_address() -> str:
    """The normalised address of the query, as real clients send it.

    :raises MatrixError: M_MISSING_PARAMS, M_UNRECOGNIZED for a medium other than
        email, M_INVALID_EMAIL.
    """
    query = parse(InfoQuery, this_request().args)
    if query.medium not in ("", "email"):
        raise Unrecognized(f"Unsupported medium {query.medium!r}: only email", status=400)
    # Some clients send the address unencoded: the + of a local part arrives as a space.
    return normalise_email(query.address.strip().replace(" ", "+"))
