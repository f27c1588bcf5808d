"""Every query on the onbind delivery queue."""

from datetime import datetime

from sqlalchemy import func
from sqlalchemy import or_
from sqlalchemy import select

from identity.extensions import db
from identity.storage.models import Delivery


def add(delivery: Delivery) -> None:
    db.session.add(delivery)
    db.session.flush()


def claim_next(*, now: datetime, lease_until: datetime) -> Delivery | None:
    """Claim the most overdue job until `lease_until`, or return None when none is due.

    The row lock makes concurrent workers skip each other's job (PostgreSQL's
    SKIP LOCKED; SQLite serialises writers anyway). Once the claim is committed, the
    lease keeps the job from being taken again while its worker calls the homeserver.
    """
    job = db.session.scalar(
        select(Delivery)
        .where(
            Delivery.delivered_at.is_(None),
            Delivery.next_attempt_at <= now,
            or_(Delivery.claimed_until.is_(None), Delivery.claimed_until <= now),
        )
        .order_by(Delivery.next_attempt_at, Delivery.id)
        .limit(1)
        .with_for_update(skip_locked=True)
    )
    if job is not None:
        job.claimed_until = lease_until
        db.session.flush()
    return job


def remove(delivery: Delivery) -> None:
    db.session.delete(delivery)
    db.session.flush()


def pending_count() -> int:
    query = select(func.count()).select_from(Delivery).where(Delivery.delivered_at.is_(None))
    return db.session.scalar(query) or 0


def queue_state() -> tuple[int, datetime | None]:
    """How many deliveries wait, and since when the oldest of them has waited."""
    query = select(func.count(), func.min(Delivery.created_at)).where(
        Delivery.delivered_at.is_(None)
    )
    count, oldest = db.session.execute(query).one()
    return count or 0, oldest
