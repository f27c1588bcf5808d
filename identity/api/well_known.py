"""/.well-known/security.txt, from the settings; an unknown path while none is set."""

from flask import Blueprint

from identity import security_txt
from identity.api.http import settings
from identity.errors import Unrecognized

bp = Blueprint("well_known", __name__)


@bp.get(security_txt.PATH)
def get_security_txt():
    config = settings()
    if not config.security_txt_contact or config.security_txt_expires is None:
        raise Unrecognized()
    text = security_txt.render(
        contacts=config.security_txt_contact,
        expires=config.security_txt_expires,
        policy=config.security_txt_policy,
        public_base_url=config.public_base_url,
    )
    return text, 200, {"Content-Type": "text/plain; charset=utf-8"}
