"""The migrations build exactly the schema the models describe, on SQLite and PostgreSQL."""

from datetime import UTC
from datetime import datetime
from datetime import timedelta

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from flask_migrate import downgrade
from flask_migrate import upgrade
from sqlalchemy import insert
from sqlalchemy import inspect
from sqlalchemy import text

from identity.extensions import db
from identity.storage import peppers
from identity.storage.models import Association
from tests.helpers import V2
from tests.helpers import auth
from tests.helpers import register_user
from tests.test_api_binding import sha256_hash


def test_migrations_match_the_models(app):
    with app.app_context(), db.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        differences = compare_metadata(context, db.metadata)
    assert differences == []


def test_a_new_database_starts_with_one_pepper(make_app, tmp_path):
    app = make_app(SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path / 'new.sqlite3'}")
    with app.app_context():
        assert len(peppers.all_peppers()) == 1


def test_0003_hashes_the_unicode_spelling_of_existing_bindings(app, client, fake_homeserver):
    """Bindings made before 0003 at an internationalised domain are found by their
    Unicode spelling once it has run, in whichever slot their pepper is."""
    directory = app.extensions["migrate"].directory
    now = datetime.now(UTC)
    with app.app_context():
        peppers.create_first(now)  # the PostgreSQL test database is emptied between tests
        downgrade(directory=directory, revision="0002")
        pepper = db.session.execute(text("SELECT value, slot FROM pepper")).one()
        for i, address in enumerate(["jean@xn--exmple-cua.fr", "marie@exemple.fr"]):
            key_hash = sha256_hash(address, pepper.value)
            db.session.execute(
                insert(Association).values(
                    id=i + 1,
                    medium="email",
                    address=address,
                    mxid=f"@u{i}:a.fr",
                    lookup_hash=key_hash if pepper.slot == 0 else None,
                    lookup_hash_alt=key_hash if pepper.slot == 1 else None,
                    created_at=now,
                    not_before=now,
                    not_after=now + timedelta(days=1),
                )
            )
        db.session.commit()
        upgrade(directory=directory)
        rows = db.session.execute(
            text("SELECT address, lookup_hash_unicode FROM association ORDER BY id")
        ).all()
    assert rows[0].lookup_hash_unicode == sha256_hash("jean@exämple.fr", pepper.value)
    assert rows[1].lookup_hash_unicode is None
    headers = auth(register_user(client, fake_homeserver))
    known = sha256_hash("jean@exämple.fr", pepper.value)
    body = {"addresses": [known], "algorithm": "sha256", "pepper": pepper.value}
    r = client.post(f"{V2}/lookup", json=body, headers=headers)
    assert r.json == {"mappings": {known: "@u0:a.fr"}}


def test_0007_downgrades_keeping_refused_invitations_revoked(app, client, smtp):
    """Down to 0006, the refusals and reports go and refused invitations stay revoked;
    up again, the tables are back, empty."""
    from tests.test_refusals import invite_and_refuse

    invite_and_refuse(app, client, smtp)
    directory = app.extensions["migrate"].directory
    with app.app_context():
        downgrade(directory=directory, revision="0006")
        tables = set(inspect(db.engine).get_table_names())
        assert not {"guest_refusal", "invite_report", "reported_sender"} & tables
        revoked = db.session.execute(text("SELECT revoked_at FROM invitation")).scalar_one()
        assert revoked is not None
        db.session.commit()
        upgrade(directory=directory)
        assert db.session.execute(text("SELECT count(*) FROM guest_refusal")).scalar_one() == 0
        refused = db.session.execute(text("SELECT refused_at FROM invitation")).scalar_one()
        assert refused is None
