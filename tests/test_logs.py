"""Log lines: JSON with a request id, and never an address, token, secret or key."""

import json
import threading

import pytest
import requests
from werkzeug.serving import make_server

from identity.logs import scrub
from tests.helpers import V1
from tests.helpers import V2
from tests.helpers import auth
from tests.helpers import code_from_mail
from tests.helpers import landing_link_from_mail
from tests.helpers import register_user
from tests.support import free_port


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


def test_a_full_scenario_leaves_no_secret_in_the_logs(make_app, serve, smtp, capfd,
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

    out, err = capfd.readouterr()
    logs = out + err
    assert "submitToken" in logs and "/store-invite" in logs  # the access log was captured
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
