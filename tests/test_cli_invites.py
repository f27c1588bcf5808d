"""`flask invites revoke|list|purge-expired`, on invitations stored through the HTTP API."""

from urllib.parse import urlencode

import pytest
from sqlalchemy import func
from sqlalchemy import select

from identity.extensions import db
from identity.storage import invites
from identity.storage.models import Delivery
from identity.storage.models import EphemeralKey
from identity.storage.models import Invitation
from tests.helpers import V1
from tests.helpers import landing_link_from_mail
from tests.helpers import query_of
from tests.helpers import relative
from tests.helpers import validate_address
from tests.helpers import web_client_link_from_page

GUEST = "claire.martin@partenaire.example"
OTHER_GUEST = "paul.durand@prestataire.example"
ROOM = "!projetx:agent.dinum.tchap.gouv.fr"
OTHER_ROOM = "!projety:agent.dinum.tchap.gouv.fr"
SENDER = "@marie.dupont-numerique.gouv.fr:agent.dinum.tchap.gouv.fr"
OTHER_SENDER = "@jean.petit-interieur.gouv.fr:agent.interieur.tchap.gouv.fr"


def store(client, address=GUEST, *, room_id=ROOM, sender=SENDER) -> dict:
    """Store an invitation with store-invite; return the answer (token, public_keys, …)."""
    body = {"medium": "email", "address": address, "room_id": room_id, "sender": sender}
    r = client.post(f"{V1}/store-invite", json={**body, "room_name": "Projet X"})
    assert r.status_code == 200, r.json
    return r.json


def ephemeral_key(answer: dict) -> str:
    return answer["public_keys"][1]["public_key"]


def key_is_valid(client, answer: dict) -> bool:
    r = client.get(
        f"{V1}/pubkey/ephemeral/isvalid", query_string={"public_key": ephemeral_key(answer)}
    )
    assert r.status_code == 200
    return r.json["valid"]


def invoke(runner, *args: str) -> list[str]:
    """Run `flask invites …`, expect success, and return the output lines."""
    result = runner.invoke(args=["invites", *args])
    assert result.exit_code == 0, result.output
    return result.output.splitlines()


def revoked_tokens(app) -> set[str]:
    with app.app_context():
        query = select(Invitation.token).where(Invitation.revoked_at.is_not(None))
        return set(db.session.scalars(query))


def stored_tokens(app) -> set[str]:
    with app.app_context():
        return set(db.session.scalars(select(Invitation.token)))


def count(app, model) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(model))


def bind(client, smtp, address, mxid="@claire:agent.externe.tchap.gouv.fr") -> None:
    sid = validate_address(client, smtp, address, secret="bind-secret")
    body = {"sid": sid, "client_secret": "bind-secret", "mxid": mxid}
    r = client.post(f"{V1}/3pid/bind", json=body)
    assert r.status_code == 200, r.json


# -- revoke ----------------------------------------------------------------------


def test_revoke_by_token(app, client, smtp, runner, clock):
    first, second = store(client), store(client, OTHER_GUEST)
    assert key_is_valid(client, first) and key_is_valid(client, second)

    assert invoke(runner, "revoke", first["token"]) == ["Revoked 1 invitation(s)."]

    assert revoked_tokens(app) == {first["token"]}
    revoked_at = clock.now()
    with app.app_context():
        assert invites.by_token(first["token"]).revoked_at == revoked_at
    assert key_is_valid(client, first) is False
    assert key_is_valid(client, second) is True
    # A revoked invitation can no longer be signed for, as if it had expired.
    body = {"mxid": "@claire:agent.externe.tchap.gouv.fr", "token": first["token"]}
    r = client.post(f"{V1}/sign-ed25519", json={**body, "private_key": "x"})
    assert (r.status_code, r.json["errcode"]) == (403, "M_FORBIDDEN")
    # Revoking again changes nothing.
    clock.advance(hours=1)
    assert invoke(runner, "revoke", first["token"]) == [
        f"Revoked 0 invitation(s): {first['token'][:8]}… was already revoked."
    ]
    with app.app_context():
        assert invites.by_token(first["token"]).revoked_at == revoked_at  # not moved


def test_revoke_by_the_prefix_that_list_shows(app, client, smtp, runner):
    first, second = store(client), store(client, OTHER_GUEST)
    shown = {line.split()[-1] for line in invoke(runner, "list")[:-1]}
    prefix = first["token"][:8] + "…"
    assert prefix in shown

    assert invoke(runner, "revoke", prefix) == ["Revoked 1 invitation(s)."]
    assert invoke(runner, "revoke", second["token"][:10]) == ["Revoked 1 invitation(s)."]

    assert revoked_tokens(app) == {first["token"], second["token"]}
    assert not key_is_valid(client, first) and not key_is_valid(client, second)


@pytest.mark.parametrize(
    ("selector", "message"),
    [
        ("unknown-token", "No invitation's token starts with 'unknown-token'."),
        ("ab_", "No invitation's token starts with 'ab_'."),  # _ is no wildcard
        ("abc", "Several invitations' tokens start with 'abc': give more characters."),
    ],
)
def test_revoke_refuses_a_prefix_matching_none_or_several(
    app, client, smtp, runner, monkeypatch, selector, message
):
    tokens = iter(["abcd" + "1" * 39, "abce" + "2" * 39, "abXd" + "3" * 39])
    monkeypatch.setattr("identity.invitations.new_token", lambda nbytes: next(tokens))
    answers = [store(client), store(client, OTHER_GUEST), store(client, "x@partenaire.example")]

    result = runner.invoke(args=["invites", "revoke", selector])

    assert result.exit_code == 1, result.output
    assert result.output == f"Error: {message}\n"
    assert revoked_tokens(app) == set()
    assert all(key_is_valid(client, answer) for answer in answers)


def test_revoke_by_address_normalises_it(app, client, smtp, runner):
    in_x = store(client, GUEST, room_id=ROOM)
    in_y = store(client, GUEST, room_id=OTHER_ROOM)
    other = store(client, OTHER_GUEST, room_id=ROOM)

    lines = invoke(runner, "revoke", "--address", "  Claire.Martin@PARTENAIRE.example ")

    assert lines == ["Revoked 2 invitation(s)."]
    assert revoked_tokens(app) == {in_x["token"], in_y["token"]}
    assert not key_is_valid(client, in_x) and not key_is_valid(client, in_y)
    assert key_is_valid(client, other)


def test_revoke_by_room(app, client, smtp, runner):
    in_x = store(client, GUEST, room_id=ROOM)
    in_y = store(client, GUEST, room_id=OTHER_ROOM)
    other_in_y = store(client, OTHER_GUEST, room_id=OTHER_ROOM)

    assert invoke(runner, "revoke", "--room", OTHER_ROOM) == ["Revoked 2 invitation(s)."]

    assert revoked_tokens(app) == {in_y["token"], other_in_y["token"]}
    assert key_is_valid(client, in_x)
    assert not key_is_valid(client, in_y) and not key_is_valid(client, other_in_y)


@pytest.mark.parametrize(
    "selectors",
    [
        [],
        ["TOKEN", "--room", ROOM],
        ["--address", GUEST, "--room", ROOM],
        ["TOKEN", "--address", GUEST],
        ["--room", ""],
    ],
)
def test_revoke_needs_exactly_one_selector(app, client, smtp, runner, selectors):
    answer = store(client)
    args = [answer["token"] if arg == "TOKEN" else arg for arg in selectors]

    result = runner.invoke(args=["invites", "revoke", *args])

    assert result.exit_code == 2, result.output
    assert "Usage:" in result.output
    assert "Revoked" not in result.output
    assert revoked_tokens(app) == set()
    assert key_is_valid(client, answer)


def test_revoke_refuses_an_invalid_address(app, client, smtp, runner):
    store(client)
    result = runner.invoke(args=["invites", "revoke", "--address", "pas-une-adresse"])
    assert result.exit_code == 2
    assert "Invalid value for '--address'" in result.output
    assert revoked_tokens(app) == set()


# -- list ------------------------------------------------------------------------


def test_list_newest_first_with_redacted_addresses(app, client, smtp, runner, clock):
    older = store(client, GUEST)
    clock.advance(hours=2, minutes=5)
    newer = store(client, OTHER_GUEST, room_id=OTHER_ROOM, sender=OTHER_SENDER)

    lines = invoke(runner, "list")

    assert len(lines) == 3
    assert lines[0].split() == [
        "2026-11-24", "11:05", "UTC", "pending", "-", "p…@prestataire.example", OTHER_ROOM,
        OTHER_SENDER, "expires", "2026-12-24", "11:05", "UTC", newer["token"][:8] + "…",
    ]  # fmt: skip
    assert lines[1].split() == [
        "2026-11-24", "09:00", "UTC", "pending", "-", "c…@partenaire.example", ROOM,
        SENDER, "expires", "2026-12-24", "09:00", "UTC", older["token"][:8] + "…",
    ]  # fmt: skip
    assert lines[2] == "2 invitation(s)."
    output = "\n".join(lines)
    assert GUEST not in output and OTHER_GUEST not in output
    assert older["token"] not in output  # only a prefix of the token is shown

    shown = invoke(runner, "list", "--show-addresses")
    assert GUEST in shown[1] and OTHER_GUEST in shown[0]
    assert shown[2] == "2 invitation(s)."


def test_list_filters(app, client, smtp, runner):
    a = store(client, GUEST, room_id=ROOM, sender=SENDER)
    b = store(client, GUEST, room_id=OTHER_ROOM, sender=OTHER_SENDER)
    c = store(client, OTHER_GUEST, room_id=OTHER_ROOM, sender=SENDER)

    def listed(*args):
        lines = invoke(runner, "list", *args)
        assert lines[-1] == f"{len(lines) - 1} invitation(s)."
        return [line.split()[-1] for line in lines[:-1]]

    def prefixes(*answers):
        return [answer["token"][:8] + "…" for answer in answers]

    assert listed() == prefixes(c, b, a)
    assert listed("--address", "Claire.Martin@partenaire.example") == prefixes(b, a)
    assert listed("--room", OTHER_ROOM) == prefixes(c, b)
    assert listed("--sender", SENDER) == prefixes(c, a)
    assert listed("--sender", OTHER_SENDER, "--room", OTHER_ROOM) == prefixes(b)
    assert listed("--sender", "@nobody:example.org") == []
    assert listed("--limit", "2") == prefixes(c, b)
    assert listed("--address", GUEST, "--limit", "1") == prefixes(b)

    result = runner.invoke(args=["invites", "list", "--address", "pas-une-adresse"])
    assert result.exit_code == 2 and "Invalid value for '--address'" in result.output
    result = runner.invoke(args=["invites", "list", "--limit", "0"])
    assert result.exit_code == 2
    result = runner.invoke(args=["invites", "list", "--state", "lost"])
    assert result.exit_code == 2


def test_list_by_state(app, client, smtp, runner, clock):
    expired = store(client, "ancien@partenaire.example")
    clock.advance(days=20)
    pending = store(client, "attente@partenaire.example")
    revoked = store(client, "retire@partenaire.example")
    accepted = store(client, GUEST)
    revoked_then_expired = store(client, "retire2@partenaire.example")
    invoke(runner, "revoke", revoked["token"])
    invoke(runner, "revoke", revoked_then_expired["token"])
    bind(client, smtp, GUEST)
    clock.advance(days=11)  # 31 days after the first invitation: it has expired
    assert not key_is_valid(client, expired) and key_is_valid(client, pending)

    listed = invoke(runner, "list")[:-1]
    states = {line.split()[-1]: line.split()[3] for line in listed}
    admitted_on = {line.split()[-1]: line.split()[4] for line in listed}
    assert admitted_on[accepted["token"][:8] + "…"] == "agent.externe.tchap.gouv.fr"
    assert set(admitted_on.values()) == {"agent.externe.tchap.gouv.fr", "-"}
    assert states == {
        expired["token"][:8] + "…": "expired",
        pending["token"][:8] + "…": "pending",
        revoked["token"][:8] + "…": "revoked",
        accepted["token"][:8] + "…": "accepted",
        revoked_then_expired["token"][:8] + "…": "revoked",
    }
    for state, answers in [
        ("pending", [pending]),
        ("accepted", [accepted]),
        ("expired", [expired]),
        ("revoked", [revoked_then_expired, revoked]),
    ]:
        lines = invoke(runner, "list", "--state", state)
        assert [line.split()[-1] for line in lines[:-1]] == [a["token"][:8] + "…" for a in answers]
        assert all(line.split()[3] == state for line in lines[:-1])
        assert lines[-1] == f"{len(answers)} invitation(s)."

    clock.advance(days=20)  # every one has expired now, but revoked and accepted stay so
    assert len(invoke(runner, "list", "--state", "pending")) == 1
    assert len(invoke(runner, "list", "--state", "expired")) == 3
    assert len(invoke(runner, "list", "--state", "accepted")) == 2


def test_list_shows_an_invitation_accepted_by_a_signature(app, client, smtp, runner):
    answer = store(client)
    link = relative(landing_link_from_mail(smtp.last()))
    page = client.get(link)
    signurl = query_of(web_client_link_from_page(page.text).replace("#/room/", ""))["signurl"]
    mxid = "@claire:matrix.partenaire.example"
    r = client.post(relative(signurl) + "&" + urlencode({"mxid": mxid}))
    assert r.status_code == 200, r.json

    [line, total] = invoke(runner, "list", "--show-addresses")

    assert line.split()[3:5] == ["accepted", "matrix.partenaire.example"]
    assert line.split()[-1] == answer["token"][:8] + "…"
    assert mxid not in line and "@claire" not in line
    assert invoke(runner, "list", "--state", "accepted", "--show-addresses")[0] == line


# -- purge-expired ---------------------------------------------------------------


def test_purge_expired_deletes_only_expired_invitations(app, client, smtp, runner, clock):
    old = store(client, "ancien@partenaire.example")
    accepted_old = store(client, GUEST)
    bind(client, smtp, GUEST)  # gives accepted_old a delivery job
    clock.advance(days=20)
    recent = store(client, "recent@partenaire.example")
    revoked_recent = store(client, "retire@partenaire.example")
    invoke(runner, "revoke", revoked_recent["token"])
    clock.advance(days=13)  # the first two expired 3 days ago
    assert count(app, Delivery) == 1

    assert invoke(runner, "purge-expired", "--older-than", "4") == [
        "Deleted 0 expired invitation(s)."
    ]
    assert len(stored_tokens(app)) == 4

    assert invoke(runner, "purge-expired", "--older-than", "2") == [
        "Deleted 2 expired invitation(s)."
    ]
    assert stored_tokens(app) == {recent["token"], revoked_recent["token"]}
    assert count(app, EphemeralKey) == 2  # the purged invitations' keys went with them
    assert count(app, Delivery) == 0
    assert not key_is_valid(client, old) and not key_is_valid(client, accepted_old)
    assert key_is_valid(client, recent)
    assert not key_is_valid(client, revoked_recent)  # revoked, not expired: kept

    assert invoke(runner, "purge-expired") == ["Deleted 0 expired invitation(s)."]
    clock.advance(days=18)  # the two recent ones expired one day ago
    assert invoke(runner, "purge-expired", "--older-than", "2") == [
        "Deleted 0 expired invitation(s)."
    ]
    assert invoke(runner, "purge-expired") == ["Deleted 2 expired invitation(s)."]
    assert stored_tokens(app) == set()
    assert count(app, EphemeralKey) == 0
    assert invoke(runner, "list") == ["0 invitation(s)."]


def test_purge_expired_refuses_a_negative_age(app, runner):
    result = runner.invoke(args=["invites", "purge-expired", "--older-than", "-1"])
    assert result.exit_code == 2
    assert "Deleted" not in result.output
