"""Delivering accepted invitations to homeservers with /3pid/onbind, until it works.

Jobs live in the database (the Delivery table), so a homeserver that is down, or a
restart of this service, delays a delivery but never loses it. Each web process runs
a small worker thread (identity.worker); `flask deliveries run-due` does one pass by hand.

A job is claimed with a lease before the homeserver is called, and the claim is
committed first: another worker (thread, process or host) skips it meanwhile.
"""

import logging
from collections.abc import Callable
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from datetime import timedelta
from typing import Any

from identity import federation
from identity import metrics
from identity.addresses import redact
from identity.storage import deliveries
from identity.storage.models import Delivery

logger = logging.getLogger(__name__)

# The identity specification's "Invitation storage" says POST, and homeservers
# (Synapse) serve POST; the server-server API's PUT is a documentation slip.
ONBIND_PATH = "/_matrix/federation/v1/3pid/onbind"
FIRST_RETRY = timedelta(seconds=10)
# Far longer than one call can take (several targets, each with its timeout).
LEASE = timedelta(minutes=10)
# Jobs attempted per pass at most, so that one pass stays short.
MAX_PER_PASS = 100

# Posts JSON to a homeserver: (server_name, path, body) → answer; raises FederationError.
Poster = Callable[[str, str, dict[str, Any]], Any]
# Signs a JSON object with the service's long-term key.
Signer = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class WorkerSettings:
    enabled: bool
    poll_seconds: float
    max_backoff: timedelta

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "WorkerSettings":
        return cls(
            enabled=config["DELIVERY_WORKER_ENABLED"],
            poll_seconds=float(config["DELIVERY_POLL_SECONDS"]),
            max_backoff=timedelta(seconds=config["DELIVERY_MAX_BACKOFF_SECONDS"]),
        )


def process_due(
    *,
    now: datetime,
    post: Poster,
    sign: Signer,
    max_backoff: timedelta,
    commit: Callable[[], None],
) -> int:
    """Claim due jobs one at a time and attempt each; return how many were delivered.

    :param commit: ends a transaction (the caller owns the session): each claim is
        committed before its homeserver is called, each outcome right after.
    """
    delivered = 0
    for _ in range(MAX_PER_PASS):
        job = deliveries.claim_next(now=now, lease_until=now + LEASE)
        commit()
        if job is None:
            break
        delivered += attempt(job, now=now, post=post, sign=sign, max_backoff=max_backoff)
        commit()
    return delivered


def attempt(
    job: Delivery, *, now: datetime, post: Poster, sign: Signer, max_backoff: timedelta
) -> int:
    """Deliver one claimed job, reschedule it, or drop it when its invitation is dead."""
    invitation = job.invitation
    if not invitation.is_open(now):
        logger.info("Dropping delivery %s: its invitation expired or was revoked", job.id)
        deliveries.remove(job)
        return 0
    if invitation.admitted_mxid not in (None, job.mxid):
        # Queued only for the admitted account (invitations.hand_over_pending); a job
        # that names another one must not let a second person in.
        logger.warning("Dropping delivery %s: its invitation admitted another account", job.id)
        deliveries.remove(job)
        return 0
    try:
        post(job.destination, ONBIND_PATH, onbind_body(job, sign))
    except federation.FederationError as e:
        job.attempts += 1
        job.last_error = str(e)[:500]
        job.next_attempt_at = now + backoff(job.attempts, max_backoff)
        job.claimed_until = None
        logger.info(
            "Delivery %s to %s failed (attempt %s): %s", job.id, job.destination, job.attempts, e
        )
        return 0
    job.delivered_at = now
    metrics.INVITATIONS_DELIVERED.inc()
    job.claimed_until = None
    job.last_error = None
    logger.info("Delivered invitation for %s to %s", redact(invitation.address), job.destination)
    return 1


def onbind_body(job: Delivery, sign: Signer) -> dict[str, Any]:
    """The /3pid/onbind body for one invitation.

    The homeserver puts `signed` in the member event's `third_party_invite`; rooms
    accept it because it verifies with the long-term public key that store-invite
    returned and the m.room.third_party_invite event lists.
    """
    invitation = job.invitation
    return {
        "medium": invitation.medium,
        "address": invitation.address,
        "mxid": job.mxid,
        "invites": [
            {
                "medium": invitation.medium,
                "address": invitation.address,
                "mxid": job.mxid,
                "room_id": invitation.room_id,
                "sender": invitation.sender,
                "signed": sign({"mxid": job.mxid, "token": invitation.token}),
            }
        ],
    }


def backoff(attempts: int, cap: timedelta) -> timedelta:
    """10 s, 20 s, 40 s, … capped: a homeserver that is down is not hammered."""
    return min(FIRST_RETRY * 2 ** min(attempts - 1, 20), cap)
