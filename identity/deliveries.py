"""Delivering accepted invitations to homeservers with /3pid/onbind, until it works.

Jobs live in the database, so a homeserver that is down, or a restart of this
service, delays a delivery but never loses it. Each web process runs a small worker
thread; `flask deliveries run-due` does one pass by hand.
"""

import logging
import threading
from collections.abc import Callable
from datetime import datetime
from datetime import timedelta
from typing import Any

from flask import Flask

from identity import federation
from identity import keys
from identity.addresses import redact
from identity.extensions import db
from identity.storage import deliveries
from identity.storage.models import Delivery

logger = logging.getLogger(__name__)

ONBIND_PATH = "/_matrix/federation/v1/3pid/onbind"
FIRST_RETRY = timedelta(seconds=10)
LEASE = timedelta(minutes=2)
BATCH = 20

# Posts JSON to a homeserver: (server_name, path, body) → answer; raises FederationError.
Poster = Callable[[str, str, dict[str, Any]], Any]
# Signs a JSON object with the service's long-term key.
Signer = Callable[[dict[str, Any]], dict[str, Any]]


def run_due(*, now: datetime, post: Poster, sign: Signer, max_backoff: timedelta) -> int:
    """Attempt every due delivery once; return how many were delivered.

    Claims are committed before calling homeservers, so that other workers skip
    these jobs while we wait on the network.
    """
    jobs = deliveries.claim_due(now=now, lease_until=now + LEASE, limit=BATCH)
    db.session.commit()
    delivered = 0
    for job in jobs:
        delivered += _attempt(job, now=now, post=post, sign=sign, max_backoff=max_backoff)
        db.session.commit()
    return delivered


def _attempt(job: Delivery, *, now: datetime, post: Poster, sign: Signer, max_backoff) -> int:
    invitation = job.invitation
    if invitation.expires_at <= now or invitation.revoked_at is not None:
        logger.info("Dropping delivery %s: the invitation expired or was revoked", job.id)
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
            "Delivery %s to %s failed (attempt %s): %s",
            job.id,
            job.destination,
            job.attempts,
            e,
        )
        return 0
    job.delivered_at = now
    job.claimed_until = None
    logger.info("Delivered invitation for %s to %s", redact(invitation.address), job.destination)
    return 1


def onbind_body(job: Delivery, sign: Signer) -> dict[str, Any]:
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


def init_app(app: Flask) -> None:
    """Start the delivery thread with the first request (not in CLI commands)."""
    if not app.config["DELIVERY_WORKER_ENABLED"]:
        return
    started = threading.Event()

    @app.before_request
    def start_worker() -> None:
        if not started.is_set():
            started.set()
            threading.Thread(target=_work, args=(app,), daemon=True, name="deliveries").start()


def _work(app: Flask) -> None:
    interval = app.config["DELIVERY_POLL_SECONDS"]
    while True:
        try:
            with app.app_context():
                run_once(app)
        except Exception:
            logger.exception("Delivery pass failed")
        threading.Event().wait(interval)


def run_once(app: Flask) -> int:
    settings = app.extensions["identity.settings"]
    key = keys.current_signing_key()
    return run_due(
        now=app.extensions["identity.clock"].now(),
        post=federation.client().post_json,
        sign=lambda payload: keys.sign(payload, settings.server_name, key),
        max_backoff=timedelta(seconds=app.config["DELIVERY_MAX_BACKOFF_SECONDS"]),
    )
