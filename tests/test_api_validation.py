"""Email validation: requestToken, submitToken (POST and the link in the mail), getValidated3pid."""

import logging

import psycopg
import pytest
from sqlalchemy import func
from sqlalchemy import select
from sqlalchemy import text

from identity.extensions import db
from identity.storage.models import ValidationSession
from tests.helpers import V1
from tests.helpers import V2
from tests.helpers import auth
from tests.helpers import code_from_mail
from tests.helpers import link_from_mail
from tests.helpers import query_of
from tests.helpers import register_user
from tests.helpers import relative
from tests.helpers import request_code

ADDRESS = "Marie.Dupont@ac-versailles.fr"


def submit(client, sid, token, *, secret="s3cret", prefix=V1, headers=None):
    body = {"sid": sid, "client_secret": secret, "token": token}
    return client.post(f"{prefix}/validate/email/submitToken", json=body, headers=headers)


def validated(client, sid, *, secret="s3cret", prefix=V1, headers=None):
    query = f"sid={sid}&client_secret={secret}"
    return client.get(f"{prefix}/3pid/getValidated3pid?{query}", headers=headers)


def test_code_arrives_by_mail_and_validates_the_address(client, smtp, clock):
    r = request_code(client, ADDRESS)
    assert r.status_code == 200
    sid = r.json["sid"]
    mail = smtp.last()
    assert mail.recipients == ["Marie.Dupont@ac-versailles.fr"]  # as written, domain normalised
    parts = {part.get_content_type() for part in mail.message.walk()}
    assert {"multipart/alternative", "text/plain", "text/html"} <= parts
    text = mail.text()
    assert text.index("Voici le code") < text.index("Here is the code")  # French first
    code = code_from_mail(mail)
    assert code in mail.html()

    assert validated(client, sid).json["errcode"] == "M_SESSION_NOT_VALIDATED"
    assert submit(client, sid, code).json == {"success": True}
    r = validated(client, sid)
    assert r.json == {
        "medium": "email",
        "address": "marie.dupont@ac-versailles.fr",
        "validated_at": int(clock.now().timestamp() * 1000),
    }


def test_code_is_forgiving_about_case_spaces_and_dashes(client, smtp):
    sid = request_code(client, ADDRESS).json["sid"]
    code = code_from_mail(smtp.last())
    typed = " " + code.lower().replace("-", " ") + " "
    assert submit(client, sid, typed).json == {"success": True}


def test_v2_requires_an_access_token(client):
    r = request_code(client, ADDRESS, prefix=V2)
    assert (r.status_code, r.json["errcode"]) == (401, "M_UNAUTHORIZED")


def test_v2_flow_with_an_account(client, smtp, fake_homeserver):
    headers = auth(register_user(client, fake_homeserver))
    sid = request_code(client, ADDRESS, prefix=V2, headers=headers).json["sid"]
    code = code_from_mail(smtp.last())
    assert submit(client, sid, code, prefix=V2, headers=headers).json == {"success": True}
    r = validated(client, sid, prefix=V2, headers=headers)
    assert r.json["address"] == "marie.dupont@ac-versailles.fr"


def test_same_send_attempt_returns_same_sid_and_sends_nothing(client, smtp):
    first = request_code(client, ADDRESS, attempt=1).json["sid"]
    again = request_code(client, ADDRESS, attempt=1).json["sid"]
    assert first == again and len(smtp.messages) == 1
    higher = request_code(client, ADDRESS, attempt=2).json["sid"]
    assert higher == first and len(smtp.messages) == 2
    assert code_from_mail(smtp.messages[0]) == code_from_mail(smtp.messages[1])


def test_send_attempt_given_as_a_string_is_accepted(client, smtp):
    r = client.post(
        f"{V1}/validate/email/requestToken",
        json={"client_secret": "s3cret", "email": ADDRESS, "send_attempt": "3"},
    )
    assert r.status_code == 200 and len(smtp.messages) == 1


def test_v1_accepts_form_bodies(client, smtp):
    r = client.post(
        f"{V1}/validate/email/requestToken",
        data={"client_secret": "s3cret", "email": ADDRESS, "send_attempt": "1"},
    )
    assert r.status_code == 200 and len(smtp.messages) == 1


@pytest.mark.parametrize(
    ("body", "errcode"),
    [
        ({"email": ADDRESS, "send_attempt": 1}, "M_MISSING_PARAMS"),
        ({"client_secret": "s3cret", "send_attempt": 1}, "M_MISSING_PARAMS"),
        ({"client_secret": "s3cret", "email": ADDRESS}, "M_MISSING_PARAMS"),
        ({"client_secret": "bad secret!", "email": ADDRESS, "send_attempt": 1}, "M_INVALID_PARAM"),
        ({"client_secret": "s3cret", "email": ADDRESS, "send_attempt": "x"}, "M_INVALID_PARAM"),
        (
            {"client_secret": "s3cret", "email": "not-an-address", "send_attempt": 1},
            "M_INVALID_EMAIL",
        ),
        ({"client_secret": "s3cret", "email": "a@b@c.fr", "send_attempt": 1}, "M_INVALID_EMAIL"),
    ],
)
def test_request_token_errors(client, smtp, body, errcode):
    r = client.post(f"{V1}/validate/email/requestToken", json=body)
    assert (r.status_code, r.json["errcode"]) == (400, errcode)
    assert smtp.messages == []


@pytest.mark.parametrize(
    ("data", "content_type", "errcode"),
    [
        (b"{not json", "application/json", "M_NOT_JSON"),
        (b"[1, 2]", "application/json", "M_BAD_JSON"),
    ],
)
def test_malformed_bodies(client, data, content_type, errcode):
    r = client.post(f"{V1}/validate/email/requestToken", data=data, content_type=content_type)
    assert (r.status_code, r.json["errcode"]) == (400, errcode)


def test_oversized_body_is_m_too_large(client):
    r = client.post(
        f"{V1}/validate/email/requestToken",
        data=b'{"email": "' + b"a" * 70_000 + b'"}',
        content_type="application/json",
    )
    assert (r.status_code, r.json["errcode"]) == (413, "M_TOO_LARGE")


@pytest.mark.parametrize(
    "next_link", ["javascript:alert(1)", "file:///etc/passwd", "ftp://x.fr/", "/relative"]
)
def test_next_link_must_be_http_or_https(client, smtp, next_link):
    r = request_code(client, ADDRESS, next_link=next_link)
    assert (r.status_code, r.json["errcode"]) == (400, "M_INVALID_PARAM")
    assert smtp.messages == []


@pytest.fixture
def allowlisted(config):
    config["NEXT_LINK_DOMAIN_ALLOWLIST"] = ["www.tchap.gouv.fr"]


def test_next_link_outside_allowlist_is_refused(allowlisted, client, smtp):
    r = request_code(client, ADDRESS, next_link="https://evil.example/")
    assert (r.status_code, r.json["errcode"]) == (400, "M_INVALID_PARAM")
    r = request_code(client, ADDRESS, next_link="https://www.tchap.gouv.fr/#/welcome")
    assert r.status_code == 200


def test_link_in_mail_validates_and_redirects_to_next_link(client, smtp):
    sid = request_code(client, ADDRESS, next_link="https://www.tchap.gouv.fr/#/done").json["sid"]
    link = link_from_mail(smtp.last())
    assert link.startswith("https://id.tchap.test/_matrix/identity/api/v1/validate/email/")
    assert query_of(link)["sid"] == sid
    r = client.get(relative(link))
    assert (r.status_code, r.headers["Location"]) == (302, "https://www.tchap.gouv.fr/#/done")
    assert validated(client, sid).json["address"] == "marie.dupont@ac-versailles.fr"


def test_link_without_next_link_shows_a_page_in_french_then_english(client, smtp):
    request_code(client, ADDRESS)
    r = client.get(relative(link_from_mail(smtp.last())))
    assert r.status_code == 200 and r.mimetype == "text/html"
    page = r.get_data(as_text=True)
    assert page.index("Votre adresse est confirmée") < page.index("Your address is confirmed")
    assert 'lang="fr"' in page and 'lang="en"' in page


def test_wrong_or_expired_link_shows_what_happened(client, smtp, clock):
    sid = request_code(client, ADDRESS).json["sid"]
    link = relative(link_from_mail(smtp.last()))
    r = client.get(link.replace("token=", "token=WRONG"))
    assert r.status_code == 400 and "Ce code n'est pas le bon" in r.get_data(as_text=True)
    clock.advance(hours=25)
    r = client.get(link)
    assert r.status_code == 400 and "Ce lien a expiré" in r.get_data(as_text=True)
    assert "This link has expired" in r.get_data(as_text=True)
    assert sid


def test_submit_token_errors(client, smtp):
    sid = request_code(client, ADDRESS).json["sid"]
    code = code_from_mail(smtp.last())
    assert submit(client, "nope", code).json["errcode"] == "M_NO_VALID_SESSION"
    assert submit(client, sid, code, secret="other").json["errcode"] == "M_NO_VALID_SESSION"
    r = submit(client, sid, "ZZZZ-ZZZZ")
    assert (r.status_code, r.json["errcode"]) == (400, "M_TOKEN_INCORRECT")
    r = client.post(f"{V1}/validate/email/submitToken", json={"sid": sid})
    assert r.json["errcode"] == "M_MISSING_PARAMS"


@pytest.fixture
def three_attempts(config):
    config["TOKEN_MAX_ATTEMPTS"] = 3


def test_session_closes_after_max_wrong_codes(three_attempts, client, smtp):
    sid = request_code(client, ADDRESS).json["sid"]
    code = code_from_mail(smtp.last())
    for _ in range(3):
        assert submit(client, sid, "ZZZZ-ZZZZ").json["errcode"] == "M_TOKEN_INCORRECT"
    assert submit(client, sid, code).json["errcode"] == "M_NO_VALID_SESSION"


def test_session_expires_24_hours_after_its_last_change(client, smtp, clock):
    sid = request_code(client, ADDRESS, attempt=1).json["sid"]
    clock.advance(hours=20)
    request_code(client, ADDRESS, attempt=2)  # a change: the clock restarts
    clock.advance(hours=20)
    code = code_from_mail(smtp.last())
    assert submit(client, sid, code).json == {"success": True}
    clock.advance(hours=23)
    assert validated(client, sid).status_code == 200
    clock.advance(hours=2)
    r = validated(client, sid)
    assert (r.status_code, r.json["errcode"]) == (400, "M_SESSION_EXPIRED")
    r = submit(client, sid, code)
    assert (r.status_code, r.json["errcode"]) == (400, "M_SESSION_EXPIRED")


def test_expired_session_is_replaced_by_a_new_one(client, smtp, clock):
    first = request_code(client, ADDRESS, attempt=1).json["sid"]
    clock.advance(hours=25)
    second = request_code(client, ADDRESS, attempt=1).json["sid"]
    assert first != second and len(smtp.messages) == 2


def test_a_session_is_replaced_at_the_very_moment_it_expires(client, smtp, clock):
    first = request_code(client, ADDRESS, attempt=1).json["sid"]
    clock.advance(hours=24)
    second = request_code(client, ADDRESS, attempt=1).json["sid"]
    assert first != second and len(smtp.messages) == 2


def test_hide_parameters_survives_engine_options_of_the_operators(make_app):
    app = make_app(SQLALCHEMY_ENGINE_OPTIONS={"pool_recycle": 300, "hide_parameters": False})
    with app.app_context():
        assert db.engine.hide_parameters is True


def test_get_validated_3pid_errors(client):
    r = validated(client, "unknown")
    assert (r.status_code, r.json["errcode"]) == (400, "M_NO_VALID_SESSION")
    r = client.get(f"{V1}/3pid/getValidated3pid?sid=1")
    assert (r.status_code, r.json["errcode"]) == (400, "M_MISSING_PARAMS")


def test_smtp_failure_is_m_email_send_error_and_stores_nothing(app, client, smtp, caplog):
    smtp.refuse = True
    r = request_code(client, ADDRESS)
    assert (r.status_code, r.json["errcode"]) == (500, "M_EMAIL_SEND_ERROR")
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(ValidationSession)) == 0
    ours = " ".join(r.getMessage() for r in caplog.records if r.name.startswith("identity"))
    assert "ac-versailles.fr" in ours and "marie.dupont@" not in ours.lower()
    smtp.refuse = False
    assert request_code(client, ADDRESS).status_code == 200
    assert len(smtp.messages) == 1


@pytest.fixture
def smtp_down(config):
    from testing.processes import free_port

    config["MAIL_PORT"] = free_port()


def test_unreachable_smtp_server_is_m_email_send_error(smtp_down, client):
    r = request_code(client, ADDRESS)
    assert (r.status_code, r.json["errcode"]) == (500, "M_EMAIL_SEND_ERROR")


def test_no_log_line_holds_the_address_code_or_secret(client, smtp, caplog):
    caplog.set_level(logging.DEBUG)
    sid = request_code(client, ADDRESS, secret="VerySecretValue").json["sid"]
    code = code_from_mail(smtp.last())
    submit(client, sid, code, secret="VerySecretValue")
    # Our log lines only: the test SMTP server (mail.log) logs what it receives.
    ours = [r for r in caplog.records if not r.name.startswith("mail.log")]
    logged = "\n".join(r.getMessage() for r in ours).lower()
    assert logged
    for secret in ("marie.dupont", "verysecretvalue", code.lower(), code.replace("-", "").lower()):
        assert secret not in logged


@pytest.mark.parametrize("prefix", [V1, V2])
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/validate/msisdn/requestToken"),
        ("POST", "/validate/msisdn/submitToken"),
        ("GET", "/validate/msisdn/submitToken"),
    ],
)
def test_phone_numbers_are_not_supported(client, prefix, method, path):
    r = client.open(f"{prefix}{path}", method=method, json={})
    assert (r.status_code, r.json["errcode"]) == (404, "M_UNRECOGNIZED")
    assert "Phone numbers" in r.json["error"]


def test_purge_command_deletes_expired_sessions(app, client, smtp, clock, runner):
    request_code(client, ADDRESS)
    clock.advance(hours=25)
    request_code(client, "autre@interieur.gouv.fr")
    result = runner.invoke(args=["sessions", "purge-expired"])
    assert result.exit_code == 0 and "1" in result.output
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(ValidationSession)) == 1


@pytest.mark.parametrize(
    "send_attempt",
    [2**63, -(2**63) - 1, 2**53, -1e20, 1e300, 1.5, "99999999999999999999", "9" * 5000,
     "³", "1e3", "", "x", True, [1], {"n": 1}],
)  # fmt: skip
def test_send_attempt_out_of_range_or_not_an_integer_is_m_invalid_param(
    app, client, smtp, send_attempt
):
    r = request_code(client, ADDRESS, attempt=send_attempt)
    expected = "M_MISSING_PARAMS" if send_attempt == "" else "M_INVALID_PARAM"
    assert (r.status_code, r.json["errcode"]) == (400, expected)
    assert smtp.messages == []
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(ValidationSession)) == 0


@pytest.mark.parametrize("literal", [b"Infinity", b"-Infinity", b"NaN", b"1e400"])
def test_send_attempt_beyond_any_float_is_m_invalid_param(client, smtp, literal):
    body = b'{"client_secret": "s3cret", "email": "a@ac-versailles.fr", "send_attempt": '
    r = client.post(f"{V1}/validate/email/requestToken", data=body + literal + b"}",
                    content_type="application/json")  # fmt: skip
    assert (r.status_code, r.json["errcode"]) == (400, "M_INVALID_PARAM")
    assert smtp.messages == []


@pytest.mark.parametrize("send_attempt", [0, 2**53 - 1, -(2**53) + 1, 3.0, " 7 ", "+2", "-1"])
def test_send_attempts_sydent_accepts_are_accepted(client, smtp, send_attempt):
    r = request_code(client, ADDRESS, attempt=send_attempt)
    assert r.status_code == 200 and len(smtp.messages) == 1


@pytest.mark.parametrize(
    "next_link",
    [
        "https://www.tchap.gouv.fr:99999/",
        "https://www.tchap.gouv.fr:0/",
        "https://www.tchap.gouv.fr:abc/",
        "https://www.tchap.gouv.fr/\r\nSet-Cookie: a=b",
        "https://www.tchap.gouv.fr/#/done\n",
        "https://www.tchap.gouv.fr/\x00",
        "https://www.tchap.gouv.fr/a b",
        "https://www.tchap.gouv.fr/\u2028",
        "https://[::1/",
        "https://evil.example\\@www.tchap.gouv.fr/",
        "https://user:password@www.tchap.gouv.fr/",
        "https://" + "a" * 60 + ".fr/" + "x" * 2048,
        "https:///path-only",
    ],
)
def test_next_link_the_redirect_could_not_follow_is_refused_at_request_token(
    client, smtp, next_link
):
    r = request_code(client, ADDRESS, next_link=next_link)
    assert (r.status_code, r.json["errcode"]) == (400, "M_INVALID_PARAM")
    assert smtp.messages == []


@pytest.mark.parametrize(
    "next_link",
    [
        "https://www.tchap.gouv.fr:8443/#/done?x=1&y=%20",
        "http://localhost:8080/",
        "https://[2001:db8::1]:8448/return",
        "https://tchap.gouv.fr/retour/",
    ],
)
def test_unusual_but_valid_next_links_are_followed_after_validation(client, smtp, next_link):
    request_code(client, ADDRESS, next_link=next_link)
    r = client.get(relative(link_from_mail(smtp.last())))
    assert (r.status_code, r.headers["Location"]) == (302, next_link)


def test_a_stored_next_link_the_redirect_cannot_follow_shows_the_page(app, client, smtp):
    """A session stored before next_link was checked this closely still validates."""
    sid = request_code(client, ADDRESS, next_link="https://www.tchap.gouv.fr/").json["sid"]
    with app.app_context():
        session = db.session.scalar(select(ValidationSession).filter_by(sid=sid))
        session.next_link = "https://www.tchap.gouv.fr:99999/\r\n"
        db.session.commit()
    r = client.get(relative(link_from_mail(smtp.last())))
    assert r.status_code == 200 and "Votre adresse est confirmée" in r.get_data(as_text=True)
    assert validated(client, sid).status_code == 200


def test_a_right_code_after_the_limit_is_refused_then_a_right_code_before_it_is_kept(
    three_attempts, client, smtp
):
    sid = request_code(client, ADDRESS).json["sid"]
    code = code_from_mail(smtp.last())
    for _ in range(2):
        assert submit(client, sid, "ZZZZ-ZZZZ").json["errcode"] == "M_TOKEN_INCORRECT"
    # A right code does not use up an attempt: the link may be opened again and again.
    for _ in range(3):
        assert submit(client, sid, code).json == {"success": True}
    assert submit(client, sid, "ZZZZ-ZZZZ").json["errcode"] == "M_TOKEN_INCORRECT"
    assert submit(client, sid, code).json["errcode"] == "M_NO_VALID_SESSION"


@pytest.fixture
def failing_database(config, db_url):
    """A database that refuses new sessions (an IntegrityError from a trigger), served
    with TESTING off so that the error reaches the log as it would in production."""
    config["TESTING"] = False
    postgres = db_url.startswith("postgresql")
    yield postgres
    if postgres:
        with psycopg.connect(db_url.replace("postgresql+psycopg://", "postgresql://")) as c:
            c.execute("DROP TRIGGER IF EXISTS refuse_sessions ON validation_session")
            c.execute("DROP FUNCTION IF EXISTS refuse_sessions()")
            c.execute("ALTER TABLE IF EXISTS gone RENAME TO validation_session")


def refuse_new_sessions(postgres: bool) -> None:
    if postgres:
        db.session.execute(text(
            "CREATE FUNCTION refuse_sessions() RETURNS trigger LANGUAGE plpgsql AS $$"
            " BEGIN RAISE EXCEPTION 'forced failure' USING ERRCODE = 'unique_violation'; END $$"
        ))  # fmt: skip
        db.session.execute(text(
            "CREATE TRIGGER refuse_sessions BEFORE INSERT ON validation_session"
            " FOR EACH ROW EXECUTE FUNCTION refuse_sessions()"
        ))  # fmt: skip
    else:
        db.session.execute(text(
            "CREATE TRIGGER refuse_sessions BEFORE INSERT ON validation_session"
            " BEGIN SELECT RAISE(ABORT, 'forced failure'); END"
        ))  # fmt: skip
    db.session.commit()


def test_database_errors_log_no_sid_secret_code_or_address(
    failing_database, app, client, smtp, caplog
):
    secret = "VerySecretValue"
    sid = request_code(client, ADDRESS, secret=secret).json["sid"]
    code = code_from_mail(smtp.last())
    with app.app_context():
        refuse_new_sessions(failing_database)
    r = request_code(client, "Jean.Martin@ac-versailles.fr", secret=secret)
    assert (r.status_code, r.json["errcode"]) == (500, "M_UNKNOWN")
    with app.app_context():  # the session's table is gone: its SELECT fails too
        db.session.execute(text("ALTER TABLE validation_session RENAME TO gone"))
        db.session.commit()
    r = client.get(f"{V1}/validate/email/submitToken?sid={sid}&client_secret={secret}"
                   f"&token={code}")  # fmt: skip
    assert r.status_code == 500
    with app.app_context():
        db.session.execute(text("ALTER TABLE gone RENAME TO validation_session"))
        db.session.commit()
    # Every line as written, tracebacks included; the test SMTP server's own are not ours.
    formatter = logging.Formatter()
    ours = [r for r in caplog.records if not r.name.startswith("mail.log")]
    logged = "\n".join(formatter.format(r) for r in ours).lower()
    assert "integrityerror" in logged and logged.count("unhandled error") == 2
    assert "parameters hidden" in logged
    for value in (secret, sid, code, code.replace("-", ""), "jean.martin", "marie.dupont"):
        assert value.lower() not in logged
