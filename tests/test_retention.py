"""Retention: scheduled purges, and erasing everything held about an address."""

import threading
import time

from sqlalchemy import event
from sqlalchemy import func
from sqlalchemy import select

from app import create_app
from identity import worker
from identity.extensions import db
from identity.storage.models import Invitation
from identity.storage.models import ValidationSession
from tests.conftest import close_app
from tests.helpers import V1
from tests.helpers import landing_link_from_mail
from tests.helpers import relative
from tests.helpers import request_code
from tests.helpers import validate_address
from tests.support import FakeClock

GUEST = "claire@partenaire.example"


def store_invite(client, address=GUEST):
    body = {"medium": "email", "address": address, "room_id": "!r:agent.dinum.tchap.gouv.fr",
            "sender": "@marie:agent.dinum.tchap.gouv.fr"}  # fmt: skip
    assert client.post(f"{V1}/store-invite", json=body).status_code == 200


def count(app, model) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(model))


def test_forget_erases_an_address(app, client, smtp, runner):
    store_invite(client)
    landing = relative(landing_link_from_mail(smtp.last()))
    sid = validate_address(client, smtp, GUEST, secret="f")
    body = {"sid": sid, "client_secret": "f", "mxid": "@claire:agent.externe.tchap.gouv.fr"}
    assert client.post(f"{V1}/3pid/bind", json=body).status_code == 200
    request_code(client, GUEST, secret="another")  # a session in progress
    store_invite(client, "someone.else@partenaire.example")

    # It asks first: anything but yes erases nothing.
    query = {"medium": "email", "address": GUEST}
    refused = runner.invoke(args=["threepid", "forget", "Claire@Partenaire.example"], input="\n")
    assert refused.exit_code == 1 and "Aborted" in refused.output
    assert f"Erase every binding, validation session and invitation of {GUEST}?" in refused.output
    assert client.get(f"{V1}/lookup", query_string=query).json["mxid"]
    result = runner.invoke(args=["threepid", "forget", "Claire@Partenaire.example"], input="y\n")
    assert result.exit_code == 0, result.output
    assert "Erased 1 bindings, 2 validation sessions, 1 invitations." in result.output
    assert client.get(f"{V1}/lookup", query_string=query).json == {}
    assert client.get(landing).status_code == 404
    assert count(app, Invitation) == 1  # someone else's stays
    again = runner.invoke(args=["threepid", "forget", GUEST, "--yes"])  # a script
    assert "Erased 0 bindings, 0 validation sessions, 0 invitations." in again.output
    assert runner.invoke(args=["threepid", "forget", "nope", "--yes"]).exit_code == 2


def test_the_background_thread_purges_on_schedule(make_app, smtp, clock):
    app = make_app(
        DELIVERY_WORKER_ENABLED=True, DELIVERY_POLL_SECONDS=0.05, PURGE_INTERVAL_SECONDS=0.1,
        INVITE_RETENTION_DAYS=10,
    )  # fmt: skip
    client = app.test_client()
    store_invite(client)
    request_code(client, "agent@ac-versailles.fr")
    clock.advance(days=30 + 5)  # the invitation expired 5 days ago; the session too
    store_invite(client, "recent@partenaire.example")
    deadline = time.monotonic() + 5
    while count(app, ValidationSession) != 0:
        assert time.monotonic() < deadline, "the expired session was not purged"
        time.sleep(0.05)
    assert count(app, Invitation) == 2  # expired for 5 days only: kept 10
    clock.advance(days=6)
    deadline = time.monotonic() + 5
    while count(app, Invitation) != 1:
        assert time.monotonic() < deadline, "the long-expired invitation was not purged"
        time.sleep(0.05)
    # make_app stops the thread, before it disposes the engine, on every path.


class HeldPassClock(FakeClock):
    """A clock that holds each pass of the delivery thread for a moment, as a pass
    busy with a slow homeserver would be."""

    def __init__(self) -> None:
        super().__init__()
        self.in_pass = threading.Event()

    def now(self):
        if threading.current_thread().name == "deliveries":
            self.in_pass.set()
            time.sleep(0.3)
        return super().now()


def test_stopping_the_background_thread_waits_for_its_pass(config):
    """Once `worker.stop` returns the thread uses the database no more, so the engine
    can be disposed: a pass still running would check a connection out of a disposed
    pool, one that nothing closes (a ResourceWarning when it is collected)."""
    clock = HeldPassClock()
    app = create_app({**config, "DELIVERY_WORKER_ENABLED": True, "DELIVERY_POLL_SECONDS": 0.05},
                     clock=clock)  # fmt: skip
    checkouts = []
    try:
        with app.app_context():
            event.listen(db.engine, "checkout", lambda *_: checkouts.append(time.monotonic()))
        worker.start(app)
        assert clock.in_pass.wait(5)
        worker.stop(app)
        stopped = time.monotonic()
        time.sleep(0.6)  # more than the held pass lasts
        assert [t for t in checkouts if t > stopped] == []
    finally:
        close_app(app)
