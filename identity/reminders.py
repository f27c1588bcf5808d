"""One reminder before an invitation expires, sent exactly once across workers and hosts.

A pending invitation (Invitation.pending_at: neither expired, revoked, refused nor
accepted) made longer than INVITE_REMINDER_BEFORE_EXPIRY_SECONDS before its expiry
gets one reminder mail that long before it. Each process's background thread
(identity.worker) and `flask invites remind-due` run `send_due`.

Exactly once, as the onbind deliveries: a reminder is claimed in the database with a
lease (a conditional UPDATE, committed before the SMTP server is called), sent, then
marked sent in a transaction of its own, right after the server accepted it. A worker
that dies before the server accepted the mail leaves a claim that lapses at the end
of the lease: the reminder is sent then. A failed attempt waits, then is retried,
MAX_ATTEMPTS claims at most. The one window for a second mail is a crash between the
server's acceptance and the commit of `reminded_at` (docs/guests.md).
"""

import logging
from collections.abc import Callable
from datetime import datetime
from datetime import timedelta

from identity import landing
from identity import metrics
from identity.addresses import redact
from identity.errors import MatrixError
from identity.invitations import InvitationMail
from identity.invitations import InviteSender
from identity.invitations import Policy
from identity.invitations import web_client_location_of
from identity.routing import RoutingTable
from identity.storage import invites

logger = logging.getLogger(__name__)

# Longer than a send can last (MAIL_TIMEOUT on each step of the SMTP conversation).
LEASE = timedelta(minutes=10)
# Claims of one reminder at most, crashed and failed attempts included.
MAX_ATTEMPTS = 6
FIRST_RETRY = timedelta(minutes=1)
MAX_RETRY = timedelta(hours=1)
# Reminders sent per pass at most, so that one pass stays short.
MAX_PER_PASS = 50


def send_due(
    *,
    clock: Callable[[], datetime],
    policy: Policy,
    routing: RoutingTable,
    send: InviteSender,
    commit: Callable[[], None],
    limit: int = MAX_PER_PASS,
) -> int:
    """Claim, send and mark the due reminders one at a time; return how many were sent.

    :param clock: the current time, read afresh for each claim and each outcome: a
        pass may last a while (a slow SMTP server), and a lease must start when its
        claim is taken.
    :param send: words and mails the reminder (`presentation.send_invitation`, the
        invitation's own path: same headers, another template).
    :param commit: ends a transaction (the caller owns the session): each claim is
        committed before the SMTP server is called, each outcome right after.
    """
    lead = policy.reminder_lead
    if lead <= timedelta(0):
        return 0
    sent = 0
    candidates = invites.due_reminders(
        now=clock(), lead=lead, max_attempts=MAX_ATTEMPTS, limit=limit
    )
    commit()
    for invitation_id in candidates:
        now = clock()
        claimed = invites.claim_reminder(
            invitation_id, now=now, lead=lead, max_attempts=MAX_ATTEMPTS, until=now + LEASE
        )
        commit()
        if not claimed:
            continue  # another worker has it, or it is no longer due
        sent += attempt(invitation_id, clock=clock, policy=policy, routing=routing, send=send)
        commit()
    return sent


def attempt(
    invitation_id: int,
    *,
    clock: Callable[[], datetime],
    policy: Policy,
    routing: RoutingTable,
    send: InviteSender,
) -> int:
    """Send one claimed reminder and record the outcome (flushed: the caller commits)."""
    invitation = invites.by_id(invitation_id)
    if invitation is None:
        return 0  # deleted meanwhile (`threepid forget`)
    private_key = landing.unseal_key(invitation.reminder_key or "", policy.landing_secret)
    if private_key is None:
        # The landing secret changed since the invitation was made: its links no longer
        # open either.
        logger.warning("Invitation %s: its key no longer opens, no reminder", invitation.id)
        invites.give_up_reminder(invitation.id)
        metrics.INVITATION_REMINDERS.labels("given_up").inc()
        return 0
    mail = InvitationMail(
        invitation,
        ephemeral_private_key=private_key,
        web_client_location=web_client_location_of(invitation, policy),
        guest=routing.resolve(invitation.address).platform.requires_invite,
        already_invited=False,
        kind="reminder",
    )
    try:
        send(invitation.mailbox or invitation.address, mail, brand=None)
    except MatrixError as e:  # M_EMAIL_SEND_ERROR, M_LIMIT_EXCEEDED, M_INVALID_EMAIL
        attempts = invitation.reminder_attempts
        retry = clock() + retry_delay(attempts)
        invites.retry_reminder_at(invitation.id, retry)
        metrics.INVITATION_REMINDERS.labels("failed").inc()
        logger.info(
            "Reminder of invitation %s to %s not sent (attempt %s of %s): %s",
            invitation.id, redact(invitation.address), attempts, MAX_ATTEMPTS, e.errcode,
        )  # fmt: skip
        return 0
    invites.mark_reminded(invitation.id, now=clock())
    metrics.INVITATION_REMINDERS.labels("sent").inc()
    logger.info("Reminder of invitation %s sent to %s", invitation.id, redact(invitation.address))
    return 1


def retry_delay(attempts: int) -> timedelta:
    """1 min, 2, 4, … capped at an hour: a mail server that is down is not hammered."""
    return min(FIRST_RETRY * 2 ** min(max(attempts - 1, 0), 20), MAX_RETRY)
