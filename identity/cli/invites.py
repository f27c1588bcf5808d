"""`flask invites revoke|list|purge-expired|remind-due|refusals|reports`: pending 3PID
invitations for admins, their reminders, and the guests' refusals and reports."""

import logging
from datetime import datetime
from datetime import timedelta

import click

from identity import refusals
from identity import worker
from identity.accounts import server_of
from identity.addresses import normalise_email
from identity.addresses import redact
from identity.cli.group import Group
from identity.errors import MatrixError
from identity.extensions import db
from identity.services import services
from identity.storage import invites
from identity.storage import refusals as refusal_store

logger = logging.getLogger(__name__)

# Characters of a token `list` shows; `revoke` accepts any unique prefix.
TOKEN_SHOWN = 8

group = Group("invites", help="Invitations stored by homeservers (store-invite).")


def _now() -> datetime:
    return services().clock.now()


def _address(address: str | None) -> str | None:
    """The normalised form of an --address option; a bad address is a usage error."""
    if address is None:
        return None
    try:
        return normalise_email(address)
    except MatrixError as e:
        raise click.BadParameter(e.error, param_hint="'--address'") from None


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")


@group.command("revoke")
@click.argument("token", required=False)
@click.option("--address", help="Revoke every invitation of this email address.")
@click.option("--room", "room_id", help="Revoke every invitation to this room ID.")
def revoke(token: str | None, address: str | None, room_id: str | None) -> None:
    """Revoke the invitation TOKEN (or a unique prefix of it, as `list` shows it), or
    those of an --address or a --room.

    A revoked invitation can no longer be accepted, and its ephemeral key is no longer
    valid, as if it had expired.
    """
    given = [value for value in (token, address, room_id) if value is not None]
    if len(given) != 1:
        raise click.UsageError("Give exactly one of TOKEN, --address or --room.")
    if not given[0].strip():
        raise click.UsageError("The invitation selector must not be empty.")
    if token is not None:
        token = _token_by_prefix(token)
    count = invites.revoke(now=_now(), token=token, address=_address(address), room_id=room_id)
    db.session.commit()
    if token is not None and count == 0:
        click.echo(f"Revoked 0 invitation(s): {_shown(token)} was already revoked.")
        return
    click.echo(f"Revoked {count} invitation(s).")


def _shown(token: str) -> str:
    """The token as `list` shows it: its first characters only."""
    return f"{token[:TOKEN_SHOWN]}…"


def _token_by_prefix(prefix: str) -> str:
    """The whole token of the one invitation whose token starts with `prefix`.

    `list` shows a prefix ending with "…", which admins copy as it is.

    :raises click.ClickException: (exit 1) when no invitation or several match.
    """
    prefix = prefix.strip().removesuffix("…").removesuffix("...")
    if not prefix:
        raise click.UsageError("The invitation selector must not be empty.")
    found = invites.by_token_prefix(prefix)
    if not found:
        raise click.ClickException(f"No invitation's token starts with {prefix!r}.")
    if len(found) > 1:
        raise click.ClickException(
            f"Several invitations' tokens start with {prefix!r}: give more characters."
        )
    return found[0].token


@group.command("list")
@click.option("--address", help="Only the invitations of this email address.")
@click.option("--room", "room_id", help="Only the invitations to this room ID.")
@click.option("--sender", help="Only the invitations sent by this Matrix user ID.")
@click.option(
    "--state", type=click.Choice(invites.STATES), help="Only the invitations in this state."
)
@click.option(
    "--limit",
    default=50,
    show_default=True,
    type=click.IntRange(min=1),
    help="At most this many invitations, newest first.",
)
@click.option("--show-addresses", is_flag=True, help="Print whole addresses (redacted otherwise).")
def list_command(
    address: str | None,
    room_id: str | None,
    sender: str | None,
    state: str | None,
    limit: int,
    show_addresses: bool,
) -> None:
    """The newest invitations: created, state, admitted account's server, address, room,
    sender, expiry, token prefix (which `revoke` accepts)."""
    now = _now()
    found = invites.search(
        address=_address(address),
        room_id=room_id,
        sender=sender,
        state=state,
        now=now,
        limit=limit,
    )
    for invitation in found:
        shown = invitation.address if show_addresses else redact(invitation.address)
        click.echo(
            "  ".join(
                [
                    _when(invitation.created_at),
                    f"{invites.state_of(invitation, now):<8}",
                    # The server of the account it admitted: the whole Matrix ID would
                    # name the guest in terminals and logs.
                    server_of(invitation.admitted_mxid or "") or "-",
                    shown,
                    invitation.room_id,
                    invitation.sender,
                    f"expires {_when(invitation.expires_at)}",
                    _shown(invitation.token),
                ]
            )
        )
    click.echo(f"{len(found)} invitation(s).")


@group.command("purge-expired")
@click.option(
    "--older-than",
    "days",
    default=0,
    show_default=True,
    type=click.IntRange(min=0),
    help="Keep invitations expired for fewer than this many days.",
)
def purge_expired(days: int) -> None:
    """Delete expired invitations, with their ephemeral keys and delivery jobs."""
    count = invites.delete_expired(now=_now(), older_than=timedelta(days=days))
    db.session.commit()
    click.echo(f"Deleted {count} expired invitation(s).")


@group.command("remind-due")
def remind_due() -> None:
    """Send the due invitation reminders now (each instance's background thread does too)."""
    sent = worker.run_reminders(clock=services().clock.now)
    done, waiting = invites.reminder_counts(now=_now())
    click.echo(f"Sent {sent} reminder(s); {done} sent in all, {waiting} still to send.")


# -- the guests' own say (identity.refusals) -----------------------------------


@group.group("refusals")
def refusals_group() -> None:
    """Guests' refusals of invitations (kept as keyed hashes, never addresses)."""


@refusals_group.command("list")
@click.option(
    "--limit",
    default=20,
    show_default=True,
    type=click.IntRange(min=1),
    help="At most this many of the most refused senders.",
)
def refusals_list(limit: int) -> None:
    """How many refusals of each scope are kept, and the senders most refused."""
    counts = refusal_store.refusal_counts()
    click.echo(f"Refusals of every invitation from the platform: {counts.get(refusals.ALL, 0)}")
    click.echo(f"Refusals of one sender's invitations: {counts.get(refusals.SENDER, 0)}")
    for sender, count in refusal_store.most_refused_senders(limit):
        click.echo(f"  {count:>6}  {sender}")


@refusals_group.command("lift")
@click.argument("address")
@click.option("--sender", help="Only the refusal of this Matrix user ID's invitations.")
@click.option(
    "--all",
    "platform",
    is_flag=True,
    help="Only the refusal of every invitation from the platform.",
)
def refusals_lift(address: str, sender: str | None, platform: bool) -> None:
    """Lift the refusals of ADDRESS (all of them, or one with --sender or --all), at its
    owner's request. The audit log names neither the address nor its hash."""
    if sender is not None and platform:
        raise click.UsageError("Give at most one of --sender or --all.")
    try:
        key = normalise_email(address)
    except MatrixError as e:
        raise click.BadParameter(e.error, param_hint="'ADDRESS'") from None
    scope = refusals.ALL if platform else refusals.SENDER if sender is not None else None
    count = refusals.lift(
        key, keys=services().invitation_policy().guest_keys, scope=scope, sender=sender
    )
    db.session.commit()
    click.echo(f"Lifted {count} refusal(s).")


@group.group("reports")
def reports_group() -> None:
    """Senders reported by guests who do not know them ("I don't know this person")."""


@reports_group.command("list")
@click.option(
    "--limit",
    default=50,
    show_default=True,
    type=click.IntRange(min=1),
    help="At most this many senders, blocked ones first, then the most reported.",
)
def reports_list(limit: int) -> None:
    """Reported senders: distinct reporters within INVITE_REPORTS_WINDOW_DAYS, in all,
    and whether their invitations are blocked."""
    rule = services().invitation_policy().reports
    found = refusal_store.reported_senders(_now() - rule.window, limit)
    for sender, recent, total, blocked_at in found:
        state = f"blocked since {_when(blocked_at)}" if blocked_at is not None else "not blocked"
        click.echo(f"{recent:>6} recent  {total:>6} in all  {state}  {sender}")
    click.echo(f"{len(found)} reported sender(s).")


@reports_group.command("clear")
@click.argument("sender")
def reports_clear(sender: str) -> None:
    """Forget the reports of SENDER and lift its block: its invitations go out again."""
    reports, was_blocked = refusal_store.clear_sender(sender)
    db.session.commit()
    logger.warning(
        "Audit: an administrator cleared %s report(s) of %s%s",
        reports, sender, " and lifted its block" if was_blocked else "",
    )  # fmt: skip
    click.echo(
        f"Cleared {reports} report(s) of {sender}"
        + ("; its invitations are no longer blocked." if was_blocked else ".")
    )
