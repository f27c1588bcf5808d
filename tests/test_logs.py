"""Log lines: JSON with a request id, and never an address, token, secret or key."""

import json
import logging
import socket
import sqlite3
import threading

import pytest
import requests
from werkzeug.serving import make_server

from identity.logs import ScrubbingJsonFormatter
from identity.logs import scrub
from testing.processes import free_port
from testing.servers import Gunicorn
from testing.servers import migrate
from testing.servers import service_env
from tests.helpers import V1
from tests.helpers import V2
from tests.helpers import auth
from tests.helpers import code_from_mail
from tests.helpers import landing_link_from_mail
from tests.helpers import register_user

SUBMIT = f"{V1}/validate/email/submitToken"


def test_scrub():
    line = (
        '127.0.0.1 - - "GET /_matrix/identity/api/v1/validate/email/submitToken'
        '?sid=1&client_secret=s3cret&token=ABCD HTTP/1.1" 200 '
        "GET /_matrix/identity/invitation/WzEsIms.awm.sig?lang=fr "
        "failed for Marie.Dupont+x@ac-versailles.fr, kept m…@ac-versailles.fr"
    )
    cleaned = scrub(line)
    for secret in ("s3cret", "ABCD", "WzEsIms", "Marie.Dupont"):
        assert secret not in cleaned
    assert "/submitToken?… HTTP/1.1" in cleaned
    assert "/_matrix/identity/invitation/…?…" in cleaned
    assert "M…@ac-versailles.fr" in cleaned and "m…@ac-versailles.fr" in cleaned
    assert scrub("@marie:agent.dinum.tchap.gouv.fr") == "@marie:agent.dinum.tchap.gouv.fr"


def test_scrub_the_guest_links_tokens():
    line = (
        '"POST /_matrix/identity/guest/refuse/Abc_d-123 HTTP/1.1" 200 '
        '"GET /_matrix/identity/guest/report/Xyz987?lang=en HTTP/1.1" 200 '
        '"POST /_matrix/identity/guest/refuse/Qrs456/undo HTTP/1.1" 200'
    )
    cleaned = scrub(line)
    for secret in ("Abc_d-123", "Xyz987", "Qrs456"):
        assert secret not in cleaned
    assert "/guest/refuse/… HTTP/1.1" in cleaned and "/guest/refuse/…/undo" in cleaned


@pytest.mark.parametrize(
    "line",
    [
        # A quote or an apostrophe is legal in a query string: it must not end the cut.
        "GET /submitToken?utm='x&sid=S1D&client_secret=s3cret&token=ABCD HTTP/1.1",
        'GET /submitToken?utm="x&sid=S1D&client_secret=s3cret&token=ABCD HTTP/1.1',
        "Error handling request /submitToken?utm=%27x'&sid=S1D&client_secret=s3cret&token=ABCD",
        "Invalid request from ip=127.0.0.1: Invalid HTTP request line:"
        " 'GET /submitToken?sid=S1D&client_secret=s3cret&token=ABCD HTTP/1.1 x'",
        "lookup of marie.dupont%40ac-versailles.fr",
    ],
)
def test_scrub_odd_lines(line):
    cleaned = scrub(line)
    for secret in ("S1D", "s3cret", "ABCD", "marie.dupont"):
        assert secret not in cleaned


def test_json_lines_stay_json_whatever_they_scrub(capfd):
    """Values are scrubbed before they are encoded: escapes, quotes, colours and
    non-ASCII text neither hide a secret nor break the line."""
    handler = logging.StreamHandler()
    handler.setFormatter(ScrubbingJsonFormatter("%(levelname)s %(message)s"))
    record = logging.makeLogRecord({
        "msg": '%s "%s" \x1b[31m%s\x1b[0m',
        "args": ("c…@partenaire.example", "GET /x?utm=\"y&sid=S1D", "\x01marie@ex.fr"),
        "levelname": "INFO",
    })  # fmt: skip
    line = handler.format(record)
    decoded = json.loads(line)["message"]
    assert "S1D" not in line and "marie" not in line and "\x1b" not in decoded
    assert "…@partenaire.example" in decoded


@pytest.fixture
def serve():
    """Serve an app on a real HTTP port (werkzeug's server, with its access log)."""
    servers = []

    def start(app):
        port = free_port()
        servers.append(make_server("127.0.0.1", port, app, threaded=True))
        threading.Thread(target=servers[-1].serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{port}"

    yield start
    for server in servers:
        server.shutdown()


def raw_get(base: str, target: str) -> bytes:
    """GET `target` exactly as written (an HTTP library would percent-encode quotes)."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(
            f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
        )
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    return answer


def test_a_full_scenario_leaves_no_secret_in_the_logs(make_app, serve, smtp, capfd, tmp_path,
                                                       fake_homeserver):  # fmt: skip
    # Built here, not in a fixture, so that its log handler writes to this test's stderr.
    # INFO, as in production (at DEBUG the in-process SMTP sink logs the mails it gets).
    app = make_app(LOG_FORMAT="json", LOG_LEVEL="INFO", INTERNAL_API_SECRET="partage-secret")
    base = serve(app)
    api = requests.Session()
    guest, agent = "Claire.Martin@partenaire.example", "paul.durand@ac-versailles.fr"
    used = [guest, guest.lower(), agent, "partage-secret", "client-s3cret"]

    # An invitation, its mail and its landing page.
    invite = {"medium": "email", "address": guest, "room_id": "!r:agent.dinum.tchap.gouv.fr",
              "sender": "@marie:agent.dinum.tchap.gouv.fr", "room_name": "Projet X"}  # fmt: skip
    stored = api.post(f"{base}{V1}/store-invite", json=invite).json()
    used += [stored["token"]]
    landing = landing_link_from_mail(smtp.last())
    used += [landing.rsplit("/", 1)[1].split("?")[0]]
    page = api.get(base + landing.split("https://id.tchap.test", 1)[1], timeout=5)
    assert page.status_code == 200

    # The guest's one-click refusal (RFC 8058), its page, a report, and the way back.
    refuse = str(smtp.last().message["List-Unsubscribe"]).strip("<>")
    guest_token = refuse.rsplit("/", 1)[1]
    used += [guest_token]
    refuse_path = refuse.split("https://id.tchap.test", 1)[1]
    assert api.get(base + refuse_path, timeout=5).status_code == 200
    one_click = {"Content-Type": "application/x-www-form-urlencoded"}
    # A fresh session each time, as mailbox providers post: no cookie.
    r = requests.post(
        base + refuse_path, data="List-Unsubscribe=One-Click", headers=one_click, timeout=5
    )
    assert r.status_code == 200
    report_path = refuse_path.replace("/refuse/", "/report/")
    assert requests.post(base + report_path, headers=one_click, timeout=5).status_code == 200
    r = requests.post(base + refuse_path + "/undo", headers=one_click, timeout=5)
    assert r.status_code == 200
    used += [code_from_mail(smtp.last())]
    assert api.post(f"{base}{V1}/store-invite", json=invite).status_code == 403

    # Validation by code and by link, then a bind and lookups.
    body = {"client_secret": "client-s3cret", "email": agent, "send_attempt": 1}
    sid = api.post(f"{base}{V1}/validate/email/requestToken", json=body).json()["sid"]
    code = code_from_mail(smtp.last())
    used += [code, code.replace("-", "")]
    query = {"sid": sid, "client_secret": "client-s3cret", "token": code}
    api.get(f"{base}{V1}/validate/email/submitToken", params=query)
    bind = {
        "sid": sid,
        "client_secret": "client-s3cret",
        "mxid": "@paul:agent.education.tchap.gouv.fr",
    }
    assert api.post(f"{base}{V1}/3pid/bind", json=bind).status_code == 200
    api.get(f"{base}{V1}/lookup", params={"medium": "email", "address": agent})
    api.get(f"{base}{V1}/info", params={"medium": "email", "address": agent})
    api.get(f"{base}{V1}/internal-info", params={"medium": "email", "address": guest},
            headers={"Authorization": "Bearer partage-secret"})  # fmt: skip
    # An account, its token, and a failed attempt with a wrong one.
    client = app.test_client()
    token = register_user(client, fake_homeserver, "alice")
    used += [token]
    api.get(f"{base}{V2}/account", headers=auth(token))
    api.get(f"{base}{V2}/account", headers=auth("wrong-" + token))
    # Errors, including a bad address, are logged too.
    api.get(f"{base}{V1}/info", params={"medium": "email", "address": "pas@une@adresse"})
    # An odd query string: quotes and apostrophes do not stop the scrubbing.
    for quote in ("'", '"'):
        raw_get(base, f"{SUBMIT}?utm={quote}x&sid={sid}&client_secret=client-s3cret&token={code}")

    # A failing SMTP server (nothing listens): the request fails, its secrets stay out.
    broken_mail = serve(make_app(LOG_FORMAT="json", LOG_LEVEL="INFO", TESTING=False,
                                 MAIL_SERVER="127.0.0.1", MAIL_PORT=free_port()))  # fmt: skip
    body = {"client_secret": "smtp-s3cret", "email": "Jeanne.Petit@ac-lille.fr", "send_attempt": 1}
    r = api.post(f"{broken_mail}{V1}/validate/email/requestToken", json=body)
    assert r.json()["errcode"] == "M_EMAIL_SEND_ERROR"
    used += ["smtp-s3cret", "Jeanne.Petit@ac-lille.fr", "jeanne.petit@ac-lille.fr"]

    # A database error (a database without the schema): the statement's values, which
    # are the request's sid, client secret and address, stay out of the traceback.
    empty = tmp_path / "empty.sqlite3"
    sqlite3.connect(empty).close()
    broken_db = serve(make_app(LOG_FORMAT="json", LOG_LEVEL="INFO", TESTING=False,
                               SQLALCHEMY_DATABASE_URI=f"sqlite:///{empty}",
                               AUTO_MIGRATE=False))  # fmt: skip
    query = {"sid": "db-s1d", "client_secret": "db-s3cret", "token": "DB-T0KEN"}
    r = api.get(f"{broken_db}{SUBMIT}", params=query)
    assert r.status_code == 500 and r.json()["errcode"] == "M_UNKNOWN"
    body = {"client_secret": "db-s3cret", "email": "Louise.Moreau@ac-nice.fr", "send_attempt": 1}
    r = api.post(f"{broken_db}{V1}/validate/email/requestToken", json=body)
    assert r.status_code == 500
    used += ["db-s1d", "db-s3cret", "DB-T0KEN", body["email"], body["email"].lower()]

    out, err = capfd.readouterr()
    logs = out + err
    assert "submitToken" in logs and "/store-invite" in logs  # the access log was captured
    assert "EmailSendError" in logs or "Could not send mail" in logs
    assert "no such table" in logs  # the database error and its traceback were logged
    for secret in used:
        assert secret not in logs, f"{secret!r} reached the logs"
    # Every line of ours is JSON with a request id.
    ours = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert ours and all(
        {"time", "level", "logger", "message", "request_id"} <= set(r) for r in ours
    )
    assert any(r["request_id"] != "-" for r in ours)


def test_request_ids(client):
    r = client.get("/_matrix/identity/versions")
    assert len(r.headers["X-Request-ID"]) == 16
    r = client.get("/_matrix/identity/versions", headers={"X-Request-ID": "proxy-abc.123"})
    assert r.headers["X-Request-ID"] == "proxy-abc.123"
    r = client.get("/_matrix/identity/versions", headers={"X-Request-ID": "bad id; x"})
    assert len(r.headers["X-Request-ID"]) == 16


def test_gunicorn_errors_leave_no_secret_in_the_logs(tmp_path, smtp):
    """gunicorn's own lines (a request it cannot parse, an exception the application
    lets through) quote the request line: they are scrubbed as the access log is."""
    database = tmp_path / "db.sqlite3"
    env = service_env(
        f"sqlite:///{database}",
        tmp_path,
        WORKERS="2",
        THREADS="2",
        DELIVERY_WORKER_ENABLED="false",
        RATELIMIT_ENABLED="false",
        MAIL_SERVER=smtp.host,
        MAIL_PORT=str(smtp.port),
        LOG_FORMAT="json",
        # Flask hands unexpected errors to gunicorn, which logs them with the request.
        PROPAGATE_EXCEPTIONS="true",
    )
    migrate(env)
    with (tmp_path / "gunicorn.log").open("a+") as log:
        server = Gunicorn(env, ("-c", "gunicorn.conf.py"), log=log)
        try:
            address = "Agathe.Roux@ac-nantes.fr"
            body = {"client_secret": "gu-s3cret", "email": address, "send_attempt": 1}
            r = requests.post(f"{server.base}{V1}/validate/email/requestToken", json=body,
                              timeout=30)  # fmt: skip
            sid = r.json()["sid"]
            code = code_from_mail(smtp.last())
            secrets = [sid, "gu-s3cret", code, address, address.lower()]
            query = f"sid={sid}&client_secret=gu-s3cret&token={code}"
            # Quotes in the query string.
            raw_get(server.base, f"{SUBMIT}?utm='x&{query}")
            # A request line gunicorn refuses: it quotes the line in its error log.
            raw_get(server.base, f"{SUBMIT}?{query} HTTP/1.1 junk")
            # An error in the application while handling a request (its table is gone).
            with sqlite3.connect(database) as connection:
                connection.execute("DROP TABLE validation_session")
            answer = raw_get(server.base, f"{SUBMIT}?{query}")
            assert b" 500 " in answer.split(b"\r\n", 1)[0]
        finally:
            server.stop()
        log.seek(0)
        logs = log.read()
    assert "Error handling request" in logs and "Invalid request from" in logs
    for secret in secrets:
        assert secret not in logs, f"{secret!r} reached the logs"


@pytest.mark.parametrize("raw", [False, True], ids=["summary", "raw"])
def test_printed_mails_keep_one_json_object_per_line(tmp_path, raw):
    """A test set-up under gunicorn with no mail server (MAIL_PRINT_TO_LOG): each mail is
    one JSON line summing it up, so that a log pipeline still reads one object per line;
    MAIL_PRINT_RAW=true prints the whole message instead, to check a template."""
    env = service_env(f"sqlite:///{tmp_path / 'db.sqlite3'}", tmp_path, WORKERS="1",
                      DELIVERY_WORKER_ENABLED="false", RATELIMIT_ENABLED="false",
                      MAIL_PRINT_TO_LOG="true", MAIL_PRINT_RAW=str(raw).lower(),
                      PUBLIC_BASE_URL="https://id.tchap.example")  # fmt: skip
    migrate(env)
    address = "Agathe.Roux@ac-nantes.fr"
    with (tmp_path / "gunicorn.log").open("a+") as log:
        with Gunicorn(env, ("-c", "gunicorn.conf.py"), log=log) as server:
            body = {"client_secret": "pr-s3cret", "email": address, "send_attempt": 1}
            r = requests.post(f"{server.base}{V1}/validate/email/requestToken", json=body,
                              timeout=30)  # fmt: skip
            assert r.status_code == 200, r.text
        log.seek(0)
        lines = log.read().splitlines()
    if raw:
        assert any(line.startswith("Content-Type: multipart/alternative") for line in lines)
        assert f"To: {address}" in lines
        return
    records = [json.loads(line) for line in lines]  # every line
    [mail] = [r for r in records if r["logger"] == "identity.mailer"]
    assert mail["message"].startswith("MAIL_SERVER is not set: mail NOT sent to A…@ac-nantes.fr")
    assert address not in "\n".join(lines)
    [link] = mail["mail_links"]
    assert link.startswith("https://id.tchap.example/_matrix/identity/api/v1/validate/email/")
    assert "client_secret=pr-s3cret" in link and mail["mail_code"] in mail["message"]


def test_a_mail_server_that_fails_is_named_in_the_log(make_app, capfd):
    """An operator reading "Could not send mail" learns which server refused, and why."""
    port = free_port()  # nothing listens there
    app = make_app(MAIL_SERVER="127.0.0.1", MAIL_PORT=port, LOG_FORMAT="json")
    body = {"client_secret": "s3cret", "email": "Jeanne.Petit@ac-lille.fr", "send_attempt": 1}
    r = app.test_client().post(f"{V1}/validate/email/requestToken", json=body)
    assert r.json["errcode"] == "M_EMAIL_SEND_ERROR"
    [line] = [json.loads(line)["message"] for line in capfd.readouterr().err.splitlines()
              if "Could not send mail" in line]  # fmt: skip
    assert line.startswith(f"Could not send mail to J…@ac-lille.fr through 127.0.0.1:{port}:")
    assert "ConnectionRefusedError: Connection refused" in line
