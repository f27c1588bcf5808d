"""Hot reads of one row: converted by their columns' types as the ORM converts them, and
remembered by the row as read, so that a changed row is converted afresh."""

from datetime import UTC
from datetime import datetime
from datetime import timedelta

from sqlalchemy import update

from identity.extensions import db
from identity.storage import hot_reads
from identity.storage.associations import _FIND
from identity.storage.associations import find_committed
from identity.storage.models import Association

START = datetime(2026, 3, 1, 12, 30, 15, 250_000, tzinfo=UTC)


def _bind(address: str, mxid: str = "@marie:agent.education.tchap.gouv.fr") -> None:
    year = START + timedelta(days=365)
    db.session.add(Association(medium="email", address=address, mxid=mxid, created_at=START,
                               not_before=START, not_after=year))  # fmt: skip
    db.session.commit()


def test_a_row_read_again_is_the_orms_and_a_changed_one_is_read_afresh(app):
    with app.app_context():
        _bind("marie@ac-versailles.fr")
        first = find_committed("email", "marie@ac-versailles.fr")
        again = find_committed("email", "marie@ac-versailles.fr")
        stored = db.session.get(Association, 1)
        assert first == again
        assert (first.mxid, first.created_at, first.not_before, first.not_after) == (
            stored.mxid, stored.created_at, stored.not_before, stored.not_after)  # fmt: skip
        assert first.not_after.tzinfo is UTC

        later = START + timedelta(days=30, microseconds=1)
        db.session.execute(update(Association).values(not_after=later, mxid="@m:other.fr"))
        db.session.commit()
        changed = find_committed("email", "marie@ac-versailles.fr")
        assert (changed.mxid, changed.not_after) == ("@m:other.fr", later)


def test_rows_remembered_are_bounded(app, monkeypatch):
    monkeypatch.setattr(hot_reads, "_REMEMBERED_ROWS", 5)
    with app.app_context():
        for n in range(12):
            _bind(f"agent{n}@ac-versailles.fr", mxid=f"@agent{n}:agent.education.tchap.gouv.fr")
            assert find_committed("email", f"agent{n}@ac-versailles.fr").mxid.startswith(
                f"@agent{n}:"
            )
        remembered = hot_reads._reads().prepared[_FIND].converted
        assert 0 < len(remembered) <= 5
