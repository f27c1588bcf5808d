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


def claim_due(*, now: datetime, lease_until: datetime, limit: int) -> list[Delivery]:
    """Claim up to `limit` due jobs until `lease_until`.

    Row locks make concurrent workers skip each other's jobs (PostgreSQL's
    SKIP LOCKED; SQLite serialises writers anyway), and the lease keeps a job from
    being taken again while its worker is calling the homeserver.
    """
    jobs = list(
        db.session.scalars(
            select(Delivery)
            .where(
                Delivery.delivered_at.is_(None),
                Delivery.next_attempt_at <= now,
                or_(Delivery.claimed_until.is_(None), Delivery.claimed_until <= now),
            )
            .order_by(Delivery.next_attempt_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    )
    for job in jobs:
        job.claimed_until = lease_until
    db.session.flush()
    return jobs


def remove(delivery: Delivery) -> None:
    db.session.delete(delivery)
    db.session.flush()


def pending_count() -> int:
    return db.session.scalar(
        select(func.count()).select_from(Delivery).where(Delivery.delivered_at.is_(None))
    )
