"""Binds, unbinds and lookups, v1 and v2, with signatures checked by signedjson."""

import base64
import hashlib
import json
import re
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import psycopg
import pytest
import requests
import signedjson.key
import signedjson.sign
from canonicaljson import encode_canonical_json
from sqlalchemy import create_engine
from sqlalchemy import event
from sqlalchemy import insert
from sqlalchemy import text

from identity import keys
from identity import lookup
from identity.accounts import token_hash
from identity.extensions import db
from identity.services import services
from identity.storage import associations
from identity.storage import hot_reads
from identity.storage.libpq import LibpqReader
from identity.storage.models import AccessToken
from identity.storage.models import Account
from identity.storage.models import Association
from testing.servers import Gunicorn
from testing.servers import migrate
from testing.servers import service_env
from tests.helpers import V1
from tests.helpers import V2
from tests.helpers import auth
from tests.helpers import register_user
from tests.helpers import validate_address

ADDRESS = "marie.dupont@ac-versailles.fr"
MXID = "@marie.dupont-ac-versailles.fr:agent.education.tchap.gouv.fr"


def bind(client, sid, mxid=MXID, *, secret="s3cret", prefix=V1, headers=None):
    body = {"sid": sid, "client_secret": secret, "mxid": mxid}
    return client.post(f"{prefix}/3pid/bind", json=body, headers=headers)


def verify_key(config):
    return signedjson.key.get_verify_key(keys.read(config["SIGNING_KEY_PATH"]))


def sha256_hash(address, pepper, medium="email"):
    digest = hashlib.sha256(f"{address} {medium} {pepper}".encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def test_bind_returns_a_signed_association(config, client, smtp, clock):
    sid = validate_address(client, smtp, ADDRESS)
    r = bind(client, sid)
    assert r.status_code == 200
    association = r.json
    assert {k: association[k] for k in ("address", "medium", "mxid")} == {
        "address": ADDRESS,
        "medium": "email",
        "mxid": MXID,
    }
    assert association["ts"] == association["not_before"] == int(clock.now().timestamp() * 1000)
    assert association["not_after"] > association["ts"]
    signedjson.sign.verify_signed_json(association, "id.tchap.test", verify_key(config))


def test_v1_lookup_returns_the_signed_association(config, client, smtp):
    bind(client, validate_address(client, smtp, ADDRESS))
    r = client.get(f"{V1}/lookup?medium=email&address=Marie.Dupont@AC-Versailles.fr")
    assert r.json["mxid"] == MXID
    signedjson.sign.verify_signed_json(r.json, "id.tchap.test", verify_key(config))
    again = client.get(f"{V1}/lookup?medium=email&address={ADDRESS}")  # signatures remembered
    assert again.get_data() == r.get_data() == encode_canonical_json(r.json)
    assert again.mimetype == "application/json" and again.headers["X-Request-ID"]
    signedjson.sign.verify_signed_json(again.json, "id.tchap.test", verify_key(config))
    assert client.get(f"{V1}/lookup?medium=email&address=nobody@x.fr").json == {}
    r = client.get(f"{V1}/lookup?medium=email")
    assert (r.status_code, r.json["errcode"]) == (400, "M_MISSING_PARAMS")


def test_bulk_lookup(client, smtp):
    bind(client, validate_address(client, smtp, ADDRESS))
    r = client.post(
        f"{V1}/bulk_lookup",
        json={"threepids": [["email", ADDRESS.upper()], ["email", "nobody@x.fr"]]},
    )
    assert r.json == {"threepids": [["email", ADDRESS, MXID]]}
    r = client.post(f"{V1}/bulk_lookup", json={"threepids": [["email"]]})
    assert (r.status_code, r.json["errcode"]) == (400, "M_INVALID_PARAM")


def test_bulk_lookup_answers_each_binding_once_in_sydent_order(app, client, clock):
    """One answer per live binding, ordered by medium and address as Sydent's are, whatever
    the case, spelling (Unicode or punycode domain) or repetition of the pairs asked; past
    the 500 addresses a statement once held; with JSON's special characters in an address
    and several media in one request."""
    now = clock.now()
    rows = [
        ("email", "zoe@ac-lyon.fr", "@zoe:a.fr", 1),
        ("email", "jean@xn--exmple-cua.fr", "@jean:a.fr", 1),
        ("email", "ana@ac-lyon.fr", "@ana:a.fr", 1),
        ("msisdn", "33612345678", "@tel:a.fr", 1),
        ("email", "parti@ac-lyon.fr", "@parti:a.fr", -1),  # expired
    ]
    with app.app_context():
        db.session.execute(insert(Association), [
            {"medium": medium, "address": address, "mxid": mxid, "created_at": now,
             "not_before": now, "not_after": now + timedelta(days=days)}
            for medium, address, mxid, days in rows
        ])  # fmt: skip
        db.session.commit()
    unknown = [["email", f"agent{i}@ac-lyon.fr"] for i in range(1_200)]
    threepids = [
        *unknown[:600],
        ["email", "ZOE@AC-LYON.FR"],
        ["msisdn", "33612345678"],
        ["email", "Jean@EXÄMPLE.fr"],
        ["email", "jean@xn--exmple-cua.fr"],
        ["email", " zoe@ac-lyon.fr "],
        ["email", 'a"b\\c\u00e9@ac-lyon.fr'],
        ["email", "parti@ac-lyon.fr"],
        *unknown[600:],
        ["email", "ana@ac-lyon.fr"],
    ]
    r = client.post(f"{V1}/bulk_lookup", json={"threepids": threepids})
    assert r.json == {
        "threepids": [
            ["email", "ana@ac-lyon.fr", "@ana:a.fr"],
            ["email", "jean@xn--exmple-cua.fr", "@jean:a.fr"],
            ["email", "zoe@ac-lyon.fr", "@zoe:a.fr"],
            ["msisdn", "33612345678", "@tel:a.fr"],
        ]
    }


def test_bulk_lookup_searches_the_unique_index_whatever_the_statistics(app, clock):
    """Each address asked is searched in the unique (medium, address) index, here on a
    table the planner has no statistics for (as after an import): never a scan of the
    table, which PostgreSQL chose for 1,000 addresses at 100,000 bindings, and for
    batches of 500 on a table without statistics."""
    now = clock.now()
    addresses = [f"agent{i}@ac-lyon.fr" for i in range(2_000)]
    sent = []

    def keep(conn, cursor, statement, parameters, context, executemany):
        if "FROM association" in statement:
            sent.append((statement, parameters))

    with app.app_context():
        db.session.execute(insert(Association), [
            {"medium": "email", "address": address, "mxid": f"@{i}:a.fr", "created_at": now,
             "not_before": now, "not_after": now + timedelta(days=1)}
            for i, address in enumerate(addresses)
        ])  # fmt: skip
        db.session.commit()
        event.listen(db.engine, "before_cursor_execute", keep)
        try:
            pairs = [("email", address) for address in addresses[::2]]
            assert len(associations.bound_to(pairs, now=now)) == 1_000
        finally:
            event.remove(db.engine, "before_cursor_execute", keep)
        ((statement, parameters),) = sent
        postgres = db.engine.dialect.name == "postgresql"
        explain = "EXPLAIN " if postgres else "EXPLAIN QUERY PLAN "
        rows = db.session.connection().exec_driver_sql(explain + statement, parameters)
        plan = "\n".join(str(row[-1]) for row in rows)
    if postgres:
        # Not a walk through all of a medium's entries, each compared with the addresses.
        assert "Index Scan using uq_association_medium on association" in plan, plan
        assert re.search(r"Index Cond: .*\(medium\).* AND .*\(address\)", plan), plan
        assert "Seq Scan on association" not in plan and "Bitmap" not in plan, plan
    else:
        assert (
            "SEARCH association USING INDEX sqlite_autoindex_association_1 (medium=? AND address=?)"
            in plan
        ), plan
        assert "SCAN association" not in plan, plan


def test_v2_lookup_is_one_statement_probing_the_hash_indexes(app, clock, monkeypatch):
    """However many hashes are asked, one statement with one parameter for them all
    (not one rendered and parsed per hash), which searches the index of each spelling
    for each hash, here on a table the planner has no statistics for (as after an
    import). Found by either spelling, expired bindings left out, in either slot."""
    now = clock.now()
    rows = [
        {"medium": "email", "address": f"agent{i}@ac-lyon.fr", "mxid": f"@{i}:a.fr",
         "lookup_hash": f"key{i}", "lookup_hash_alt": f"alt{i}",
         "lookup_hash_unicode": f"uni{i}" if i % 100 == 0 else None,
         "created_at": now, "not_before": now,
         "not_after": now + timedelta(days=-1 if i == 7 else 1)}
        for i in range(2_000)
    ]  # fmt: skip
    asked = [f"key{i}" for i in range(0, 1_200, 2)] + [f"uni{i}" for i in range(0, 2_000, 100)]
    asked += [f"unknown{i}" for i in range(600)] + ["key7", "key2"]
    sent = []
    for reader in (hot_reads._CursorReader, LibpqReader):

        def keep(self, prepared, params, _real=reader.fetch_all):
            sent.append((prepared.sql, params))
            return _real(self, prepared, params)

        monkeypatch.setattr(reader, "fetch_all", keep)

    with app.app_context():
        db.session.execute(insert(Association), rows)
        db.session.commit()
        found = associations.mxids_by_hash(asked, slot=0, now=now)
        alt = associations.mxids_by_hash(["alt3", "key3"], slot=1, now=now)
        assert found == {
            **{f"key{i}": f"@{i}:a.fr" for i in range(0, 1_200, 2)},
            **{f"uni{i}": f"@{i}:a.fr" for i in range(0, 2_000, 100)},
        }
        assert alt == {"alt3": "@3:a.fr"}
        assert len(sent) == 2
        statement, parameters = sent[0]
        postgres = db.engine.dialect.name == "postgresql"
        # The 1,222 hashes in one bound value (SQLite's is sent once per spelling).
        assert len(parameters) <= 4, parameters
        if postgres:  # as prepared: numbered parameters ($1)
            cursor = psycopg.RawCursor(db.session.connection().connection.driver_connection)
            plan_rows = cursor.execute("EXPLAIN " + statement, parameters).fetchall()
        else:
            explain = "EXPLAIN QUERY PLAN " + statement
            plan_rows = db.session.connection().exec_driver_sql(explain, parameters).all()
        plan = "\n".join(str(row[-1]) for row in plan_rows)
    if postgres:
        for index in ("ix_association_lookup_hash", "ix_association_lookup_hash_unicode"):
            assert f"Index Scan using {index} on association" in plan, plan
        assert "Seq Scan on association" not in plan and "Bitmap" not in plan, plan
    else:
        for index, column in (
            ("ix_association_lookup_hash", "lookup_hash"),
            ("ix_association_lookup_hash_unicode", "lookup_hash_unicode"),
        ):
            assert f"SEARCH association USING INDEX {index} ({column}=?)" in plan, plan
        assert "SCAN association" not in plan, plan


@pytest.fixture
def small_limits(config):
    config["LOOKUP_MAX_ADDRESSES"] = 2
    config["BULK_LOOKUP_MAX_THREEPIDS"] = 2


def test_lookup_size_limits(small_limits, client, fake_homeserver):
    r = client.post(f"{V1}/bulk_lookup", json={"threepids": [["email", "a@b.fr"]] * 3})
    assert (r.status_code, r.json["errcode"]) == (413, "M_TOO_LARGE")
    headers = auth(register_user(client, fake_homeserver))
    pepper = client.get(f"{V2}/hash_details", headers=headers).json["lookup_pepper"]
    body = {"addresses": ["x", "y", "z"], "algorithm": "sha256", "pepper": pepper}
    r = client.post(f"{V2}/lookup", json=body, headers=headers)
    assert (r.status_code, r.json["errcode"]) == (413, "M_TOO_LARGE")


def test_v2_hashed_lookup(client, smtp, fake_homeserver):
    bind(client, validate_address(client, smtp, ADDRESS))
    headers = auth(register_user(client, fake_homeserver))
    details = client.get(f"{V2}/hash_details", headers=headers).json
    assert set(details["algorithms"]) == {"none", "sha256"}
    pepper = details["lookup_pepper"]
    assert (
        pepper and client.get(f"{V2}/hash_details", headers=headers).json["lookup_pepper"] == pepper
    )

    known, unknown = sha256_hash(ADDRESS, pepper), sha256_hash("x@y.fr", pepper)
    body = {"addresses": [known, unknown], "algorithm": "sha256", "pepper": pepper}
    r = client.post(f"{V2}/lookup", json=body, headers=headers)
    assert r.json == {"mappings": {known: MXID}}

    body = {
        "addresses": [f"{ADDRESS} email", "x@y.fr email"],
        "algorithm": "none",
        "pepper": pepper,
    }
    r = client.post(f"{V2}/lookup", json=body, headers=headers)
    assert r.json == {"mappings": {f"{ADDRESS} email": MXID}}


def test_v2_lookup_errors(client, fake_homeserver):
    headers = auth(register_user(client, fake_homeserver))
    pepper = client.get(f"{V2}/hash_details", headers=headers).json["lookup_pepper"]
    body = {"addresses": [], "algorithm": "sha256", "pepper": "stale"}
    r = client.post(f"{V2}/lookup", json=body, headers=headers)
    assert (r.status_code, r.json["errcode"]) == (400, "M_INVALID_PEPPER")
    assert r.json["lookup_pepper"] == pepper
    body = {"addresses": [], "algorithm": "md5", "pepper": pepper}
    r = client.post(f"{V2}/lookup", json=body, headers=headers)
    assert (r.status_code, r.json["errcode"]) == (400, "M_INVALID_PARAM")
    r = client.post(f"{V2}/lookup", json={"addresses": []}, headers=headers)
    assert (r.status_code, r.json["errcode"]) == (400, "M_MISSING_PARAMS")
    r = client.post(f"{V2}/lookup", json=body)
    assert (r.status_code, r.json["errcode"]) == (401, "M_UNAUTHORIZED")
    r = client.get(f"{V2}/hash_details")
    assert (r.status_code, r.json["errcode"]) == (401, "M_UNAUTHORIZED")
    # The deprecated query parameter, which Synapse still sends, is accepted too.
    token = headers["Authorization"].split(" ", 1)[1]
    assert client.get(f"{V2}/hash_details", query_string={"access_token": token}).status_code == 200


def test_bind_errors(client, smtp):
    r = client.post(
        f"{V1}/validate/email/requestToken",
        json={"client_secret": "s3cret", "email": ADDRESS, "send_attempt": 1},
    )
    sid = r.json["sid"]
    r = bind(client, sid)
    assert (r.status_code, r.json["errcode"]) == (400, "M_SESSION_NOT_VALIDATED")
    r = bind(client, "nope")
    assert (r.status_code, r.json["errcode"]) == (400, "M_NO_VALID_SESSION")
    r = client.post(f"{V1}/3pid/bind", json={"sid": sid})
    assert (r.status_code, r.json["errcode"]) == (400, "M_MISSING_PARAMS")


def test_bind_with_invalid_mxid(client, smtp):
    r = bind(client, validate_address(client, smtp, ADDRESS), mxid="not-a-user-id")
    assert (r.status_code, r.json["errcode"]) == (400, "M_INVALID_PARAM")


def test_bind_of_expired_session(client, smtp, clock):
    sid = validate_address(client, smtp, ADDRESS)
    clock.advance(hours=25)
    r = bind(client, sid)
    assert (r.status_code, r.json["errcode"]) == (400, "M_SESSION_EXPIRED")


def test_v2_bind_only_to_own_mxid(client, smtp, fake_homeserver):
    headers = auth(register_user(client, fake_homeserver, "marie"))
    sid = validate_address(client, smtp, ADDRESS, prefix=V2, headers=headers)
    r = bind(
        client, sid, mxid="@someone.else:" + fake_homeserver.server_name, prefix=V2, headers=headers
    )
    # Tchap's errcode for it (its Sydent branch), which its homeservers and clients handle.
    assert (r.status_code, r.json["errcode"]) == (403, "M_UNAUTHORIZED")
    r = bind(client, sid, mxid=fake_homeserver.user_id("marie"), prefix=V2, headers=headers)
    assert r.status_code == 200 and r.json["mxid"] == fake_homeserver.user_id("marie")


def test_bind_refused_by_routing_is_binding_not_permitted(make_app, smtp):
    client = make_app(RESTRICT_BINDS_TO_ROUTING=True).test_client()
    sid = validate_address(client, smtp, ADDRESS)
    r = bind(client, sid, mxid="@intrus:agent.externe.tchap.gouv.fr")
    assert (r.status_code, r.json["errcode"]) == (400, "M_BINDING_NOT_PERMITTED")
    assert client.get(f"{V1}/lookup?medium=email&address={ADDRESS}").json == {}


def test_rebind_replaces_the_mxid(client, smtp):
    bind(client, validate_address(client, smtp, ADDRESS))
    other = "@marie:agent.interieur.tchap.gouv.fr"
    bind(client, validate_address(client, smtp, ADDRESS, secret="second"), other, secret="second")
    assert client.get(f"{V1}/lookup?medium=email&address={ADDRESS}").json["mxid"] == other


def unbind_body(mxid=MXID, address=ADDRESS, **extra):
    return {"mxid": mxid, "threepid": {"medium": "email", "address": address}, **extra}


@pytest.mark.parametrize("prefix", [V1, V2])
def test_unbind_with_the_validation_session(client, smtp, prefix):
    sid = validate_address(client, smtp, ADDRESS)
    bind(client, sid)
    body = unbind_body(sid=sid, client_secret="s3cret")
    r = client.post(f"{prefix}/3pid/unbind", json=body)
    assert (r.status_code, r.json) == (200, {})
    assert client.get(f"{V1}/lookup?medium=email&address={ADDRESS}").json == {}


def test_unbind_with_a_session_for_another_address_is_forbidden(client, smtp):
    bind(client, validate_address(client, smtp, ADDRESS))
    other_sid = validate_address(client, smtp, "autre@ac-versailles.fr", secret="other")
    body = unbind_body(sid=other_sid, client_secret="other")
    r = client.post(f"{V1}/3pid/unbind", json=body)
    assert (r.status_code, r.json["errcode"]) == (403, "M_FORBIDDEN")


@pytest.mark.parametrize("destination_field", ["destination", "destination_is"])
def test_unbind_signed_by_the_homeserver(client, smtp, fake_homeserver, destination_field):
    mxid = fake_homeserver.user_id("marie")
    bind(client, validate_address(client, smtp, ADDRESS), mxid)
    path = f"{V2}/3pid/unbind"
    body = unbind_body(mxid)
    header = fake_homeserver.sign_request(
        "POST", path, "id.tchap.test", body, destination_field=destination_field
    )
    r = client.post(path, json=body, headers={"Authorization": header})
    assert (r.status_code, r.json) == (200, {})
    assert client.get(f"{V1}/lookup?medium=email&address={ADDRESS}").json == {}
    assert fake_homeserver.key_requests == 1


def test_homeserver_keys_are_cached(client, smtp, fake_homeserver):
    path = f"{V2}/3pid/unbind"
    for _ in range(2):
        body = unbind_body(fake_homeserver.user_id("marie"))
        header = fake_homeserver.sign_request("POST", path, "id.tchap.test", body)
        assert client.post(path, json=body, headers={"Authorization": header}).status_code == 200
    assert fake_homeserver.key_requests == 1


def test_unbind_signed_by_another_homeserver_is_forbidden(client, smtp, fake_homeserver):
    bind(client, validate_address(client, smtp, ADDRESS))  # MXID is on the education server
    path = f"{V2}/3pid/unbind"
    body = unbind_body(MXID)
    header = fake_homeserver.sign_request("POST", path, "id.tchap.test", body)
    r = client.post(path, json=body, headers={"Authorization": header})
    assert (r.status_code, r.json["errcode"]) == (403, "M_FORBIDDEN")
    assert client.get(f"{V1}/lookup?medium=email&address={ADDRESS}").json["mxid"] == MXID


def test_unbind_with_a_bad_signature_is_forbidden(client, smtp, fake_homeserver):
    mxid = fake_homeserver.user_id("marie")
    bind(client, validate_address(client, smtp, ADDRESS), mxid)
    path = f"{V2}/3pid/unbind"
    body = unbind_body(mxid)
    forged = signedjson.key.generate_signing_key("fake1")
    header = fake_homeserver.sign_request("POST", path, "id.tchap.test", body, key=forged)
    r = client.post(path, json=body, headers={"Authorization": header})
    assert (r.status_code, r.json["errcode"]) == (403, "M_FORBIDDEN")
    header = fake_homeserver.sign_request("POST", path, "elsewhere.example", body)
    r = client.post(path, json=body, headers={"Authorization": header})
    assert (r.status_code, r.json["errcode"]) == (403, "M_FORBIDDEN")
    assert client.get(f"{V1}/lookup?medium=email&address={ADDRESS}").json["mxid"] == mxid


def test_unbind_without_proof_is_forbidden(client):
    r = client.post(f"{V1}/3pid/unbind", json=unbind_body())
    assert (r.status_code, r.json["errcode"]) == (403, "M_FORBIDDEN")
    r = client.post(f"{V1}/3pid/unbind", json={"mxid": MXID})
    assert (r.status_code, r.json["errcode"]) == (400, "M_MISSING_PARAMS")


# -- one pepper, from the first request ------------------------------------------------

STALE = {"addresses": [], "algorithm": "sha256", "pepper": "stale"}


def advertised_peppers(client, headers, times=3):
    """The pepper each of several lookups (stale pepper) and hash_details calls tells."""
    seen = [client.post(f"{V2}/lookup", json=STALE, headers=headers).json["lookup_pepper"]
            for _ in range(times)]  # fmt: skip
    seen.append(client.get(f"{V2}/hash_details", headers=headers).json["lookup_pepper"])
    return seen


def test_lookups_before_any_hash_details_agree_on_one_pepper(client, make_app, fake_homeserver):
    headers = auth(register_user(client, fake_homeserver))
    seen = advertised_peppers(client, headers)
    seen += advertised_peppers(make_app().test_client(), headers)
    assert len(set(seen)) == 1 and seen[0]


def test_a_lost_pepper_is_recreated_once_whatever_the_concurrency(
    db_url, tmp_path, clock, monkeypatch
):
    """gunicorn with several workers and threads, on a database whose pepper is gone
    (emptied by hand): concurrent first requests all get the same, single new pepper."""
    env = service_env(
        db_url,
        tmp_path,
        WORKERS="4",
        THREADS="4",
        DELIVERY_WORKER_ENABLED="false",
        RATELIMIT_ENABLED="false",
    )
    migrate(env)
    engine = create_engine(db_url)
    token = "a-test-token"
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM pepper"))
        now = clock.now()
        conn.execute(insert(Account).values(user_id="@alice:a.fr", created_at=now))
        conn.execute(
            insert(AccessToken).values(
                token_hash=token_hash(token), user_id="@alice:a.fr", created_at=now
            )
        )
    server = Gunicorn(env, ("-c", "gunicorn.conf.py"))
    try:
        headers = auth(token)

        def ask(i):
            if i % 2:
                return requests.get(f"{server.base}{V2}/hash_details", headers=headers, timeout=30)
            return requests.post(f"{server.base}{V2}/lookup", json=STALE, headers=headers,
                                 timeout=30)  # fmt: skip

        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(ask, range(64)))
    finally:
        server.stop()
    assert {a.json()["lookup_pepper"] for a in answers} != {None}
    assert len({a.json()["lookup_pepper"] for a in answers}) == 1
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM pepper")).scalar() == 1
    engine.dispose()


def test_remembered_v1_answers_are_those_signing_gives_never_shared_nor_stale(
    app, client, smtp, clock
):
    """v1 answers are remembered by association and signer: each is what signing gives,
    as bytes no caller can change, and a rebinding or a new key (imported from Sydent)
    is answered afresh."""
    bind(client, validate_address(client, smtp, ADDRESS))
    current = services(app)

    def lookup_v1() -> dict:
        with app.app_context():
            answer = lookup.lookup_v1("email", ADDRESS, now=clock.now(), sign=current.signer().sign)
        assert isinstance(answer, bytes)
        return json.loads(answer)

    def signed_with(key) -> bool:
        try:
            signedjson.sign.verify_signed_json(
                lookup_v1(), "id.tchap.test", signedjson.key.get_verify_key(key)
            )
        except signedjson.sign.SignatureVerifyException:
            return False
        return True

    first = lookup_v1()
    assert current.signer() is current.signer()  # one per key: answers are remembered
    with app.app_context():
        row = associations.find_committed("email", ADDRESS)
    assert first == current.signer().sign(lookup.association_json(row))
    assert lookup_v1() == first
    assert signed_with(current.keys.key())

    clock.advance(seconds=5)
    other_mxid = "@marie:agent.externe.tchap.gouv.fr"
    bind(client, validate_address(client, smtp, ADDRESS, secret="again"), other_mxid,
         secret="again")  # fmt: skip
    rebound = lookup_v1()
    assert rebound["mxid"] == other_mxid and rebound["ts"] > lookup.association_json(row)["ts"]

    old_key = current.keys.key()
    current.keys.replace(signedjson.key.generate_signing_key("1"))
    assert signed_with(current.keys.key()) and not signed_with(old_key)
