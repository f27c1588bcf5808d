"""Bulk loads into an empty association table: indexes built after the rows, in the
load's transaction, and nothing left behind by a load that fails half-way."""

from datetime import timedelta

import pytest
from sqlalchemy import insert
from sqlalchemy import text

from identity.extensions import db
from identity.storage import associations
from identity.storage.models import Association

INDEXES = {
    "postgresql": "SELECT c.relname, pg_get_indexdef(i.indexrelid) FROM pg_index i"
    " JOIN pg_class c ON c.oid = i.indexrelid"
    " WHERE i.indrelid = 'association'::regclass ORDER BY c.relname",
    "sqlite": "SELECT name, sql FROM sqlite_master WHERE type = 'index'"
    " AND tbl_name = 'association' ORDER BY name",
}
# Every file of the table, its TOAST table and its indexes: what a load leaves on disk.
SIZE = "SELECT pg_total_relation_size('association')"


def rows(now, count, first=0):
    return [
        {"medium": "email", "address": f"agent{i}@ac-lyon.fr", "mxid": f"@{i}:a.fr",
         "lookup_hash": f"hash{i}", "created_at": now, "not_before": now,
         "not_after": now + timedelta(days=1)}
        for i in range(first, first + count)
    ]  # fmt: skip


def query(statement):
    return db.session.execute(text(statement)).all()


def indexes():
    return query(INDEXES[db.engine.dialect.name])


def test_a_load_into_an_empty_table_builds_the_same_indexes_after_it(app, clock):
    now = clock.now()
    with app.app_context():
        before = indexes()
        with associations.bulk_load() as empty:
            during = indexes()
            db.session.execute(insert(Association), rows(now, 3_000))
        after = indexes()
        db.session.commit()
        postgres = db.engine.dialect.name == "postgresql"
        # The unique constraint holds again, and lookups search the rebuilt indexes.
        with pytest.raises(Exception, match="uq_association_medium|UNIQUE"):
            db.session.execute(insert(Association), rows(now, 1))
        db.session.rollback()
        assert associations.mxids_by_hash(["hash7", "nope"], slot=0, now=now) == {
            "hash7": "@7:a.fr"
        }
    assert empty is postgres
    assert after == before and len(before) >= 5
    # Only the primary key's index stays through the load (on SQLite, all of them).
    assert [name for name, _ in during] == (
        ["pk_association"] if postgres else before_names(before)
    )


def before_names(before):
    return [name for name, _ in before]


def test_a_failed_load_leaves_the_table_and_its_indexes_as_they_were(app, clock):
    now = clock.now()

    class Killed(Exception):
        pass

    with app.app_context():
        postgres = db.engine.dialect.name == "postgresql"
        before = indexes()
        size = query(SIZE) if postgres else None
        with pytest.raises(Killed), associations.bulk_load():
            db.session.execute(insert(Association), rows(now, 20_000))
            assert not postgres or query(SIZE) > size
            raise Killed
        db.session.rollback()
        assert indexes() == before
        assert query("SELECT count(*) FROM association") == [(0,)]
        if postgres:
            # The files written by the load were dropped with its transaction.
            assert query(SIZE) == size


def test_a_table_with_rows_keeps_its_indexes_through_a_load(app, clock):
    now = clock.now()
    with app.app_context():
        db.session.execute(insert(Association), rows(now, 2))
        db.session.commit()
        before = indexes()
        with associations.bulk_load() as empty:
            assert indexes() == before
            db.session.execute(insert(Association), rows(now, 10, first=2))
        db.session.commit()
        assert not empty and indexes() == before
        assert query("SELECT count(*) FROM association") == [(12,)]
