"""Pepper rotation: lookups keep working throughout, and a stale pepper is told the new one."""

import base64
import hashlib
from datetime import timedelta

import pytest

from identity import lookup
from identity.extensions import db
from identity.services import services
from identity.storage import peppers
from identity.storage.models import Association
from tests.helpers import V1
from tests.helpers import V2
from tests.helpers import auth
from tests.helpers import register_user
from tests.helpers import validate_address

ADDRESSES = [f"agent{i}@ac-versailles.fr" for i in range(5)]


def hashed(address, pepper):
    digest = hashlib.sha256(f"{address} email {pepper}".encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def bind(client, smtp, address):
    sid = validate_address(client, smtp, address, secret="p")
    body = {"sid": sid, "client_secret": "p", "mxid": f"@{address.split('@')[0]}:a.fr"}
    assert client.post(f"{V1}/3pid/bind", json=body).status_code == 200


@pytest.fixture
def user(client, fake_homeserver):
    return auth(register_user(client, fake_homeserver, "alice"))


def look_up(client, user, pepper, addresses):
    body = {"algorithm": "sha256", "pepper": pepper,
            "addresses": [hashed(a, pepper) for a in addresses]}  # fmt: skip
    return client.post(f"{V2}/lookup", json=body, headers=user)


def current_pepper(client, user):
    return client.get(f"{V2}/hash_details", headers=user).json["lookup_pepper"]


def test_rotation_without_downtime(app, client, smtp, user):
    for address in ADDRESSES[:4]:
        bind(client, smtp, address)
    old = current_pepper(client, user)
    seen_during = []

    def during_rotation(done):
        # Between batches: lookups with the old pepper still answer, and a bind made
        # now is hashed with both peppers.
        assert current_pepper(client, user) == old
        r = look_up(client, user, old, ADDRESSES[:4])
        seen_during.append(len(r.json["mappings"]))
        if done == 1:
            bind(client, smtp, ADDRESSES[4])

    with app.app_context():
        new = lookup.rotate_pepper(
            now=services(app).clock.now(), batch=1,
            commit=db.session.commit, progress=during_rotation,
        )  # fmt: skip
    assert seen_during == [4, 4, 4, 4] and new != old
    assert current_pepper(client, user) == new
    r = look_up(client, user, old, ADDRESSES)
    assert (r.status_code, r.json["errcode"], r.json["lookup_pepper"]) == (
        400, "M_INVALID_PEPPER", new,
    )  # fmt: skip
    assert len(look_up(client, user, new, ADDRESSES).json["mappings"]) == 5


def test_an_interrupted_rotation_resumes_and_rotations_repeat(app, client, smtp, user, runner):
    for address in ADDRESSES[:3]:
        bind(client, smtp, address)

    class Interrupted(Exception):
        pass

    def stop(done):
        raise Interrupted

    with app.app_context(), pytest.raises(Interrupted):
        lookup.rotate_pepper(
            now=services(app).clock.now(), batch=1,
            commit=db.session.commit, progress=stop,
        )  # fmt: skip
    old = current_pepper(client, user)
    assert len(look_up(client, user, old, ADDRESSES).json["mappings"]) == 3
    result = runner.invoke(args=["lookup", "rotate-pepper", "--batch", "2"])
    assert result.exit_code == 0, result.output
    assert "2 binding(s) hashed" in result.output  # one was done before the interruption
    second = current_pepper(client, user)
    assert second != old and len(look_up(client, user, second, ADDRESSES).json["mappings"]) == 3
    # And again: the hashes go back to the first slot.
    assert runner.invoke(args=["lookup", "rotate-pepper"]).exit_code == 0
    third = current_pepper(client, user)
    assert third not in (old, second)
    assert len(look_up(client, user, third, ADDRESSES).json["mappings"]) == 3


def test_a_row_committed_behind_the_rotation_is_hashed_too(app, client, user):
    """A bind that read the peppers before the rotation began has no hash for the new
    one; committed after the rotation passed its id, it is still hashed before the new
    pepper becomes current (the rotation pages by id, then looks once more from the start)."""
    now = services(app).clock.now()
    with app.app_context():

        def row(row_id, address, with_peppers=None):
            association = Association(id=row_id, medium="email", address=address,
                                      mxid=f"@{row_id}:a.fr", created_at=now, not_before=now,
                                      not_after=now + timedelta(days=1))  # fmt: skip
            lookup.hash_association(association, now=now, with_peppers=with_peppers)
            db.session.add(association)
            db.session.commit()

        for row_id, address in zip((10, 20, 30), ADDRESSES, strict=False):
            row(row_id, address)
        stale = [peppers.current(now)]

        def late_bind(done):
            if done == 2:  # ids 10 and 20 are done
                row(5, ADDRESSES[3], with_peppers=stale)

        new = lookup.rotate_pepper(now=now, batch=1, commit=db.session.commit, progress=late_bind)
    assert len(look_up(client, user, new, ADDRESSES).json["mappings"]) == 4
