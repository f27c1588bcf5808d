"""How mails and pages are worded: the variables of the code mail, of an invitation's
mail and of its landing page.

The invitation policy (identity.invitations) decides who is invited and mailed, the
validation rules (identity.validation) when a code is sent; this module only turns
them into what templates show, and hands the mails to the app's `Mailer`. Text comes
from the templates and their catalogues, never from here.
"""

import re
from datetime import datetime
from email.header import Header
from typing import Any
from urllib.parse import quote
from urllib.parse import urlencode

from identity import i18n
from identity import landing
from identity import refusals
from identity.invitations import WEB_CLIENT_LOCATION_ARG
from identity.invitations import InvitationMail
from identity.invitations import Policy
from identity.invitations import web_client_location_of
from identity.mailer import Mailer
from identity.routing.table import RoutingTable
from identity.storage.models import Invitation
from identity.storage.models import ValidationSession

# Optional arguments of store-invite the mail and the web client link use; empty when absent.
OPTIONAL_FIELDS = (
    "room_alias",
    "room_avatar_url",
    "room_join_rules",
    "room_name",
    "room_type",
    "sender_display_name",
    "sender_avatar_url",
    # Sydent's invite templates expect these two (guest access is not offered).
    "guest_user_id",
    "guest_access_token",
)
# Text from the inviter shown in the mail is cut, so that a crafted room or display
# name cannot carry a whole message under our name (Sydent's cuts for its variables).
SYDENT_ROOM_NAME_LIMIT = 30
SYDENT_SENDER_LIMIT = 20
DISPLAY_LIMIT = 40
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]")
_LINKABLE = re.compile(r"[.:/@]")


def send_code_mail(session: ValidationSession, code: str, *, base_url: str, mailer: Mailer) -> None:
    """Mail `code` to the session's address, with a link that validates in one click
    (a `validation.CodeSender`).

    The link uses the v1 path, which needs no access token: it is opened from a mail.
    """
    link = f"{base_url}/_matrix/identity/api/v1/validate/email/submitToken?" + urlencode(
        {"sid": session.sid, "client_secret": session.client_secret, "token": session.token}
    )
    context = {"token": session.token, "code": code, "link": link}
    # To the mailbox as written: case-folding may change it (Straße → strasse).
    to = session.mailbox or session.address
    mailer.send_template("verification", to, context, brand=session.brand)


def send_invitation(
    to: str, mail: InvitationMail, *, brand: str | None, policy: Policy, mailer: Mailer
) -> None:
    """Word the invitation `mail` and send it to the mailbox `to` (an `InviteSender`).

    The invitation and its reminder both go this way (`mail.kind` names the template):
    what one carries, the other does too.
    """
    context = invitation_context(
        mail.invitation,
        mail.ephemeral_private_key,
        policy,
        web_client_location=mail.web_client_location,
        guest=mail.guest,
        already_invited=mail.already_invited,
        renewed=mail.renewed,
    )
    send_invitation_mail(
        mail.kind, to, mail.invitation, context, brand=brand, policy=policy, mailer=mailer
    )


def send_invitation_mail(
    name: str,
    to: str,
    invitation: Invitation,
    context: dict[str, Any],
    *,
    brand: str | None,
    policy: Policy,
    mailer: Mailer,
) -> None:
    """Send the `name` mail about `invitation` (the invitation, a reminder of it) with
    the headers every mail about an invitation carries (`invitation_mail_headers`).

    Every such mail goes through here, so that none goes out without its one-click
    refusal.
    """
    headers = invitation_mail_headers(invitation, policy)
    mailer.send_template(name, to, context, brand=brand, headers=headers)


def invitation_mail_headers(invitation: Invitation, policy: Policy) -> dict[str, str]:
    """The headers of a mail about `invitation`: its one-click refusal (RFC 8058).

    Mailbox providers show an unsubscribe button for `List-Unsubscribe` (RFC 2369) and,
    with `List-Unsubscribe-Post`, POST ``List-Unsubscribe=One-Click`` to its https URL,
    without cookies: that refuses invitations from the platform (identity.pages).
    """
    return {
        "List-Unsubscribe": f"<{refusal_url(invitation, policy)}>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }


def refusal_url(invitation: Invitation, policy: Policy) -> str:
    """The invitation's refusal page (and one-click refusal URL); no address in it."""
    token = refusals.link_token(invitation, policy.guest_keys)
    return f"{policy.base_url}{refusals.REFUSE_PATH}/{token}"


def report_url(invitation: Invitation, policy: Policy) -> str:
    """The page where the guest reports not knowing the invitation's sender."""
    token = refusals.link_token(invitation, policy.guest_keys)
    return f"{policy.base_url}{refusals.REPORT_PATH}/{token}"


def guest_page(invitation: Invitation | None, policy: Policy, **outcome: Any) -> dict[str, Any]:
    """The variables of the refusal and report pages: who invited, whether the guest
    refused them (or the platform) already, and what the request just did (`outcome`).

    `invitation` None: the link is forged, altered or expired (the page says so, 404).
    """
    if invitation is None:
        return {"state": "unknown", **outcome}
    inviter = one_line(inviter_name(invitation.details) or invitation.sender, DISPLAY_LIMIT)
    return {
        "state": "open",
        "inviter_text": inviter,
        "inviter_id_text": invitation.sender if invitation.sender_verified else "",
        "room_text": one_line(invitation.details.get("room_name", ""), DISPLAY_LIMIT),
        "refused": refusals.refusal_of(invitation, policy.guest_keys),
        "token": refusals.link_token(invitation, policy.guest_keys),
        **outcome,
    }


def landing_page(
    token: str, *, policy: Policy, routing: RoutingTable, max_age_seconds: int, now: datetime
) -> tuple[dict[str, Any], int]:
    """The landing page of the link `token`: its template variables and HTTP status.

    :param routing: says whether the guest will get an account on an invitation-only
        platform or signs in as an agent of a known administration.
    """
    found = landing.open_landing(
        token, secret=policy.landing_secret, max_age_seconds=max_age_seconds, now=now
    )
    details = None
    if found.invitation is not None:
        platform = routing.resolve(found.invitation.address).platform
        details = invitation_context(
            found.invitation,
            found.ephemeral_private_key or "",
            policy,
            web_client_location=web_client_location_of(found.invitation, policy),
            guest=platform.requires_invite,
        )
    return landing.page_context(found, details), found.status


def invitation_context(
    invitation: Invitation,
    ephemeral_private_key: str,
    policy: Policy,
    *,
    web_client_location: str,
    guest: bool = False,
    already_invited: bool = False,
    renewed: bool = False,
) -> dict[str, Any]:
    """The variables of the invitation mail and of its landing page.

    Sydent's names (`room_name`, `sender_display_name`, `bracketed_room_name`, …, cut as
    Sydent cuts them) keep Sydent-layout templates working; our own templates use the
    display forms (`inviter`, `room`), cut, on one line, and defanged so that mail
    clients do not turn a crafted name into a link.

    :param web_client_location: the web client the link opens (the policy's choice).
    :param guest: the address's platform takes invited guests (an account will be
        created); otherwise the address belongs to an administration's platform.
    :param already_invited: other invitations for the address are pending.
    :param renewed: an earlier invitation to the room expired or was revoked unaccepted.
    """
    details = {field: "" for field in OPTIONAL_FIELDS} | dict(invitation.details)
    details.pop(WEB_CLIENT_LOCATION_ARG, None)
    verified = invitation.sender_verified
    context: dict[str, Any] = {
        **details,
        "medium": invitation.medium,
        "address": invitation.address,
        "room_id": invitation.room_id,
        "sender": invitation.sender,
        "token": invitation.token,
        "ephemeral_private_key": ephemeral_private_key,
        "web_client_location": web_client_location,
        "room_name": _shorten(details["room_name"], SYDENT_ROOM_NAME_LIMIT),
        "sender_display_name": _shorten(details["sender_display_name"], SYDENT_SENDER_LIMIT),
        "sender_verified": "yes" if verified else "",
        # v1 store-invite is unauthenticated: the mail and page say so.
        "sender_unverified": not verified,
    }
    context["bracketed_room_name"] = f"({context['room_name']}) " if details["room_name"] else ""
    context["bracketed_verified_sender"] = f"({invitation.sender}) " if verified else ""
    context["sign_url"] = f"{policy.base_url}/_matrix/identity/api/v1/sign-ed25519?" + urlencode(
        {"token": invitation.token, "private_key": ephemeral_private_key}
    )
    context["web_client_link"] = web_client_link(
        context | {"room_name": details["room_name"], "sender_display_name": inviter_name(details)}
    )
    landing_page = landing_url(invitation, ephemeral_private_key, policy)
    inviter = one_line(inviter_name(details) or invitation.sender, DISPLAY_LIMIT)
    room = one_line(details["room_name"], DISPLAY_LIMIT)
    context |= {
        "inviter": defang(inviter),
        "inviter_id": defang(invitation.sender) if verified else "",
        "room": defang(room),
        # Undefanged, for the landing page and the subject.
        "inviter_text": inviter,
        "inviter_id_text": invitation.sender if verified else "",
        "room_text": room,
        # Each language's button adds ?lang=, so the page opens in that language.
        "landing_url": landing_page,
        # The buttons' links as Sydent-layout templates get them (docs/guests.md).
        "landing_link": landing_page + "?lang=fr",
        "landing_link_en": landing_page + "?lang=en",
        "expires_at": invitation.expires_at,
        # The guest's own say (identity.refusals): no address in either link.
        "refuse_url": refusal_url(invitation, policy),
        "report_url": report_url(invitation, policy),
        "guest": guest,
        "already_invited": already_invited,
        "renewed": renewed,
    }
    # Sydent-layout templates take the subject ready-made (Sydent's `subject_header_value`).
    subject = i18n.join_lines(i18n.render_each_language("mail/invite_subject.txt", **context))
    context["subject"] = subject
    context["subject_header_value"] = Header(subject, "utf-8").encode()
    return context


def inviter_name(details: dict[str, str]) -> str:
    return details.get("sender_display_name", "")


def landing_url(invitation: Invitation, ephemeral_private_key: str, policy: Policy) -> str:
    token = landing.landing_token(invitation, ephemeral_private_key, policy.landing_secret)
    return f"{policy.base_url}{landing.LANDING_PATH}/{token}"


def one_line(text: str, limit: int) -> str:
    """Text from the request as one line of at most `limit` characters."""
    return _shorten(" ".join(_CONTROL.sub(" ", text).split()), limit)


def defang(text: str) -> str:
    """Keep mail clients from linking a URL or domain inside a name: a zero-width space
    after each `.`, `:`, `/` and `@` breaks their detection and shows nothing."""
    return _LINKABLE.sub(lambda m: m.group() + "\u200b", text)


def web_client_link(context: dict[str, Any]) -> str:
    """The web client's room link with the parameters it reads for a 3PID invitation.

    Element stores `email`, `signurl`, `room_name`, `room_avatar_url`, `inviter_name`
    and `room_type` from this link, and later POSTs to `signurl` (adding `mxid` to its
    query) to get the `third_party_signed` object it joins with.
    """
    query = urlencode(
        {
            "email": context["address"],
            "signurl": context["sign_url"],
            "room_name": context["room_name"],
            "room_avatar_url": context["room_avatar_url"],
            "inviter_name": context["sender_display_name"],
            "room_type": context["room_type"],
        }
    )
    return f"{context['web_client_location']}/#/room/{quote(context['room_id'])}?{query}"


def _shorten(text: str, limit: int) -> str:
    """Cut to at most `limit` characters, ellipsis included, after the last whole word
    that fits; only a first word longer than that is cut inside."""
    if len(text) <= limit:
        return text
    # A space at position limit - 1 means the word before it ends right at the cut.
    space = max(text.rfind(" ", 0, limit), text.rfind("\u00a0", 0, limit))
    cut = text[:space].rstrip(" ,;:\u00a0") if space > 0 else ""
    return (cut or text[: limit - 1]) + "…"
