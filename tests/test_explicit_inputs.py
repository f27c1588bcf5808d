"""Domain functions take their settings, key and mailer as arguments: they run in an app
that holds nothing but the database (no configuration, no services of ours)."""

from datetime import timedelta

import pytest
import signedjson.key
from flask import Flask

from identity import invitations
from identity import keys
from identity import reminders
from identity import validation
from identity.extensions import db
from identity.services import services
from identity.storage import invites
from identity.storage import sessions


@pytest.fixture
def bare(app, db_url):
    """An app with the test database (migrated by `app`) and nothing else."""
    bare = Flask("bare")
    bare.config["SQLALCHEMY_DATABASE_URI"] = db_url
    db.init_app(bare)
    yield bare
    with bare.app_context():
        db.engine.dispose()


def test_store_invite_needs_no_app_configuration(app, bare, clock):
    settings, table = services(app).settings, services(app).routing.table()
    signing_key = signedjson.key.generate_signing_key("0")
    policy = invitations.Policy.from_settings(settings, signing_key)
    sent = []

    def send(to, context, *, brand):
        sent.append((to, context, brand))

    with bare.app_context():
        response = invitations.store_invite(
            "email",
            "Marie.Dupont@Example.FR",
            "!room:tchap.test",
            "@alice:tchap.test",
            {"room_name": "Projet"},
            caller="@alice:tchap.test",
            now=clock.now(),
            policy=policy,
            routing=table,
            send=send,
        )
        db.session.commit()
        stored = invites.by_token(response["token"])
        assert stored is not None and stored.address == "marie.dupont@example.fr"
    assert [(to, brand) for to, _, brand in sent] == [("Marie.Dupont@example.fr", None)]
    assert response["public_key"] == keys.public_key_base64(signing_key)
    # Its reminder, when due, takes the same arguments: the policy, routing, a sender.
    clock.advance(days=27)
    with bare.app_context():
        assert reminders.send_due(
            clock=clock.now, policy=policy, routing=table, send=send, commit=db.session.commit
        )
        [(to, reminder, brand)] = sent[1:]
        assert (to, reminder.kind, brand) == ("Marie.Dupont@example.fr", "reminder", None)
        assert reminder.invitation.token == response["token"]


def test_request_code_needs_no_app_configuration(app, bare, clock):
    policy = validation.Policy(lifetime=timedelta(hours=24), max_attempts=5, next_link_hosts=None)
    codes = []
    with bare.app_context():
        session = validation.request_code(
            "Jean@Example.FR",
            "secret",
            1,
            None,
            brand=None,
            now=clock.now(),
            policy=policy,
            send=lambda session, code: codes.append(code),
        )
        db.session.commit()
        assert sessions.get(session.sid, "secret") is not None
    assert len(codes) == 1
