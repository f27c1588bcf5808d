"""The guest's own say (issue 25): one-click refusal (RFC 8058), what is kept, its
effect on store-invite, undo by the owner, reports that block a sender.

Mails are read from the real SMTP sink, and the one-click POST is sent as mailbox
providers send it: to exactly the List-Unsubscribe URL, form-encoded, without cookies.
"""

import logging
import re
import threading
from urllib.parse import urlsplit

import pytest
from sqlalchemy import func
from sqlalchemy import select

from identity.extensions import db
from identity.refusals import REFUSED_FROM_PLATFORM
from identity.refusals import REFUSED_FROM_SENDER
from identity.refusals import SENDER_BLOCKED
from identity.storage.models import GuestRefusal
from identity.storage.models import Invitation
from identity.storage.models import InviteReport
from identity.storage.models import ReportedSender
from tests.helpers import V1
from tests.helpers import code_from_mail
from tests.helpers import landing_link_from_mail
from tests.helpers import relative
from tests.test_metrics import value

GUEST = "claire.martin@partenaire.example"
ROOM = "!projetx:agent.dinum.tchap.gouv.fr"
SENDER = "@marie.dupont:agent.dinum.tchap.gouv.fr"
OTHER_SENDER = "@paul.durand:agent.dinum.tchap.gouv.fr"
ONE_CLICK = "List-Unsubscribe=One-Click"
FORM = "application/x-www-form-urlencoded"


def store_invite(client, address=GUEST, sender=SENDER, **extra):
    body = {
        "medium": "email",
        "address": address,
        "room_id": ROOM,
        "sender": sender,
        "room_name": "Projet X",
        "sender_display_name": "Marie Dupont",
        **extra,
    }
    return client.post(f"{V1}/store-invite", json=body)


def unsubscribe_url(mail) -> str:
    """The List-Unsubscribe URL of a received mail, checked against RFC 8058."""
    header = mail.message["List-Unsubscribe"]
    assert mail.message["List-Unsubscribe-Post"] == ONE_CLICK
    match = re.fullmatch(r"<(https://[^>]+)>", str(header))
    assert match, header
    return match.group(1)


def path_of(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def one_click(app, url: str):
    """POST as a mailbox provider does: a fresh client, no cookie, the RFC 8058 body."""
    client = app.test_client(use_cookies=False)
    return client.post(path_of(url), data=ONE_CLICK, content_type=FORM)


def count(app, model) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(model))


def rows(app, model) -> list:
    with app.app_context():
        found = list(db.session.scalars(select(model)))
        db.session.expunge_all()
        return found


def our_log(caplog) -> str:
    """Our log lines (the SMTP sink's own logger shows what it received)."""
    return "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("identity"))


def invite_and_refuse(app, client, smtp, address=GUEST) -> str:
    assert store_invite(client, address).status_code == 200
    url = unsubscribe_url(smtp.last())
    assert one_click(app, url).status_code == 200
    return url


# -- the mail and the one-click POST -------------------------------------------


def test_the_mail_offers_the_one_click_refusal_and_the_post_records_it(app, client, smtp):
    assert store_invite(client).status_code == 200
    mail = smtp.last()
    url = unsubscribe_url(mail)
    assert url.startswith("https://id.tchap.test/_matrix/identity/guest/refuse/")
    # The address never travels in the link.
    assert "claire" not in url and "partenaire" not in url
    # The mail's text and HTML offer the refusal and the report, in both languages.
    text, html = mail.text(), mail.html()
    assert "Pour ne plus recevoir d'invitations" in text and "To stop receiving invitations" in text
    assert "/guest/report/" in text and "/guest/report/" in html and "/guest/refuse/" in html

    # A link scanner's GET records nothing.
    page = client.get(path_of(url))
    assert page.status_code == 200 and page.mimetype == "text/html"
    assert 'name="scope" value="sender"' in page.text and 'value="all"' in page.text
    assert count(app, GuestRefusal) == 0

    r = one_click(app, url)
    assert r.status_code == 200
    [refusal] = rows(app, GuestRefusal)
    assert refusal.scope == "all" and refusal.sender == ""
    assert len(refusal.address_hash) == 64 and GUEST not in refusal.address_hash
    [invitation] = rows(app, Invitation)
    assert invitation.revoked_at is not None and invitation.refused_at is not None

    # Repeated posts are idempotent.
    for _ in range(3):
        assert one_click(app, url).status_code == 200
    assert count(app, GuestRefusal) == 1


def test_the_one_click_post_may_come_as_multipart_form_data(app, client, smtp):
    """RFC 8058 3.1: the receiver SHOULD send multipart/form-data, MAY send urlencoded."""
    assert store_invite(client).status_code == 200
    url = unsubscribe_url(smtp.last())
    bare = app.test_client(use_cookies=False)
    r = bare.post(
        path_of(url), data={"List-Unsubscribe": "One-Click"}, content_type="multipart/form-data"
    )
    assert r.status_code == 200
    [refusal] = rows(app, GuestRefusal)
    assert refusal.scope == "all"
    assert store_invite(client).status_code == 403


def test_nothing_of_the_address_is_kept(app, client, smtp):
    invite_and_refuse(app, client, smtp)
    with app.app_context():
        dump = [
            " ".join(str(v) for v in row)
            for row in db.session.execute(db.text("SELECT * FROM guest_refusal"))
        ]
    assert dump and not any("claire" in line or "partenaire" in line for line in dump)


# -- the effect on store-invite -------------------------------------------------


def test_store_invite_after_a_platform_refusal_is_forbidden(app, client, smtp):
    invite_and_refuse(app, client, smtp)
    before = client.get("/metrics").text
    mails = len(smtp.messages)
    for address, sender in [(GUEST.upper(), SENDER), (GUEST, OTHER_SENDER)]:
        r = store_invite(client, address, sender=sender)
        assert (r.status_code, r.json["errcode"]) == (403, "M_FORBIDDEN")
        assert r.json["error"] == REFUSED_FROM_PLATFORM
    assert count(app, Invitation) == 1 and len(smtp.messages) == mails
    after = client.get("/metrics").text
    name = "identity_invitations_refused_total"
    assert (
        value(after, name, reason="guest_refused_all")
        - value(before, name, reason="guest_refused_all")
        == 2
    )
    # Refusing invitations never locks anyone out: codes still reach the address.
    r = client.post(
        f"{V1}/validate/email/requestToken",
        json={"client_secret": "s3cret", "email": GUEST, "send_attempt": 1},
    )
    assert r.status_code == 200 and len(smtp.messages) == mails + 1


def test_not_from_this_person_refuses_only_that_sender(app, client, smtp):
    assert store_invite(client).status_code == 200
    url = unsubscribe_url(smtp.last())
    assert store_invite(client, sender=OTHER_SENDER).status_code == 200
    r = app.test_client(use_cookies=False).post(
        path_of(url), data={"scope": "sender"}, content_type=FORM
    )
    assert r.status_code == 200 and "Marie Dupont" in r.text
    [refusal] = rows(app, GuestRefusal)
    assert (refusal.scope, refusal.sender) == ("sender", SENDER)
    # Only the refused sender's open invitation is revoked.
    revoked = {i.sender: i.refused_at is not None for i in rows(app, Invitation)}
    assert revoked == {SENDER: True, OTHER_SENDER: False}
    r = store_invite(client)
    assert (r.status_code, r.json["error"]) == (403, REFUSED_FROM_SENDER)
    assert store_invite(client, sender=OTHER_SENDER).status_code == 200


def test_case_folded_spellings_are_one_person(app, client, smtp):
    # Straße and STRASSE have one key (identity.addresses): the hash is over it.
    invite_and_refuse(app, client, smtp, address="STRASSE@partenaire.example")
    mails = len(smtp.messages)
    r = store_invite(client, address="Straße@partenaire.example")
    assert (r.status_code, r.json["errcode"]) == (403, "M_FORBIDDEN")
    assert len(smtp.messages) == mails


def test_a_bad_choice_is_refused_and_records_nothing(app, client, smtp):
    assert store_invite(client).status_code == 200
    url = unsubscribe_url(smtp.last())
    for data in ({"scope": "everything"}, {}, {"List-Unsubscribe": "Two-Clicks"}):
        r = client.post(path_of(url), data=data, content_type=FORM)
        assert r.status_code == 400 and r.mimetype == "text/html"
    assert count(app, GuestRefusal) == 0


# -- forged, altered and expired links --------------------------------------------


def _altered(token: str) -> str:
    middle = len(token) // 2
    return token[:middle] + ("A" if token[middle] != "A" else "B") + token[middle + 1 :]


def test_forged_altered_and_expired_links_get_the_404_page(app, client, smtp, clock):
    assert store_invite(client).status_code == 200
    url = unsubscribe_url(smtp.last())
    base, token = url.rsplit("/", 1)
    landing_token = relative(landing_link_from_mail(smtp.last())).split("?")[0].rsplit("/", 1)[1]
    forged = [_altered(token), "x" * 80, landing_token, token + "A", "%00", "é" * 10, "A" * 300]
    for bad in forged:
        for path in (f"{base}/{bad}", f"{base.replace('refuse', 'report')}/{bad}"):
            r = client.get(path_of(path))
            assert r.status_code == 404 and r.mimetype == "text/html", bad
            assert "Ce lien n'est pas valable" in r.text
            assert one_click(app, path).status_code == 404
    # Expired: 30 days of validity, then the 30 days the invitation is kept.
    clock.advance(days=59)
    assert client.get(path_of(url)).status_code == 200
    clock.advance(days=2)
    assert client.get(path_of(url)).status_code == 404
    assert one_click(app, url).status_code == 404
    assert count(app, GuestRefusal) == 0 and count(app, InviteReport) == 0


def test_a_refusal_after_the_invitation_expired_still_counts(app, client, smtp, clock):
    assert store_invite(client).status_code == 200
    url = unsubscribe_url(smtp.last())
    clock.advance(days=40)
    assert one_click(app, url).status_code == 200
    assert store_invite(client).status_code == 403


# -- the landing page -----------------------------------------------------------


@pytest.mark.parametrize("lang", ["fr", "en"])
def test_the_landing_page_offers_the_same_choices(client, smtp, lang):
    assert store_invite(client).status_code == 200
    page = client.get(relative(landing_link_from_mail(smtp.last(), lang))).text
    assert "/guest/refuse/" in page and "/guest/report/" in page
    if lang == "fr":
        assert "Ne plus recevoir d'invitations" in page and "Signaler cette invitation" in page
    else:
        assert "Stop receiving invitations" in page and "Report this invitation" in page


@pytest.mark.parametrize("lang", ["fr", "en"])
def test_the_landing_page_of_a_refused_invitation_says_so(app, client, smtp, lang):
    invite_and_refuse(app, client, smtp)
    r = client.get(relative(landing_link_from_mail(smtp.messages[-1], lang)))
    assert r.status_code == 410
    heading = "Vous avez refusé les invitations" if lang == "fr" else "You have refused"
    assert heading in r.text and "/guest/refuse/" in r.text


# -- undo, by the owner only ---------------------------------------------------


def test_the_guest_lifts_the_refusal_with_a_code(app, client, smtp):
    url = invite_and_refuse(app, client, smtp)
    page = client.get(path_of(url)).text
    assert "/undo" in page
    mails = len(smtp.messages)
    r = client.post(path_of(url) + "/undo", content_type=FORM)
    assert r.status_code == 200
    assert len(smtp.messages) == mails + 1 and smtp.last().recipients == [GUEST]
    code = code_from_mail(smtp.last())
    sid = re.search(r'name="sid" value="([^"]+)"', r.text).group(1)
    secret = re.search(r'name="client_secret" value="([^"]+)"', r.text).group(1)
    lift = path_of(url) + "/lift"
    wrong = {"sid": sid, "client_secret": secret, "code": "AAAA-AAAA"}
    r = client.post(lift, data=wrong, content_type=FORM)
    assert r.status_code == 400 and count(app, GuestRefusal) == 1
    r = client.post(lift, data=wrong | {"code": code}, content_type=FORM)
    assert r.status_code == 200 and count(app, GuestRefusal) == 0
    assert store_invite(client).status_code == 200


def test_no_code_is_mailed_when_nothing_is_refused(app, client, smtp):
    assert store_invite(client).status_code == 200
    url = unsubscribe_url(smtp.last())
    mails = len(smtp.messages)
    assert client.post(path_of(url) + "/undo", content_type=FORM).status_code == 200
    assert len(smtp.messages) == mails


def test_a_code_for_another_address_lifts_nothing(app, client, smtp):
    url = invite_and_refuse(app, client, smtp)
    r = client.post(
        f"{V1}/validate/email/requestToken",
        json={"client_secret": "other", "email": "mallory@partenaire.example", "send_attempt": 1},
    )
    sid, code = r.json["sid"], code_from_mail(smtp.last())
    data = {"sid": sid, "client_secret": "other", "code": code}
    r = client.post(path_of(url) + "/lift", data=data, content_type=FORM)
    assert r.status_code == 403 and count(app, GuestRefusal) == 1


# -- administrators -----------------------------------------------------------


def test_admins_list_and_lift_refusals_without_the_address_in_the_log(
    app, client, smtp, runner, caplog
):
    invite_and_refuse(app, client, smtp)
    assert store_invite(client, "bob@partenaire.example").status_code == 200
    url = unsubscribe_url(smtp.last())
    client.post(path_of(url), data={"scope": "sender"}, content_type=FORM)
    out = runner.invoke(args=["invites", "refusals", "list"]).output
    assert "platform: 1" in out and "sender's invitations: 1" in out and SENDER in out
    caplog.set_level(logging.INFO)
    result = runner.invoke(args=["invites", "refusals", "lift", "Claire.Martin@partenaire.example"])
    assert result.exit_code == 0 and "Lifted 1 refusal(s)." in result.output
    ours = our_log(caplog)
    assert "Audit" in ours and "claire" not in ours.lower()
    assert store_invite(client).status_code == 200
    result = runner.invoke(args=["invites", "refusals", "lift", "not an address"])
    assert result.exit_code == 2


# -- reports ------------------------------------------------------------------


def report_url_of(mail) -> str:
    match = re.search(r"(https://\S+/guest/report/[^\s?]+)", mail.text())
    assert match, mail.text()
    return match.group(1)


def test_reports_block_a_sender_until_an_admin_clears_it(app, client, smtp, runner):
    urls = []
    for name in ("a", "b", "c"):
        assert store_invite(client, f"{name}@partenaire.example").status_code == 200
        urls.append(report_url_of(smtp.last()))
    # A GET records nothing; a POST records one report per reporting address.
    assert client.get(path_of(urls[0])).status_code == 200
    assert count(app, InviteReport) == 0
    for _ in range(3):
        r = app.test_client(use_cookies=False).post(path_of(urls[0]), content_type=FORM)
        assert r.status_code == 200
    assert count(app, InviteReport) == 1
    assert store_invite(client, "d@partenaire.example").status_code == 200
    client.post(path_of(urls[1]), content_type=FORM)
    assert store_invite(client, "e@partenaire.example").status_code == 200
    client.post(path_of(urls[2]), content_type=FORM)
    mails = len(smtp.messages)
    r = store_invite(client, "f@partenaire.example")
    assert (r.status_code, r.json["errcode"], r.json["error"]) == (
        403,
        "M_FORBIDDEN",
        SENDER_BLOCKED,
    )
    assert len(smtp.messages) == mails
    assert store_invite(client, "f@partenaire.example", sender=OTHER_SENDER).status_code == 200
    out = runner.invoke(args=["invites", "reports", "list"]).output
    assert re.search(r"3 recent\s+3 in all\s+blocked since", out) and SENDER in out
    out = runner.invoke(args=["invites", "reports", "clear", SENDER]).output
    assert "Cleared 3 report(s)" in out
    assert store_invite(client, "g@partenaire.example").status_code == 200


def test_reports_outside_the_window_do_not_block(app, client, smtp, clock):
    for name in ("a", "b", "c"):
        assert store_invite(client, f"{name}@partenaire.example").status_code == 200
        client.post(path_of(report_url_of(smtp.last())), content_type=FORM)
        clock.advance(days=20)
    assert store_invite(client, "d@partenaire.example").status_code == 200
    assert rows(app, ReportedSender)[0].blocked_at is None


@pytest.mark.parametrize("threshold", [0])
def test_a_threshold_of_zero_never_blocks(make_app, smtp, threshold):
    app = make_app(INVITE_REPORTS_BLOCK_THRESHOLD=threshold)
    client = app.test_client()
    for name in ("a", "b", "c", "d"):
        assert store_invite(client, f"{name}@partenaire.example").status_code == 200
        client.post(path_of(report_url_of(smtp.last())), content_type=FORM)
    assert store_invite(client, "e@partenaire.example").status_code == 200


# -- rate limits --------------------------------------------------------------


def test_posts_to_a_link_are_rate_limited(make_app, smtp):
    app = make_app(RATELIMIT_ENABLED=True, RATELIMIT_PER_GUEST_LINK="2/minute")
    client = app.test_client()
    assert store_invite(client).status_code == 200
    url = unsubscribe_url(smtp.last())
    assert [one_click(app, url).status_code for _ in range(3)] == [200, 200, 429]
    r = one_click(app, url)
    assert r.status_code == 429 and r.mimetype == "text/html" and int(r.headers["Retry-After"]) > 0
    # A GET is never limited by the link's count: scanners must not use it up.
    assert client.get(path_of(url)).status_code == 200


# -- concurrency ----------------------------------------------------------------


def test_concurrent_one_click_posts_record_one_refusal(app, client, smtp):
    assert store_invite(client).status_code == 200
    url = unsubscribe_url(smtp.last())
    statuses = []
    barrier = threading.Barrier(8)

    def post():
        barrier.wait()
        statuses.append(one_click(app, url).status_code)

    threads = [threading.Thread(target=post) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200] * 8
    assert count(app, GuestRefusal) == 1


def test_concurrent_reports_block_at_the_threshold(app, client, smtp):
    urls = []
    for name in ("a", "b", "c"):
        assert store_invite(client, f"{name}@partenaire.example").status_code == 200
        urls.append(report_url_of(smtp.last()))
    barrier = threading.Barrier(6)
    statuses = []

    def post(url):
        barrier.wait()
        statuses.append(app.test_client().post(path_of(url), content_type=FORM).status_code)

    threads = [threading.Thread(target=post, args=(url,)) for url in urls * 2]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200] * 6
    assert count(app, InviteReport) == 3
    assert rows(app, ReportedSender)[0].blocked_at is not None
    assert store_invite(client, "d@partenaire.example").status_code == 403


# -- logs ---------------------------------------------------------------------


def test_no_log_line_holds_the_address_or_the_token(app, client, smtp, caplog):
    caplog.set_level(logging.DEBUG, logger="identity")
    url = invite_and_refuse(app, client, smtp)
    token = url.rsplit("/", 1)[1]
    client.post(path_of(url.replace("/refuse/", "/report/")), content_type=FORM)
    store_invite(client)
    client.post(path_of(url) + "/undo", content_type=FORM)
    text = our_log(caplog).lower()
    assert "refused invitations" in text and "reported the sender" in text
    assert GUEST not in text and token.lower() not in text


# -- every way an invitation mail is built ----------------------------------------


def test_sydent_layout_invitation_mails_carry_the_headers_too(make_app, smtp):
    from tests.test_mailer import SYDENT_TEMPLATES

    app = make_app(TEMPLATES_PATH=SYDENT_TEMPLATES, DEFAULT_BRAND="tchap")
    client = app.test_client()
    assert store_invite(client).status_code == 200
    mail = smtp.last()
    assert b"/guest/refuse/" in mail.raw.split(b"\r\n\r\n", 1)[0]  # among the headers
    url = unsubscribe_url(mail)
    assert one_click(app, url).status_code == 200
    assert store_invite(client).status_code == 403


def test_the_headers_come_from_one_function(app, client, smtp):
    """A reminder built later goes through presentation.send_invitation_mail, which adds
    them (presentation.invitation_mail_headers)."""
    from identity import presentation
    from identity import refusals
    from identity.services import services

    assert store_invite(client).status_code == 200
    with app.app_context():
        invitation = db.session.scalars(select(Invitation)).one()
        policy = services().invitation_policy()
        headers = presentation.invitation_mail_headers(invitation, policy)
        # Each token has a nonce of its own: the link differs, not what it opens.
        assert headers["List-Unsubscribe-Post"] == ONE_CLICK
        mailed = unsubscribe_url(smtp.last())
        built = re.fullmatch(r"<(https://[^>]+)>", headers["List-Unsubscribe"]).group(1)
        assert built.rsplit("/", 1)[0] == mailed.rsplit("/", 1)[0]
        opened = [
            refusals.open_link(
                url.rsplit("/", 1)[1],
                keys=policy.guest_keys,
                link_lifetime=policy.guest_link_lifetime,
                now=invitation.created_at,
            )
            for url in (built, mailed)
        ]
        assert [i.id for i in opened] == [invitation.id, invitation.id]


def test_admins_lift_one_scope_or_one_sender(app, client, smtp, runner):
    invite_and_refuse(app, client, smtp)  # the platform
    assert store_invite(client, "bob@partenaire.example").status_code == 200
    url = unsubscribe_url(smtp.last())
    client.post(path_of(url), data={"scope": "sender"}, content_type=FORM)
    client.post(path_of(url), data={"scope": "all"}, content_type=FORM)
    lift = ["invites", "refusals", "lift", "bob@partenaire.example"]
    result = runner.invoke(args=[*lift, "--sender", SENDER, "--all"])
    assert result.exit_code == 2
    assert "Lifted 1 refusal(s)." in runner.invoke(args=[*lift, "--sender", SENDER]).output
    assert store_invite(client, "bob@partenaire.example").status_code == 403  # the platform's
    assert "Lifted 1 refusal(s)." in runner.invoke(args=[*lift, "--all"]).output
    assert store_invite(client, "bob@partenaire.example").status_code == 200
    assert store_invite(client).status_code == 403  # another address's refusal stays
    out = runner.invoke(args=["invites", "reports", "clear", "@nobody:a.example"]).output
    assert "Cleared 0 report(s)" in out


def test_a_new_secret_forgets_refusals_unless_the_old_one_is_kept(make_app, smtp):
    first = make_app(SECRET_KEY="first-secret")
    invite_and_refuse(first, first.test_client(), smtp)
    forgetting = make_app(SECRET_KEY="second-secret")
    assert store_invite(forgetting.test_client(), "x@partenaire.example").status_code == 200
    assert store_invite(forgetting.test_client()).status_code == 200
    remembering = make_app(SECRET_KEY="third-secret", GUEST_PREVIOUS_SECRETS=["first-secret"])
    r = store_invite(remembering.test_client())
    assert (r.status_code, r.json["error"]) == (403, REFUSED_FROM_PLATFORM)
