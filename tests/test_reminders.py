"""One reminder before an invitation expires: when it is due, what it says, and that it
is sent exactly once across threads, processes and instances, crashes included."""

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC
from datetime import datetime
from datetime import timedelta
from urllib.parse import unquote
from urllib.parse import urlencode

import pytest
import requests
from sqlalchemy import create_engine
from sqlalchemy import func
from sqlalchemy import select
from sqlalchemy import text
from sqlalchemy import update

from app import create_app
from identity import landing
from identity import reminders
from identity import worker
from identity.extensions import db
from identity.services import services
from identity.storage import invites
from identity.storage.models import GuestRefusal
from identity.storage.models import Invitation
from testing.faults import HangingSmtp
from testing.processes import OWNER
from testing.processes import OWNER_VARIABLE
from testing.processes import wait_until
from testing.servers import ROOT
from testing.servers import Gunicorn
from testing.servers import migrate
from testing.servers import service_env
from tests.conftest import close_app
from tests.conftest import throwaway_postgres
from tests.helpers import V1
from tests.helpers import landing_link_from_mail
from tests.helpers import query_of
from tests.helpers import relative
from tests.helpers import web_client_link_from_page
from tests.support import FakeClock
from tests.test_refusals import one_click
from tests.test_refusals import unsubscribe_url

GUEST = "claire.martin@partenaire.example"
ROOM = "!projetx:agent.dinum.tchap.gouv.fr"
SENDER = "@marie.dupont-numerique.gouv.fr:agent.dinum.tchap.gouv.fr"
REMINDER_SUBJECT = "Rappel : Marie Dupont vous invite à rejoindre le salon « Projet X » sur Tchap"
# Headers a message carries that differ from one mail to the next.
PER_MAIL_HEADERS = {"date", "message-id", "subject", "content-type"}


def store_invite(client, address=GUEST, **extra):
    body = {
        "medium": "email",
        "address": address,
        "room_id": ROOM,
        "sender": SENDER,
        "room_name": "Projet X",
        "sender_display_name": "Marie Dupont",
        **extra,
    }
    r = client.post(f"{V1}/store-invite", json=body)
    assert r.status_code == 200, r.json
    return r.json["token"]


def remind(app):
    with app.app_context():
        return worker.run_reminders(clock=services(app).clock.now)


def reminders_to(smtp, address=GUEST):
    return [m for m in smtp.to(address) if m.message["Subject"].startswith("Rappel")]


def invitation(app, token) -> Invitation:
    with app.app_context():
        found = db.session.scalar(select(Invitation).filter_by(token=token))
        db.session.expunge(found)
        return found


def sign_url_of(client, mail) -> str:
    page = client.get(relative(landing_link_from_mail(mail)))
    assert page.status_code == 200, page.text
    query = query_of(web_client_link_from_page(page.text).replace("#/room/", ""))
    return relative(unquote(query["signurl"]))


# -- when it is due -------------------------------------------------------------------


def test_one_reminder_three_days_before_expiry(app, client, smtp, clock):
    token = store_invite(client)
    clock.advance(days=26, hours=23)
    assert remind(app) == 0  # 30-day invitation: not yet
    clock.advance(hours=1)
    assert remind(app) == 1
    assert len(reminders_to(smtp)) == 1
    for _ in range(3):
        clock.advance(hours=10)
        assert remind(app) == 0  # never a second one
    assert len(reminders_to(smtp)) == 1
    stored = invitation(app, token)
    assert stored.reminded_at is not None and stored.reminder_claimed_until is None
    assert stored.reminder_key is None  # needed for nothing more: not kept
    assert stored.reminder_attempts == 1


def test_the_reminder_says_it_in_french_then_english_and_links_to_the_same_page(
    app, client, smtp, clock
):
    store_invite(client)
    [invitation_mail] = smtp.to(GUEST)
    clock.advance(days=27)
    assert remind(app) == 1
    [mail] = reminders_to(smtp)
    message = mail.message
    assert message["Subject"] == REMINDER_SUBJECT
    assert message["To"] == GUEST and mail.recipients == [GUEST]
    assert message["From"] == "Tchap <noreply@tchap.test>"
    # The same headers as the invitation (the refusal's List-Unsubscribe among them,
    # whatever the invitation carries): one path builds both.
    assert {k.lower() for k in message} - PER_MAIL_HEADERS == {
        k.lower() for k in invitation_mail.message
    } - PER_MAIL_HEADERS
    for header in set(invitation_mail.message.keys()) - {"Date", "Message-ID", "Subject"}:
        # The refusal link is sealed afresh for each mail (a random nonce): same invitation.
        if header.lower() not in ("content-type", "list-unsubscribe"):
            assert message[header] == invitation_mail.message[header], header
    body = mail.text()
    french = body.index("Pour rappel, Marie Dupont vous invite à rejoindre le salon « Projet X »")
    english = body.index('As a reminder, Marie Dupont invites you to join the room "Projet X"')
    assert french < english
    assert "Cette invitation expire le 24 décembre 2026" in body
    assert "This invitation expires on 24 December 2026" in body
    assert "C'est le seul rappel que vous recevrez" in body
    assert "This is the only reminder you will receive" in body
    html = mail.html()
    assert html.index("Pour rappel") < html.index("As a reminder")
    assert "<title>Rappel : invitation Tchap / Reminder: Tchap invitation</title>" in html
    # Its buttons open the invitation's landing page, pending, in each language.
    for lang in ("fr", "en"):
        link = landing_link_from_mail(mail, lang)
        assert link.endswith(f"?lang={lang}")
        page = client.get(relative(link))
        assert page.status_code == 200
        assert "Projet X" in page.text
    # The page of the reminder is the invitation's: its web client link signs as well.
    assert sign_url_of(client, mail) == sign_url_of(client, invitation_mail)


def test_the_reminder_offers_the_refusal_and_its_one_click_post_refuses(app, client, smtp, clock):
    store_invite(client)
    [invitation_mail] = smtp.to(GUEST)
    clock.advance(days=27)
    assert remind(app) == 1
    [mail] = reminders_to(smtp)
    url = unsubscribe_url(mail)
    assert url.rsplit("/", 1)[0] == unsubscribe_url(invitation_mail).rsplit("/", 1)[0]
    text, html = mail.text(), mail.html()
    for body in (text, html):
        assert "/guest/refuse/" in body and "/guest/report/" in body
    assert "Pour ne plus recevoir d'invitations" in text and "To stop receiving invitations" in text
    assert one_click(app, url).status_code == 200
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(GuestRefusal)) == 1
    # Refused: a second invitation is refused, and no reminder follows.
    assert client.post(f"{V1}/store-invite", json={"medium": "email", "address": GUEST,
        "room_id": ROOM, "sender": SENDER}).status_code == 403  # fmt: skip


def test_the_reminder_escapes_and_defangs_what_the_request_wrote(app, client, smtp, clock):
    store_invite(
        client,
        room_name="<b>evil.example</b>",
        sender_display_name="Admin\r\nBcc: x@evil.example",
    )
    clock.advance(days=27)
    assert remind(app) == 1
    [mail] = reminders_to(smtp)
    assert "Bcc" not in mail.message
    assert "\n" not in mail.message["Subject"]
    html = mail.html()
    assert "<b>evil" not in html and "&lt;b&gt;evil.\u200bexample" in html
    assert "evil.example" not in mail.text()  # defanged in the text too


def test_no_reminder_for_an_accepted_revoked_refused_or_expired_invitation(
    app, client, smtp, clock, runner
):
    accepted = "accepted@partenaire.example"
    revoked = "revoked@partenaire.example"
    refused = "refused@partenaire.example"
    pending = "pending@partenaire.example"
    for address in (accepted, revoked, refused, pending):
        store_invite(client, address)
    mxid = "@accepted-partenaire.example:agent.externe.tchap.gouv.fr"
    sign_url = sign_url_of(client, smtp.to(accepted)[0])
    assert client.post(sign_url + "&" + urlencode({"mxid": mxid})).status_code == 200
    assert runner.invoke(args=["invites", "revoke", "--address", revoked]).exit_code == 0
    # A refusal by the guest revokes the invitation (refused_at aside): the same for us.
    with app.app_context():
        db.session.execute(
            update(Invitation).filter_by(address=refused).values(revoked_at=clock.now())
        )
        db.session.commit()
    clock.advance(days=27)
    assert remind(app) == 1
    assert [m.recipients for m in reminders_to_any(smtp)] == [[pending]]
    clock.advance(days=4)  # every one expired now
    assert remind(app) == 0


def reminders_to_any(smtp):
    return [m for m in smtp.messages if m.message["Subject"].startswith("Rappel")]


def test_an_invitation_expired_before_its_reminder_went_gets_none(app, client, smtp, clock):
    store_invite(client)
    clock.advance(days=30)
    assert remind(app) == 0
    assert reminders_to(smtp) == []


def test_no_reminder_when_switched_off(make_app, smtp, clock):
    app = make_app(INVITE_REMINDER_BEFORE_EXPIRY_SECONDS=0)
    token = store_invite(app.test_client())
    assert invitation(app, token).reminder_key is None  # nothing kept for it
    clock.advance(days=29)
    assert remind(app) == 0
    assert reminders_to(smtp) == []


def test_no_reminder_for_an_invitation_shorter_than_the_lead(make_app, smtp, clock):
    """Valid 2 days with a 3-day lead: it would be due the moment it is mailed."""
    app = make_app(INVITE_VALIDITY_SECONDS=2 * 24 * 3600)
    token = store_invite(app.test_client())
    assert invitation(app, token).reminder_key is None
    clock.advance(days=1)
    assert remind(app) == 0 and reminders_to(smtp) == []


def test_the_lead_is_a_setting(make_app, smtp, clock):
    app = make_app(INVITE_REMINDER_BEFORE_EXPIRY_SECONDS=24 * 3600)
    store_invite(app.test_client())
    clock.advance(days=28, hours=23)
    assert remind(app) == 0
    clock.advance(hours=1)
    assert remind(app) == 1


def test_the_stored_key_is_sealed():
    sealed = landing.seal_key("private-key", "secret")
    assert "private" not in sealed
    assert landing.unseal_key(sealed, "secret") == "private-key"
    assert landing.unseal_key(sealed, "another secret") is None
    assert landing.unseal_key("not base64!", "secret") is None
    # Not a landing link: its key is another one.
    opened = landing.open_landing(
        sealed, secret="secret", max_age_seconds=60, now=datetime.now(UTC)
    )
    assert opened.state is landing.State.UNKNOWN


def test_a_key_that_no_longer_opens_gives_up_without_a_mail(make_app, smtp, clock):
    app = make_app()
    token = store_invite(app.test_client())
    other = make_app(SECRET_KEY="a-new-secret")
    clock.advance(days=27)
    assert remind(other) == 0
    assert reminders_to(smtp) == []
    assert invitation(app, token).reminder_key is None
    assert remind(app) == 0  # nothing left to try


# -- failures and crashes ---------------------------------------------------------------


def test_a_refused_mail_is_retried_later_and_sent_once(app, client, smtp, clock):
    token = store_invite(client)
    clock.advance(days=27)
    smtp.refuse = True
    assert remind(app) == 0
    stored = invitation(app, token)
    assert stored.reminded_at is None and stored.reminder_attempts == 1
    assert stored.reminder_claimed_until == clock.now() + reminders.FIRST_RETRY
    smtp.refuse = False
    assert remind(app) == 0  # waits its turn
    clock.advance(minutes=1)
    assert remind(app) == 1
    assert len(reminders_to(smtp)) == 1
    clock.advance(hours=1)
    assert remind(app) == 0
    metrics = client.get("/metrics").text
    for outcome in ("sent", "failed"):
        assert f'identity_invitation_reminders_total{{outcome="{outcome}"}}' in metrics


def test_failed_attempts_are_bounded(app, client, smtp, clock):
    token = store_invite(client)
    clock.advance(days=27)
    smtp.refuse = True
    for _ in range(reminders.MAX_ATTEMPTS + 3):
        remind(app)
        clock.advance(hours=1)
    smtp.refuse = False
    assert remind(app) == 0
    stored = invitation(app, token)
    assert stored.reminder_attempts == reminders.MAX_ATTEMPTS and stored.reminded_at is None


def test_a_claim_left_by_a_crash_is_taken_again_once_its_lease_ends(app, client, smtp, clock):
    """A worker claimed the reminder, committed the claim, and died before sending."""
    token = store_invite(client)
    clock.advance(days=27)
    policy_lead = timedelta(days=3)
    with app.app_context():
        [invitation_id] = invites.due_reminders(
            now=clock.now(), lead=policy_lead, max_attempts=reminders.MAX_ATTEMPTS, limit=10
        )
        assert invites.claim_reminder(
            invitation_id,
            now=clock.now(),
            lead=policy_lead,
            max_attempts=reminders.MAX_ATTEMPTS,
            until=clock.now() + reminders.LEASE,
        )
        db.session.commit()
    assert remind(app) == 0  # held by the dead worker
    clock.advance(seconds=reminders.LEASE.total_seconds() - 1)
    assert remind(app) == 0
    clock.advance(seconds=1)
    assert remind(app) == 1
    assert len(reminders_to(smtp)) == 1
    assert invitation(app, token).reminder_attempts == 2


def test_one_claim_wins(make_app, smtp, clock):
    first, second = make_app(), make_app()
    store_invite(first.test_client())
    clock.advance(days=27)
    now, lead = clock.now(), timedelta(days=3)
    claims = []
    for app in (first, second):
        with app.app_context():
            [invitation_id] = invites.due_reminders(
                now=now, lead=lead, max_attempts=reminders.MAX_ATTEMPTS, limit=10
            ) or [None]
            claims.append(
                invitation_id is not None
                and invites.claim_reminder(
                    invitation_id,
                    now=now,
                    lead=lead,
                    max_attempts=reminders.MAX_ATTEMPTS,
                    until=now + reminders.LEASE,
                )
            )
            db.session.commit()
    assert claims == [True, False]


def test_threads_racing_send_each_reminder_once(make_app, smtp, clock):
    """Eight workers' threads, each with its own app (its own pool), at once."""
    apps = [make_app() for _ in range(8)]
    addresses = [f"guest{n}@partenaire.example" for n in range(12)]
    client = apps[0].test_client()
    for address in addresses:
        store_invite(client, address)
    clock.advance(days=27)
    barrier = threading.Barrier(len(apps))
    sent = []
    errors = []

    def run(app):
        try:
            with app.app_context():
                barrier.wait(timeout=30)
                sent.append(worker.run_reminders(clock=clock.now))
        except Exception as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(app,)) for app in apps]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert sum(sent) == len(addresses)
    assert sorted(m.recipients[0] for m in reminders_to_any(smtp)) == sorted(addresses)


def test_a_worker_killed_while_sending_leaves_one_reminder_after_the_lease(config, smtp, tmp_path):
    """A real process: it claims the reminder, hangs on an SMTP server that never
    answers, and is killed (SIGKILL: no clean-up). Once its lease is over, the
    reminder goes out once."""
    now = datetime.now(UTC).replace(microsecond=0)
    # Due one second after it is stored, on the system clock the subprocess reads.
    settings = {"INVITE_VALIDITY_SECONDS": 3600, "INVITE_REMINDER_BEFORE_EXPIRY_SECONDS": 3599}
    clock = FakeClock(now)
    app = create_app({**config, **settings}, clock=clock)
    try:
        token = store_invite(app.test_client())
        hanging = HangingSmtp().start()
        try:
            env = service_env(
                config["SQLALCHEMY_DATABASE_URI"],
                tmp_path,
                SIGNING_KEY_PATH=config["SIGNING_KEY_PATH"],
                PUBLIC_BASE_URL=config["PUBLIC_BASE_URL"],
                MAIL_SERVER=hanging.host,
                MAIL_PORT=str(hanging.port),
                MAIL_TIMEOUT="120",
                RATELIMIT_ENABLED="false",
                **{key: str(value) for key, value in settings.items()},
            )
            env[OWNER_VARIABLE] = OWNER
            time.sleep(1.1)
            process = subprocess.Popen(
                [sys.executable, "-m", "flask", "--app", "app", "invites", "remind-due"],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                wait_until(lambda: hanging.accepted, timeout=60, what="the SMTP connection")
                assert invitation(app, token).reminder_claimed_until is not None  # committed
            finally:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(10)
        finally:
            hanging.stop()
        assert reminders_to(smtp) == []
        stored = invitation(app, token)
        assert stored.reminded_at is None and stored.reminder_attempts == 1
        # Its lease is still running: nobody takes the reminder meanwhile.
        clock.advance(seconds=2)
        assert remind(app) == 0
        # The lease began when the process claimed, a few seconds after `now`.
        clock.advance(seconds=reminders.LEASE.total_seconds() + 60)
        assert remind(app) == 1
        assert remind(app) == 0
        assert len(reminders_to(smtp)) == 1
    finally:
        close_app(app)


# -- two instances under gunicorn, on PostgreSQL ----------------------------------------


@pytest.mark.postgres
def test_two_instances_remind_each_pending_invitation_once(smtp, tmp_path):
    """Two gunicorn instances (two workers each, each with its background thread) on one
    PostgreSQL database: every pending invitation is reminded exactly once, and no
    accepted, revoked, refused or expired one."""
    with throwaway_postgres() as db_url:
        run_two_instances(db_url, smtp, tmp_path)


def run_two_instances(db_url, smtp, tmp_path):
    env = service_env(
        db_url,
        tmp_path,
        PUBLIC_BASE_URL="https://id.tchap.test",
        MAIL_SERVER=smtp.host,
        MAIL_PORT=str(smtp.port),
        RATELIMIT_ENABLED="false",
        DELIVERY_POLL_SECONDS="0.2",
        # Not due before the test says so (it moves the expiry dates).
        INVITE_VALIDITY_SECONDS=str(10 * 24 * 3600),
        INVITE_REMINDER_BEFORE_EXPIRY_SECONDS=str(3 * 24 * 3600),
        SIGNING_KEY_PATH=str(tmp_path / "signing.key"),
    )
    subprocess.run([sys.executable, "-m", "flask", "--app", "app", "keys", "generate"],
                   cwd=ROOT, env=env, check=True, capture_output=True)  # fmt: skip
    migrate(env)
    engine = create_engine(db_url)
    pending = [f"pending{n}@partenaire.example" for n in range(40)]
    others = {
        state: [f"{state}{n}@partenaire.example" for n in range(5)]
        for state in ("accepted", "revoked", "refused", "expired")
    }
    try:
        with (
            Gunicorn(env, ("-w", "2", "--threads", "4"), log=tmp_path / "a.log") as one,
            Gunicorn(env, ("-w", "2", "--threads", "4"), log=tmp_path / "b.log") as two,
        ):
            # Every worker's background thread starts with its first request.
            for base in (one.base, two.base):
                for _ in range(20):
                    requests.get(f"{base}/health", timeout=10)
            everyone = pending + [a for group in others.values() for a in group]
            tokens = []
            for n, address in enumerate(everyone):
                base = (one.base, two.base)[n % 2]
                body = {"medium": "email", "address": address, "room_id": ROOM, "sender": SENDER}
                r = requests.post(f"{base}{V1}/store-invite", json=body, timeout=10)
                assert r.status_code == 200, r.text
                tokens.append(r.json()["token"])
            for address in others["accepted"]:
                [mail] = smtp.to(address)
                page = requests.get(one.base + relative(landing_link_from_mail(mail)), timeout=10)
                query = query_of(web_client_link_from_page(page.text).replace("#/room/", ""))
                sign_url = one.base + relative(unquote(query["signurl"]))
                mxid = f"@{address.replace('@', '-')}:agent.externe.tchap.gouv.fr"
                r = requests.post(sign_url + "&" + urlencode({"mxid": mxid}), timeout=10)
                assert r.status_code == 200, r.text
            with engine.begin() as connection:
                for state in ("revoked", "refused"):  # a refusal revokes (refused_at aside)
                    connection.execute(
                        text("UPDATE invitation SET revoked_at = now() WHERE address = ANY(:a)"),
                        {"a": others[state]},
                    )
                connection.execute(
                    text(
                        "UPDATE invitation SET expires_at = now() - interval '1 minute'"
                        " WHERE address = ANY(:a)"
                    ),
                    {"a": others["expired"]},
                )
                # Two days pass: every open invitation is now within its reminder's lead.
                connection.execute(
                    text(
                        "UPDATE invitation SET expires_at = now() + interval '2 days',"
                        " created_at = now() - interval '8 days' WHERE expires_at > now()"
                    )
                )
            wait_until(
                lambda: len(reminders_to_any(smtp)) >= len(pending),
                timeout=120,
                what="the reminders",
            )
            time.sleep(3)  # several more passes of every thread: nothing more comes
        reminded = sorted(m.recipients[0] for m in reminders_to_any(smtp))
        assert reminded == sorted(pending)  # each once, nobody else
        with engine.connect() as connection:
            counts = connection.execute(
                text(
                    "SELECT count(*) FILTER (WHERE reminded_at IS NOT NULL),"
                    " sum(reminder_attempts) FROM invitation WHERE address = ANY(:a)"
                ),
                {"a": pending},
            ).one()
        assert tuple(counts) == (len(pending), len(pending))
        logs = [(tmp_path / name).read_text() for name in ("a.log", "b.log")]
        # How the reminders were shared between the instances (seen with -s).
        print(
            "reminders sent by each instance:",
            [log.count("Reminder of invitation") for log in logs],
        )
        for secret in pending + tokens:  # addresses redacted, tokens never written
            assert all(secret not in log for log in logs)
    finally:
        engine.dispose()
