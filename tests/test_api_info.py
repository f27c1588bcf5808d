"""/info, /internal-info, /health and binds restricted by domains.yaml, through HTTP."""

import os
import signal
import time

import pytest

from tests.helpers import V1
from tests.helpers import validate_address

DOMAINS = """
platforms:
  education: {server: agent.education.tchap.gouv.fr}
  interieur: {server: agent.interieur.tchap.gouv.fr}
  intradef:
    server: e.agent.intradef.tchap.gouv.fr
    protected_server: agent.intradef.tchap.gouv.fr
  externe: {server: agent.externe.tchap.gouv.fr, requires_invite: true}
default: externe
domains:
  ac-versailles.fr: education
  .interieur.gouv.fr: interieur
  .intradef.gouv.fr: intradef
  .préfecture.example: interieur
addresses:
  jeanne.exemple@laposte.net: interieur
"""

EDUCATION = "agent.education.tchap.gouv.fr"
INTERIEUR = "agent.interieur.tchap.gouv.fr"
EXTERNE = "agent.externe.tchap.gouv.fr"


@pytest.fixture
def domains_file(tmp_path):
    path = tmp_path / "domains.yaml"
    path.write_text(DOMAINS, encoding="utf-8")
    return path


@pytest.fixture
def config(config, domains_file):
    return {**config, "DOMAINS_PATH": str(domains_file), "DOMAINS_CHECK_SECONDS": 0}


def info(client, address, *, medium="email", ip="127.0.0.1", internal=False, headers=None):
    endpoint = "internal-info" if internal else "info"
    query = {"address": address} if medium is None else {"address": address, "medium": medium}
    return client.get(
        f"{V1}/{endpoint}",
        query_string=query,
        environ_base={"REMOTE_ADDR": ip},
        headers=headers,
    )


def hs(client, address, **kwargs):
    r = info(client, address, **kwargs)
    assert r.status_code == 200, r.json
    return r.json


# -- rules -------------------------------------------------------------------


def test_each_kind_of_rule(client):
    assert hs(client, "marie.dupont@ac-versailles.fr") == {"hs": EDUCATION}
    # An exact domain rule does not reach subdomains: those go to the default.
    assert hs(client, "x@lycee.ac-versailles.fr") == {"hs": EXTERNE, "invited": False}
    assert hs(client, "x@interieur.gouv.fr") == {"hs": INTERIEUR}
    assert hs(client, "x@sg.interieur.gouv.fr") == {"hs": INTERIEUR}
    assert hs(client, "jeanne.exemple@laposte.net") == {"hs": INTERIEUR}  # address override
    assert hs(client, "other@laposte.net") == {"hs": EXTERNE, "invited": False}  # default


def test_addresses_as_real_clients_send_them(client):
    assert hs(client, "Marie.Dupont@AC-Versailles.FR") == {"hs": EDUCATION}
    # An unencoded query: the + of the local part arrives as a space.
    r = client.get(f"{V1}/info?medium=email&address=marie+dupont@ac-versailles.fr")
    assert r.json == {"hs": EDUCATION}
    assert hs(client, "x@ac-versailles.fr", medium="") == {"hs": EDUCATION}
    assert hs(client, "x@ac-versailles.fr", medium=None) == {"hs": EDUCATION}
    # Internationalised domains, in Unicode or in punycode.
    assert hs(client, "agent@sous.préfecture.example") == {"hs": INTERIEUR}
    assert hs(client, "agent@xn--prfecture-c4a.example") == {"hs": INTERIEUR}


def test_bad_queries_are_matrix_errors(client):
    r = client.get(f"{V1}/info?medium=email")
    assert (r.status_code, r.json["errcode"]) == (400, "M_MISSING_PARAMS")
    r = info(client, "+33612345678", medium="msisdn")
    assert (r.status_code, r.json["errcode"]) == (400, "M_UNRECOGNIZED")
    r = info(client, "not-an-address")
    assert (r.status_code, r.json["errcode"]) == (400, "M_INVALID_EMAIL")
    assert r.headers["Access-Control-Allow-Origin"] == "*"


# -- protected platforms ------------------------------------------------------


def test_protected_platform_is_told_to_trusted_networks_only(make_app):
    client = make_app(INFO_TRUSTED_NETWORKS=["10.20.0.0/16"]).test_client()
    trusted = hs(client, "x@intradef.gouv.fr", ip="10.20.3.4")
    assert trusted == {
        "hs": "agent.intradef.tchap.gouv.fr",
        "shadow_hs": "e.agent.intradef.tchap.gouv.fr",
    }
    assert hs(client, "x@intradef.gouv.fr", ip="192.0.2.1") == {
        "hs": "e.agent.intradef.tchap.gouv.fr"
    }


def test_without_trusted_networks_everyone_is_trusted(client):
    assert hs(client, "x@intradef.gouv.fr", ip="192.0.2.1")["shadow_hs"] == (
        "e.agent.intradef.tchap.gouv.fr"
    )


# -- /internal-info -----------------------------------------------------------


def test_internal_info_is_closed_unless_configured(client):
    r = info(client, "x@ac-versailles.fr", internal=True)
    assert (r.status_code, r.json["errcode"]) == (403, "M_FORBIDDEN")


def test_internal_info_for_trusted_networks(make_app):
    client = make_app(
        INTERNAL_API_TRUSTED_NETWORKS=["10.0.0.0/8"], INFO_TRUSTED_NETWORKS=["10.0.0.0/8"]
    ).test_client()
    r = info(client, "x@ac-versailles.fr", internal=True, ip="192.0.2.1")
    assert (r.status_code, r.json["errcode"]) == (403, "M_FORBIDDEN")
    assert hs(client, "x@ac-versailles.fr", internal=True, ip="10.1.2.3") == {
        "hs": EDUCATION,
        "requires_invite": False,
        "invited": False,
    }
    # Always the protected names, whoever the homeserver is.
    assert hs(client, "x@intradef.gouv.fr", internal=True, ip="10.1.2.3") == {
        "hs": "agent.intradef.tchap.gouv.fr",
        "shadow_hs": "e.agent.intradef.tchap.gouv.fr",
        "requires_invite": False,
        "invited": False,
    }


def test_internal_info_with_the_shared_secret(make_app):
    client = make_app(INTERNAL_API_SECRET="s3cr3t-partage").test_client()
    r = info(client, "x@free.fr", internal=True, headers={"Authorization": "Bearer wrong"})
    assert (r.status_code, r.json["errcode"]) == (403, "M_FORBIDDEN")
    r = info(client, "x@free.fr", internal=True, headers={"Authorization": "Bearer s3cr3t-partage"})
    assert r.json == {"hs": EXTERNE, "requires_invite": True, "invited": False}


# -- invitations and existing bindings ---------------------------------------


def store_invite(client, address):
    body = {
        "medium": "email",
        "address": address,
        "room_id": "!salon:agent.dinum.tchap.gouv.fr",
        "sender": "@marie:agent.dinum.tchap.gouv.fr",
    }
    r = client.post(f"{V1}/store-invite", json=body)
    assert r.status_code == 200, r.json


def test_invited_follows_the_invitation(make_app, clock, smtp):
    client = make_app(INTERNAL_API_SECRET="s3cr3t").test_client()
    internal = {"internal": True, "headers": {"Authorization": "Bearer s3cr3t"}}
    guest = "claire@partenaire.example"
    assert hs(client, guest, **internal)["invited"] is False
    store_invite(client, guest)
    assert hs(client, guest, **internal) == {
        "hs": EXTERNE,
        "requires_invite": True,
        "invited": True,
    }
    assert hs(client, guest) == {"hs": EXTERNE, "invited": True}
    clock.advance(days=31)  # the default validity is 30 days
    assert hs(client, guest, **internal)["invited"] is False


def test_invited_while_any_unanswered_invitation_is_live(make_app, clock, smtp):
    app = make_app(INTERNAL_API_SECRET="s3cr3t")
    client, runner = app.test_client(), app.test_cli_runner()
    internal = {"internal": True, "headers": {"Authorization": "Bearer s3cr3t"}}
    guest = "claire@partenaire.example"
    store_invite(client, guest)  # valid for 30 days
    clock.advance(days=20)
    later = client.post(f"{V1}/store-invite", json={
        "medium": "email", "address": guest, "room_id": "!autre:agent.dinum.tchap.gouv.fr",
        "sender": "@marie:agent.dinum.tchap.gouv.fr",
    }).json["token"]  # fmt: skip
    assert "Revoked 1" in runner.invoke(args=["invites", "revoke", later]).output
    # The latest expiry is the revoked one's: the first invitation still decides.
    assert hs(client, guest, **internal)["invited"] is True
    clock.advance(days=11)
    assert hs(client, guest, **internal)["invited"] is False


def bind(client, smtp, address, mxid):
    sid = validate_address(client, smtp, address, secret="bind")
    return client.post(f"{V1}/3pid/bind", json={"sid": sid, "client_secret": "bind", "mxid": mxid})


def test_new_hs_after_a_bind_on_another_server(client, smtp):
    address = "paul.martin@sg.interieur.gouv.fr"
    r = bind(client, smtp, address, "@paul.martin:agent.finances.tchap.gouv.fr")
    assert r.status_code == 200, r.json
    assert hs(client, address) == {"hs": "agent.finances.tchap.gouv.fr", "new_hs": INTERIEUR}
    # Bound on its own platform: no new_hs.
    r = bind(client, smtp, address, f"@paul.martin:{INTERIEUR}")
    assert hs(client, address) == {"hs": INTERIEUR}


# -- binds restricted to the address's platform --------------------------------


def test_binds_follow_routing(make_app, smtp):
    client = make_app(RESTRICT_BINDS_TO_ROUTING=True).test_client()
    address = "marie.dupont@ac-versailles.fr"
    r = bind(client, smtp, address, "@intrus:agent.externe.tchap.gouv.fr")
    assert (r.status_code, r.json["errcode"]) == (400, "M_BINDING_NOT_PERMITTED")
    assert EDUCATION in r.json["error"]
    assert bind(client, smtp, address, f"@marie:{EDUCATION}").status_code == 200
    # Protected platforms accept both their servers.
    for server in ("agent.intradef.tchap.gouv.fr", "e.agent.intradef.tchap.gouv.fr"):
        assert bind(client, smtp, "x@intradef.gouv.fr", f"@x:{server}").status_code == 200


def test_an_address_stays_bindable_on_its_current_server(make_app, smtp):
    address = "paul@ac-versailles.fr"
    old_server = "@paul:agent.finances.tchap.gouv.fr"
    open_client = make_app().test_client()
    assert bind(open_client, smtp, address, old_server).status_code == 200
    strict = make_app(RESTRICT_BINDS_TO_ROUTING=True).test_client()
    assert bind(strict, smtp, address, old_server).status_code == 200
    r = bind(strict, smtp, address, "@paul:agent.culture.tchap.gouv.fr")
    assert r.status_code == 400


# -- editing domains.yaml ----------------------------------------------------


def save(path, text):
    """Save as an editor would, then age the file past the settle delay."""
    path.write_text(text, encoding="utf-8")
    past = time.time() - 5
    os.utime(path, (past, past))


def test_a_saved_edit_is_picked_up(client, domains_file):
    assert hs(client, "x@ac-lyon.fr")["hs"] == EXTERNE
    save(domains_file, DOMAINS.replace("domains:\n", "domains:\n  ac-lyon.fr: education\n"))
    assert hs(client, "x@ac-lyon.fr") == {"hs": EDUCATION}


def test_a_broken_edit_is_refused_and_reported(client, domains_file, runner):
    broken = DOMAINS.replace("ac-versailles.fr: education", "ac-versailles.fr: educaton")
    save(domains_file, broken)
    # The last good rules keep answering.
    assert hs(client, "x@ac-versailles.fr") == {"hs": EDUCATION}
    health = client.get("/health")
    assert health.status_code == 200
    domains = health.json["domains"]
    assert domains["ok"] is False and "ac-versailles.fr" in domains["error"]
    result = runner.invoke(args=["domains", "check"])
    assert result.exit_code == 1
    assert "ac-versailles.fr (line" in result.output and "educaton" in result.output
    save(domains_file, DOMAINS)
    assert client.get("/health").json["domains"]["ok"] is True


@pytest.mark.skipif(
    signal.getsignal(signal.SIGHUP) is signal.SIG_IGN,
    reason="SIGHUP is ignored in this process (started under nohup?): the app rightly "
    "leaves an ignored signal alone, so there is no reload to test",
)
def test_sighup_reloads_at_once(make_app, domains_file):
    client = make_app(DOMAINS_CHECK_SECONDS=3600).test_client()
    assert hs(client, "x@ac-lyon.fr")["hs"] == EXTERNE
    save(domains_file, DOMAINS.replace("domains:\n", "domains:\n  ac-lyon.fr: education\n"))
    assert hs(client, "x@ac-lyon.fr")["hs"] == EXTERNE  # not looked at for an hour
    os.kill(os.getpid(), signal.SIGHUP)
    # Python runs the handler in the main thread at its next check (not necessarily
    # before kill() returns): the reload shows within moments, not an hour.
    deadline = time.monotonic() + 2
    while hs(client, "x@ac-lyon.fr")["hs"] != EDUCATION and time.monotonic() < deadline:
        time.sleep(0.01)
    assert hs(client, "x@ac-lyon.fr")["hs"] == EDUCATION


def test_health(client):
    r = client.get("/health")
    assert r.status_code == 200
    assert r.json["database"] == "ok" and r.json["domains"]["ok"] is True
    assert r.json["domains"]["rules"] == 5 and r.json["domains"]["platforms"] == 4
