"""`flask sydent import`, from the database and config of a real Sydent 2.6.1.

Sydent runs once per session from its own virtualenv (testing/sydent.py): addresses
are bound and invitations stored through its HTTP API, then rows an older or a
replicating Sydent would hold (mixed-case addresses, conflicts, bad rows, accounts)
are added with SQL following the schema it created. The import is checked through our
own HTTP API, on SQLite and PostgreSQL.
"""

import base64
import hashlib
import os
import re
import sqlite3
import time
from dataclasses import dataclass
from dataclasses import field
from datetime import UTC
from datetime import datetime
from pathlib import Path

import pytest
import signedjson.key
import signedjson.sign
from sqlalchemy import event
from sqlalchemy import func
from sqlalchemy import select
from sqlalchemy import text

from identity import worker
from identity.extensions import db
from identity.services import services
from identity.storage.models import AccessToken
from identity.storage.models import Association
from identity.storage.models import Invitation
from testing.sydent import Sydent
from testing.sydent import SydentUnavailable
from testing.sydent import ensure_venv
from testing.sydent import introduce
from testing.sydent import long_term_key
from testing.sydent import replicate
from tests.fake_homeserver import FakeHomeserver
from tests.helpers import V1
from tests.helpers import V2
from tests.helpers import auth
from tests.helpers import validate_address
from tests.support import FakeClock

pytestmark = pytest.mark.interop

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
YEAR_MS = 365 * 24 * 3600 * 1000
DAY_MS = 24 * 3600 * 1000
NOW_MS = int(time.time() * 1000)

ALICE = ("alice.martin@numerique.gouv.fr", "@alice.martin-numerique.gouv.fr:agent.dinum.test")
BRUNO = ("bruno.petit@interieur.gouv.fr", "@bruno.petit-interieur.gouv.fr:agent.interieur.test")
# Stored before Sydent casefolded addresses; our lookups use the normalised form.
LEGACY = ("Legacy.User@Example.ORG", "@legacy:example.org")
# Bound twice under two spellings: the newest binding wins.
CAROL_OLD = ("Carol@Example.org", "@carol.old:example.org")
CAROL = ("carol@example.org", "@carol:example.org")
DORA = "@dora:example.org"
DORA_TOKEN = "SydentPlainAccessToken_dora_0123456789abcdef"
TERMS_URL = "https://tchap.test/cgu-fr.html"
PENDING_GUEST = "claire@partenaire.example"
ROOM = "!projetx:agent.dinum.test"
SENDER = "@marie:agent.dinum.test"


@dataclass
class Deployment:
    """A stopped Sydent's database and config, and what we expect from importing them."""

    db_path: str
    config_path: str
    public_key: str
    pepper: str
    pending_token: str
    ephemeral_keys: list[str]
    # (Matrix ID, access token) of the account registered through Sydent's API.
    registered: tuple[str, str] = ("", "")
    # {normalised address: (mxid, ts, not_before, not_after)} of the live bindings.
    bindings: dict[str, tuple[str, int, int, int]] = field(default_factory=dict)


def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def sydent_deployment(tmp_path_factory, smtp) -> Deployment:
    started = time.monotonic()
    try:
        python = ensure_venv()
    except (SydentUnavailable, OSError) as e:
        _unavailable(f"Sydent 2.6.1 cannot be installed: {e}")
    print(f"sydent venv ready in {time.monotonic() - started:.1f} s")
    sydent = Sydent(python, tmp_path_factory.mktemp("sydent"), smtp.host, smtp.port)
    try:
        sydent.start()
    except SydentUnavailable as e:
        _unavailable(str(e))
    try:
        public_key = sydent.get(f"{V1}/pubkey/ed25519:0")["public_key"]
        sydent.bind(smtp, *ALICE)
        sydent.bind(smtp, *BRUNO)
        pending = sydent.store_invite(PENDING_GUEST, ROOM, SENDER, room_name="Projet X")
        # An account registered with Sydent through a homeserver's OpenID token.
        homeserver = FakeHomeserver().start()
        try:
            registered = sydent.post(
                f"{V2}/account/register",
                {
                    "access_token": homeserver.issue_openid_token("gaby"),
                    "matrix_server_name": homeserver.server_name,
                },
            )
        finally:
            homeserver.stop()
        registered_user = homeserver.user_id("gaby")
        delivered = sydent.store_invite("denis@partenaire.example", ROOM, "@jean:agent.test")
        old = sydent.store_invite("emma@partenaire.example", ROOM, "@luc:agent.test")
    finally:
        sydent.stop()
    _add_rows(sydent.db_path, delivered=delivered["token"], old=old["token"])
    deployment = Deployment(
        db_path=str(sydent.db_path),
        config_path=str(sydent.config_path),
        public_key=public_key,
        pepper=_sydent_pepper(sydent.db_path),
        pending_token=pending["token"],
        ephemeral_keys=[a["public_keys"][1]["public_key"] for a in (pending, delivered, old)],
        registered=(registered_user, registered["token"]),
    )
    with sqlite3.connect(sydent.db_path) as conn:
        for address, mxid in (ALICE, BRUNO, LEGACY, CAROL):
            row = conn.execute(
                "SELECT ts, notBefore, notAfter FROM global_threepid_associations"
                " WHERE address = ? AND mxid = ?",
                (address, mxid),
            ).fetchone()
            deployment.bindings[address.casefold()] = (mxid, *row)
    return deployment


def _add_rows(db_path: Path, *, delivered: str, old: str) -> None:
    """Rows Sydent's HTTP API cannot produce today, in the schema it created."""
    legacy_ts, carol_old_ts, carol_ts = NOW_MS - 5 * YEAR_MS, NOW_MS - 3 * YEAR_MS, NOW_MS - YEAR_MS
    origin_id = iter(range(1000, 2000))
    globals_ = [
        (*LEGACY, legacy_ts, legacy_ts, legacy_ts + 100 * YEAR_MS),
        (*CAROL_OLD, carol_old_ts, carol_old_ts, carol_old_ts + 100 * YEAR_MS),
        (*CAROL, carol_ts, carol_ts, carol_ts + 100 * YEAR_MS),
        ("not an address", "email", "@x:example.org", NOW_MS, NOW_MS, NOW_MS + YEAR_MS),
        ("33612345678", "msisdn", "@phone:example.org", NOW_MS, NOW_MS, NOW_MS + YEAR_MS),
        ("gone@example.org", "email", "@gone:example.org", 1, 1, NOW_MS - DAY_MS),
        ("bad-mxid@example.org", "email", "no-server", NOW_MS, NOW_MS, NOW_MS + YEAR_MS),
    ]
    with sqlite3.connect(db_path) as conn:
        for address, medium, mxid, ts, not_before, not_after in (
            (row[0], "email", *row[1:]) if len(row) == 5 else row for row in globals_
        ):
            conn.execute(
                "INSERT INTO global_threepid_associations (medium, address, mxid, ts, notBefore,"
                " notAfter, originServer, originId, sgAssoc) VALUES (?, ?, ?, ?, ?, ?, ?, ?, '{}')",
                (medium, address, mxid, ts, not_before, not_after, "old.sydent", next(origin_id)),
            )
        # An address unbound in Sydent: its local row keeps no Matrix ID.
        conn.execute(
            "INSERT INTO local_threepid_associations (medium, address, mxid, ts, notBefore,"
            " notAfter) VALUES ('email', 'unbound@example.org', NULL, ?, NULL, NULL)",
            (NOW_MS,),
        )
        # Sydent counts invitation and ephemeral key times in seconds.
        now_s = NOW_MS // 1000
        conn.execute("UPDATE invite_tokens SET sent_ts = ? WHERE token = ?", (now_s, delivered))
        conn.execute(
            "UPDATE invite_tokens SET received_ts = ? WHERE token = ?", (now_s - 60 * 86400, old)
        )
        conn.execute(
            "INSERT INTO invite_tokens (medium, address, room_id, sender, token, received_ts)"
            " VALUES ('email', 'nobody', ?, ?, 'bad-address-token', ?)",
            (ROOM, SENDER, now_s),
        )
        conn.execute(
            "INSERT INTO ephemeral_public_keys (public_key, verify_count, persistence_ts)"
            " VALUES ('short', 0, ?)",
            (now_s,),
        )
        # Accounts come from OpenID registrations through a homeserver: written directly.
        conn.execute(
            "INSERT INTO accounts (user_id, created_ts, consent_version) VALUES (?, ?, NULL)",
            (DORA, NOW_MS - YEAR_MS),
        )
        conn.execute("INSERT INTO tokens (token, user_id) VALUES (?, ?)", (DORA_TOKEN, DORA))
        conn.execute("INSERT INTO tokens (token, user_id) VALUES ('orphan', '@ghost:example.org')")
        conn.execute(
            "INSERT INTO accepted_terms_urls (user_id, url) VALUES (?, ?)", (DORA, TERMS_URL)
        )


def _sydent_pepper(db_path: Path) -> str:
    with sqlite3.connect(db_path) as conn:
        (pepper,) = conn.execute("SELECT lookup_pepper FROM hashing_metadata").fetchone()
    return pepper


@pytest.fixture
def clock():
    """Sydent stamped its rows with the wall clock: ours starts there too."""
    return FakeClock(datetime.now(UTC))


@pytest.fixture
def terms_config(config, tmp_path):
    terms = tmp_path / "terms.yaml"
    terms.write_text(
        'master_version: "1"\n'
        "docs:\n"
        "  cgu:\n"
        '    version: "1.0"\n'
        "    langs:\n"
        f"      fr: {{name: CGU, url: '{TERMS_URL}'}}\n"
    )
    config["TERMS_PATH"] = str(terms)
    return config


def run_import(runner, deployment: Deployment, *options: str, with_config: bool = True):
    args = ["sydent", "import", deployment.db_path]
    if with_config:
        args += ["--config", deployment.config_path]
    return runner.invoke(args=[*args, *options])


def totals(output: str) -> tuple[int, int, int]:
    match = re.search(r"Total: (\d+) imported, (\d+) already present, (\d+) skipped", output)
    assert match, output
    return tuple(int(n) for n in match.groups())


def kind_line(output: str, kind: str) -> tuple[int, int, int]:
    match = re.search(
        rf"^{kind}: (\d+) imported, (\d+) already present, (\d+) skipped$", output, re.MULTILINE
    )
    assert match, output
    return tuple(int(n) for n in match.groups())


def sha256_hash(address: str, pepper: str) -> str:
    digest = hashlib.sha256(f"{address} email {pepper}".encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


# -- the import, seen through our API ---------------------------------------------


def test_imported_bindings_answer_v1_lookups_with_their_timestamps(
    sydent_deployment, app, client, runner
):
    result = run_import(runner, sydent_deployment)
    assert result.exit_code == 0, result.output
    assert kind_line(result.output, "associations")[0] == len(sydent_deployment.bindings)

    for address, (mxid, ts, not_before, not_after) in sydent_deployment.bindings.items():
        # Looked up in any case: the legacy row was stored with capitals.
        r = client.get(f"{V1}/lookup", query_string={"medium": "email", "address": address.upper()})
        assert r.status_code == 200
        assert (r.json["address"], r.json["mxid"]) == (address, mxid)
        assert (r.json["ts"], r.json["not_before"], r.json["not_after"]) == (
            ts,
            not_before,
            not_after,
        )
        assert r.json["signatures"]


def test_the_planner_has_statistics_on_what_was_imported(sydent_deployment, app, runner):
    # Without them PostgreSQL reads the whole table for a v2 lookup's `lookup_hash IN
    # (…)` until autovacuum comes round; SQLite gathers none unless asked.
    assert run_import(runner, sydent_deployment).exit_code == 0
    with app.app_context():
        count = db.session.scalar(select(func.count()).select_from(Association))
        assert count == len(sydent_deployment.bindings)
        if db.engine.dialect.name == "postgresql":
            rows = "SELECT reltuples FROM pg_class WHERE relname = 'association'"
            assert db.session.scalar(text(rows)) == count
        else:
            stats = "SELECT stat FROM sqlite_stat1 WHERE tbl = 'association'"
            assert str(count) in {stat.split()[0] for stat in db.session.scalars(text(stats))}


def test_v2_lookups_work_with_sydents_pepper(sydent_deployment, terms_config, app, client, runner):
    assert run_import(runner, sydent_deployment).exit_code == 0

    # The imported token works, and its user's accepted terms came along.
    r = client.get(f"{V2}/hash_details", headers=auth(DORA_TOKEN))
    assert r.status_code == 200, r.json
    assert r.json["lookup_pepper"] == sydent_deployment.pepper

    hashes = {
        sha256_hash(a, sydent_deployment.pepper): b[0]
        for a, b in sydent_deployment.bindings.items()
    }
    body = {"addresses": list(hashes), "algorithm": "sha256", "pepper": sydent_deployment.pepper}
    r = client.post(f"{V2}/lookup", json=body, headers=auth(DORA_TOKEN))
    assert r.status_code == 200, r.json
    assert r.json["mappings"] == hashes


def test_imported_access_token_is_stored_hashed(sydent_deployment, app, client, runner):
    assert run_import(runner, sydent_deployment).exit_code == 0

    r = client.get(f"{V2}/account", headers=auth(DORA_TOKEN))
    assert r.status_code == 200, r.json
    assert r.json == {"user_id": DORA}
    assert client.get(f"{V2}/account", headers=auth("orphan")).status_code == 401
    with app.app_context():
        stored = list(db.session.scalars(select(AccessToken.token_hash)))
    plain = [DORA_TOKEN, sydent_deployment.registered[1]]
    assert sorted(stored) == sorted(hashlib.sha256(t.encode()).hexdigest() for t in plain)
    assert not set(plain) & set(stored)


def test_imported_ephemeral_keys_and_signing_key_are_valid(sydent_deployment, client, runner):
    assert run_import(runner, sydent_deployment).exit_code == 0

    for public_key in sydent_deployment.ephemeral_keys:
        r = client.get(f"{V1}/pubkey/ephemeral/isvalid", query_string={"public_key": public_key})
        assert r.json == {"valid": True}
    r = client.get(f"{V1}/pubkey/ephemeral/isvalid", query_string={"public_key": "A" * 43})
    assert r.json == {"valid": False}

    r = client.get(f"{V1}/pubkey/ed25519:0")
    assert r.json == {"public_key": sydent_deployment.public_key}
    r = client.get(
        f"{V1}/pubkey/isvalid", query_string={"public_key": sydent_deployment.public_key}
    )
    assert r.json == {"valid": True}


def test_only_the_pending_invitation_is_imported(sydent_deployment, app, runner, clock):
    result = run_import(runner, sydent_deployment)
    assert result.exit_code == 0, result.output

    assert kind_line(result.output, "invitations") == (1, 0, 3)
    with app.app_context():
        (invitation,) = db.session.scalars(select(Invitation))
        assert invitation.token == sydent_deployment.pending_token
        assert (invitation.address, invitation.room_id, invitation.sender) == (
            PENDING_GUEST,
            ROOM,
            SENDER,
        )
        validity = app.config["INVITE_VALIDITY_SECONDS"]
        assert (invitation.expires_at - invitation.created_at).total_seconds() == validity
        with sqlite3.connect(sydent_deployment.db_path) as conn:
            (received,) = conn.execute(
                "SELECT received_ts FROM invite_tokens WHERE token = ?", (invitation.token,)
            ).fetchone()
        assert invitation.created_at.timestamp() == received
        assert abs((clock.now() - invitation.created_at).total_seconds()) < 600
    listed = runner.invoke(args=["invites", "list", "--state", "pending"])
    assert "1 invitation(s)." in listed.output


def test_second_run_imports_nothing(sydent_deployment, runner):
    first = run_import(runner, sydent_deployment)
    assert first.exit_code == 0, first.output
    imported, present, skipped = totals(first.output)
    assert imported > 0 and present == 0

    second = run_import(runner, sydent_deployment)
    assert second.exit_code == 0, second.output
    assert totals(second.output) == (0, imported, skipped)


def test_bad_rows_are_reported_with_their_reason(sydent_deployment, runner):
    result = run_import(runner, sydent_deployment)
    assert result.exit_code == 0, result.output
    output = result.output

    assert kind_line(output, "associations") == (4, 0, 6)
    for reason in (
        "skipped 1: not a valid email address (global_threepid_associations#",
        "skipped 1: medium 'msisdn' is not supported",
        "skipped 1: expired (not_after has passed)",
        "skipped 1: not a valid Matrix user ID",
        "skipped 1: unbound in Sydent (no Matrix ID) (local_threepid_associations#",
        "skipped 1: superseded by a newer binding to another Matrix ID",
        "skipped 1: already delivered to the invitee's homeserver",
        "skipped 1: expired: received more than 30 day(s) ago",
        "skipped 1: not an ed25519 public key in unpadded base64",
        "skipped 1: no imported account for its user (tokens#",
    ):
        assert reason in output, output
    # Reports name rows, never addresses or tokens.
    assert "orphan" not in output and "nobody" not in output
    assert kind_line(output, "pepper") == (1, 0, 0)
    assert kind_line(output, "signing key") == (1, 0, 0)


# -- an existing deployment of ours ----------------------------------------------


def test_a_different_signing_key_is_replaced_only_when_asked(sydent_deployment, client, runner):
    assert runner.invoke(args=["keys", "generate"]).exit_code == 0
    ours = client.get(f"{V1}/pubkey/ed25519:0").json["public_key"]

    refused = run_import(runner, sydent_deployment)
    assert refused.exit_code == 1
    assert "--replace-key" in refused.output and "nothing was imported" in refused.output
    lookup = {"medium": "email", "address": ALICE[0]}
    assert client.get(f"{V1}/lookup", query_string=lookup).json == {}
    assert client.get(f"{V1}/pubkey/ed25519:0").json["public_key"] == ours

    replaced = run_import(runner, sydent_deployment, "--replace-key")
    assert replaced.exit_code == 0, replaced.output
    assert "now holds Sydent's key" in replaced.output
    assert client.get(f"{V1}/pubkey/ed25519:0").json["public_key"] == sydent_deployment.public_key
    assert client.get(f"{V1}/lookup", query_string=lookup).json["mxid"] == ALICE[1]

    again = run_import(runner, sydent_deployment)
    assert again.exit_code == 0, again.output
    assert kind_line(again.output, "signing key") == (0, 1, 0)


def test_our_bindings_are_rehashed_and_conflicts_kept(sydent_deployment, app, client, runner, smtp):
    ours = {"zoe@example.org": "@zoe:example.org", BRUNO[0]: "@bruno:other.example.org"}
    for address, mxid in ours.items():
        sid = validate_address(client, smtp, address, secret="ours")
        body = {"sid": sid, "client_secret": "ours", "mxid": mxid}
        assert client.post(f"{V1}/3pid/bind", json=body).status_code == 200

    # Our bindings are signed with our key: keep it (no --config).
    result = run_import(runner, sydent_deployment, with_config=False)
    assert result.exit_code == 0, result.output
    assert "note: No Sydent config given: the signing key was not imported." in result.output
    assert "signing key:" not in result.output
    assert "skipped 1: the address is bound here to another Matrix ID" in result.output
    assert "note: pepper: 2 existing association(s) hashed with it." in result.output

    with app.app_context():
        rows = {a.address: a for a in db.session.scalars(select(Association))}
    pepper = sydent_deployment.pepper
    assert rows[BRUNO[0]].mxid == ours[BRUNO[0]]
    for address, association in rows.items():
        assert association.lookup_hash == sha256_hash(address, pepper)


def _with_bindings(deployment: Deployment, path: Path, prefix: str, count: int, pepper: str):
    """A copy of the deployment's database with `count` more bindings, under `pepper`."""
    path.write_bytes(Path(deployment.db_path).read_bytes())
    with sqlite3.connect(path) as conn:
        conn.executemany(
            "INSERT INTO global_threepid_associations (medium, address, mxid, ts, notBefore,"
            " notAfter, originServer, originId, sgAssoc) VALUES ('email', ?, ?, ?, ?, ?,"
            " 'old.sydent', ?, '{}')",
            [
                (f"{prefix}{i}@example.org", f"@{prefix}{i}:example.org", NOW_MS, NOW_MS,
                 NOW_MS + YEAR_MS, 5000 + i)
                for i in range(count)
            ],
        )  # fmt: skip
        conn.execute("UPDATE hashing_metadata SET lookup_pepper = ?", (pepper,))
    return Deployment(**{**deployment.__dict__, "db_path": str(path), "pepper": pepper})


def test_associations_are_read_and_written_in_batches(
    sydent_deployment, terms_config, app, client, runner, tmp_path
):
    count = 200
    held = _with_bindings(sydent_deployment, tmp_path / "held.db", "held", count, "heldPepper")
    assert run_import(runner, held, with_config=False).exit_code == 0
    statements = []

    def on_execute(conn, cursor, statement, *args):
        if re.search(r"\b(association|pepper)\b", statement):
            statements.append(statement)

    more = _with_bindings(sydent_deployment, tmp_path / "more.db", "more", count, "newPepper")
    with app.app_context():
        engine = db.engine
    event.listen(engine, "before_cursor_execute", on_execute)
    try:
        result = run_import(runner, more, with_config=False)
    finally:
        event.remove(engine, "before_cursor_execute", on_execute)
    assert result.exit_code == 0, result.output
    assert kind_line(result.output, "associations") == (count, 4, 6)
    assert f"note: pepper: {count + 4} existing association(s) hashed with it." in result.output
    # The peppers are read once per batch, the bindings we held are hashed again a
    # page at a time and the new ones inserted together: what is left per binding is
    # the look-up of its address.
    assert sum(" pepper" in s for s in statements) < 20
    assert len(statements) < count + 40, len(statements)
    for address in ("held7@example.org", "more7@example.org"):
        body = {"addresses": [sha256_hash(address, "newPepper")], "algorithm": "sha256",
                "pepper": "newPepper"}  # fmt: skip
        r = client.post(f"{V2}/lookup", json=body, headers=auth(DORA_TOKEN))
        assert r.status_code == 200, r.json
        assert r.json["mappings"] == {body["addresses"][0]: f"@{address.split('@')[0]}:example.org"}


def test_a_missing_or_foreign_database_is_refused(runner, tmp_path):
    result = runner.invoke(args=["sydent", "import", str(tmp_path / "absent.db")])
    assert result.exit_code == 1 and "no such file" in result.output
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    result = runner.invoke(args=["sydent", "import", str(other)])
    assert result.exit_code == 1 and "not a Sydent database" in result.output


def test_a_pending_sydent_invitation_is_delivered_when_the_guest_binds_with_us(
    sydent_deployment, app, client, runner, smtp, fake_homeserver
):
    result = run_import(runner, sydent_deployment)
    assert result.exit_code == 0, result.output
    sid = validate_address(client, smtp, PENDING_GUEST, secret="guest")
    mxid = fake_homeserver.user_id("claire")
    body = {"sid": sid, "client_secret": "guest", "mxid": mxid}
    assert client.post(f"{V1}/3pid/bind", json=body).status_code == 200
    with app.app_context():
        assert worker.run_due(now=services(app).clock.now()) == 1
    [call] = fake_homeserver.onbind_calls
    [invite] = call["invites"]
    assert (invite["room_id"], invite["sender"], invite["mxid"]) == (ROOM, SENDER, mxid)
    assert invite["signed"]["token"] == sydent_deployment.pending_token
    # Signed with Sydent's own key, the one the room's third-party invite names, under
    # the name Sydent signed with.
    sydent_key = signedjson.key.decode_verify_key_bytes(
        "ed25519:0", signedjson.key.decode_base64(sydent_deployment.public_key)
    )
    signedjson.sign.verify_signed_json(invite["signed"], "sydent.test", sydent_key)


def test_an_account_registered_with_sydent_works_here(sydent_deployment, client, runner):
    result = run_import(runner, sydent_deployment)
    assert result.exit_code == 0, result.output
    user_id, token = sydent_deployment.registered
    r = client.get(f"{V2}/account", headers=auth(token))
    assert (r.status_code, r.json) == (200, {"user_id": user_id})


# -- a deployment of two replicating peers ----------------------------------------

PEER_A, PEER_B = "sydent-a.test", "sydent-b.test"
ANNE = ("anne.roux@numerique.gouv.fr", "@anne.roux-numerique.gouv.fr:agent.dinum.test")
BASILE = ("basile.morel@interieur.gouv.fr", "@basile.morel-interieur.gouv.fr:agent.test")
# Bound at A, replicated to B, bound again at B to another Matrix ID; B's push to A
# has not happened yet when the peers stop.
REBOUND, REBOUND_OLD, REBOUND_NEW = "remi@partenaire.example", "@remi:old.test", "@remi:new.test"
# Invited into one room through each peer.
GUEST = "gisele@partenaire.example"
ROOM_A, ROOM_B = "!salon-a:agent.dinum.test", "!salon-b:agent.interieur.test"


@dataclass
class Peers:
    """Two stopped Sydent peers that replicated to each other."""

    a: Sydent
    b: Sydent
    # {room_id: the store-invite answer of the peer that stored the invitation}
    invites: dict[str, dict] = field(default_factory=dict)


@pytest.fixture(scope="session")
def sydent_peers(tmp_path_factory, smtp) -> Peers:
    try:
        python = ensure_venv()
    except (SydentUnavailable, OSError) as e:
        _unavailable(f"Sydent 2.6.1 cannot be installed: {e}")
    a = Sydent(python, tmp_path_factory.mktemp("peer-a"), smtp.host, smtp.port, PEER_A)
    b = Sydent(python, tmp_path_factory.mktemp("peer-b"), smtp.host, smtp.port, PEER_B)
    peers = Peers(a, b)
    try:
        for sydent in (a, b):
            sydent.start()
        a.bind(smtp, *ANNE)
        a.bind(smtp, REBOUND, REBOUND_OLD)
        peers.invites[ROOM_A] = a.store_invite(GUEST, ROOM_A, "@marie:agent.dinum.test")
        b.bind(smtp, *BASILE)
        peers.invites[ROOM_B] = b.store_invite(GUEST, ROOM_B, "@paul:agent.interieur.test")
    finally:
        for sydent in (a, b):
            sydent.stop()
    for target, peer in ((a, b), (b, a)):
        introduce(target, peer)
    replicate(a, b)
    replicate(b, a)
    b.start()
    try:
        time.sleep(0.01)  # B's new binding is strictly newer than A's
        b.bind(smtp, REBOUND, REBOUND_NEW)
    finally:
        b.stop()
    replicate(a, b)  # nothing new from A; B's new binding never reached A
    return peers


def import_peer(runner, sydent: Sydent, *options: str):
    args = ["sydent", "import", str(sydent.db_path), "--config", str(sydent.config_path)]
    return runner.invoke(args=[*args, *options])


def synapse_accepts(signed: dict, invite: dict) -> bool:
    """Whether Synapse accepts `signed` for the third-party invite made from `invite`.

    The room's m.room.third_party_invite carries the store-invite answer's keys; for
    each, Synapse verifies the first ed25519 signature of `signed` with it (Synapse's
    handlers/federation.py `_check_signature` and event_auth.py
    `_verify_third_party_invite`: any failure moves on to the next key).
    """
    public_keys = [k["public_key"] for k in invite["public_keys"]] + [invite["public_key"]]
    for public_key in public_keys:
        try:
            for server, block in signed["signatures"].items():
                for key_name in block:
                    if not key_name.startswith("ed25519:"):
                        continue
                    verify_key = signedjson.key.decode_verify_key_bytes(
                        key_name, signedjson.key.decode_base64(public_key)
                    )
                    signedjson.sign.verify_signed_json(signed, server, verify_key)
                    return True
        except (KeyError, signedjson.sign.SignatureVerifyException):
            continue
    return False


def test_two_peers_import_each_row_once(sydent_peers, app, client, runner):
    first = import_peer(runner, sydent_peers.a)
    assert first.exit_code == 0, first.output
    # A holds its own rows and B's replicated ones: ANNE, REBOUND (old), BASILE.
    assert kind_line(first.output, "associations") == (3, 0, 0)
    assert kind_line(first.output, "invitations") == (2, 0, 0)
    assert kind_line(first.output, "ephemeral keys") == (2, 0, 0)
    assert kind_line(first.output, "peer keys") == (2, 0, 0)

    second = import_peer(runner, sydent_peers.b, "--peer")
    assert second.exit_code == 0, second.output
    # B's new binding of REBOUND replaces A's older one (which B holds too, superseded);
    # the rest is A's rows again.
    assert kind_line(second.output, "associations") == (1, 2, 1)
    assert "skipped 1: superseded by a newer binding to another Matrix ID" in second.output
    assert kind_line(second.output, "invitations") == (0, 2, 0)
    assert kind_line(second.output, "ephemeral keys") == (0, 2, 0)
    assert kind_line(second.output, "peer keys") == (0, 2, 0)
    assert kind_line(second.output, "signing key") == (1, 0, 0)
    assert "note: pepper: ours is kept" in second.output

    for sydent in (sydent_peers.a, sydent_peers.b):
        again = import_peer(runner, sydent, *(["--peer"] if sydent is sydent_peers.b else []))
        assert again.exit_code == 0, again.output
        assert totals(again.output)[0] == 0, again.output

    expected = {ANNE[0]: ANNE[1], BASILE[0]: BASILE[1], REBOUND: REBOUND_NEW}
    for address, mxid in expected.items():
        r = client.get(f"{V1}/lookup", query_string={"medium": "email", "address": address})
        assert r.json["mxid"] == mxid, address
    with app.app_context():
        stored = {i.room_id: i.stored_by for i in db.session.scalars(select(Invitation))}
    assert stored == {ROOM_A: PEER_A, ROOM_B: PEER_B}


def test_every_peers_keys_stay_valid(sydent_peers, client, runner):
    assert import_peer(runner, sydent_peers.a).exit_code == 0
    assert import_peer(runner, sydent_peers.b, "--peer").exit_code == 0

    for invite in sydent_peers.invites.values():
        long_term, ephemeral = (k["public_key"] for k in invite["public_keys"])
        r = client.get(f"{V1}/pubkey/isvalid", query_string={"public_key": long_term})
        assert r.json == {"valid": True}
        r = client.get(f"{V2}/pubkey/ephemeral/isvalid", query_string={"public_key": ephemeral})
        assert r.json == {"valid": True}
    # The first peer's key is ours now; the other's is not served as ours.
    assert client.get(f"{V1}/pubkey/ed25519:0").json["public_key"] == long_term_key(sydent_peers.a)
    r = client.get(f"{V1}/pubkey/isvalid", query_string={"public_key": "A" * 43})
    assert r.json == {"valid": False}


def test_a_bind_delivers_both_peers_invitations_signed_by_their_peer(
    sydent_peers, app, client, runner, smtp, fake_homeserver
):
    assert import_peer(runner, sydent_peers.a).exit_code == 0
    assert import_peer(runner, sydent_peers.b, "--peer").exit_code == 0

    sid = validate_address(client, smtp, GUEST, secret="guest")
    mxid = fake_homeserver.user_id("gisele")
    r = client.post(f"{V1}/3pid/bind", json={"sid": sid, "client_secret": "guest", "mxid": mxid})
    assert r.status_code == 200, r.json
    with app.app_context():
        assert worker.run_due(now=services(app).clock.now()) == 2
    invites = {
        invite["room_id"]: invite
        for call in fake_homeserver.onbind_calls
        for invite in call["invites"]
    }
    assert set(invites) == {ROOM_A, ROOM_B}
    for room_id, other in ((ROOM_A, ROOM_B), (ROOM_B, ROOM_A)):
        signed = invites[room_id]["signed"]
        assert signed["mxid"] == mxid
        assert signed["token"] == sydent_peers.invites[room_id]["token"]
        # The homeserver accepts it with the keys of the peer that stored it, alone.
        assert synapse_accepts(signed, sydent_peers.invites[room_id])
        assert not synapse_accepts(signed, sydent_peers.invites[other])
    assert set(invites[ROOM_B]["signed"]["signatures"]) == {PEER_B}


def test_a_peer_is_imported_with_its_config(sydent_peers, runner):
    result = runner.invoke(args=["sydent", "import", str(sydent_peers.b.db_path), "--peer"])
    assert result.exit_code == 1
    assert "a peer is imported with its config (--config)" in result.output
    # Without --peer, a second peer's key is refused as before, naming --peer.
    assert import_peer(runner, sydent_peers.a).exit_code == 0
    refused = import_peer(runner, sydent_peers.b)
    assert refused.exit_code == 1 and "Use --peer" in refused.output


def test_another_key_for_a_known_peer_is_refused(sydent_peers, app, runner, tmp_path):
    assert import_peer(runner, sydent_peers.a).exit_code == 0
    assert import_peer(runner, sydent_peers.b, "--peer").exit_code == 0
    # B's config with another key under the same server name.
    forged = tmp_path / "sydent-b.conf"
    other = signedjson.key.generate_signing_key("0")
    other_seed = signedjson.key.encode_signing_key_base64(other)
    text = sydent_peers.b.config_path.read_text()
    line = next(x for x in text.splitlines() if x.startswith("ed25519.signingkey"))
    forged.write_text(text.replace(line, f"ed25519.signingkey = ed25519 0 {other_seed}"))
    args = ["sydent", "import", str(sydent_peers.b.db_path), "--config", str(forged), "--peer"]
    refused = runner.invoke(args=args)
    assert refused.exit_code == 1
    assert f"another key ({long_term_key(sydent_peers.b)}) is recorded for peer {PEER_B}" in (
        refused.output
    )
    key_file = Path(app.config["SIGNING_KEY_PATH"]).parent / "peer-keys" / f"{PEER_B}.key"
    assert key_file.read_text().split()[2] != other_seed
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"


def test_until_a_peer_is_imported_its_invitations_are_not_acceptable(
    sydent_peers, app, client, runner, smtp, fake_homeserver, caplog
):
    # Only A: B's key is known from A's replication set-up (peer_pubkeys), its private
    # half is not.
    assert import_peer(runner, sydent_peers.a).exit_code == 0
    r = client.get(
        f"{V1}/pubkey/isvalid", query_string={"public_key": long_term_key(sydent_peers.b)}
    )
    assert r.json == {"valid": True}

    sid = validate_address(client, smtp, GUEST, secret="guest")
    mxid = fake_homeserver.user_id("gisele")
    r = client.post(f"{V1}/3pid/bind", json={"sid": sid, "client_secret": "guest", "mxid": mxid})
    assert r.status_code == 200, r.json
    with app.app_context():
        assert worker.run_due(now=services(app).clock.now()) == 2
    signed = {
        invite["room_id"]: invite["signed"]
        for call in fake_homeserver.onbind_calls
        for invite in call["invites"]
    }
    assert synapse_accepts(signed[ROOM_A], sydent_peers.invites[ROOM_A])
    assert not synapse_accepts(signed[ROOM_B], sydent_peers.invites[ROOM_B])
    assert f"No private key of peer {PEER_B}" in caplog.text
