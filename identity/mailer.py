"""Outgoing mail: renders templates, builds the message and sends it. The only SMTP caller.

Our own templates are pairs, ``templates/mail/<name>.txt`` and ``.html`` (plus a
one-line ``<name>_subject.txt``), rendered into one multipart Flask-Mail message.
Deployments moving from Sydent may set TEMPLATES_PATH to a directory of brand folders
laid out as Sydent lays them out; those templates are complete messages, and the bytes
we send are exactly what they render to.
"""

import email.message
import email.policy
import email.utils
import logging
import os
import re
import smtplib
import ssl
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from functools import cache
from typing import Any

import jinja2
from flask_mail import Connection
from flask_mail import Message

from identity import i18n
from identity import metrics
from identity import outages
from identity.addresses import redact
from identity.brands import is_brand
from identity.clock import new_token
from identity.errors import EmailSendError
from identity.errors import InvalidEmail
from identity.limits import Limits
from identity.limits import private_key
from identity.logs import UNSCRUBBED

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MailSettings:
    """What sending mail needs from the configuration, taken once by create_app."""

    templates_path: str | None
    default_brand: str | None
    default_sender: str
    timeout: float
    ca_file: str | None
    # The process's requests that may wait on the SMTP server at once (MAIL_MAX_CONCURRENT).
    slots: "MailSlots" = field(compare=False)
    # With no MAIL_SERVER: the whole message printed, instead of a one-line summary.
    print_raw: bool = False

    @classmethod
    def from_config(cls, config: Any) -> "MailSettings":
        return cls(
            templates_path=config["TEMPLATES_PATH"] or None,
            default_brand=config["DEFAULT_BRAND"] or None,
            default_sender=config["MAIL_DEFAULT_SENDER"],
            timeout=config["MAIL_TIMEOUT"],
            ca_file=config["MAIL_CA_FILE"] or None,
            slots=MailSlots(config["MAIL_MAX_CONCURRENT"]),
            print_raw=config["MAIL_PRINT_RAW"],
        )


class MailSlots:
    """At most `size` mails of this process in the SMTP server's hands at once, so that
    a stuck server never holds more threads than that.

    When every slot is taken, a request waits for one while the server answers promptly
    (a burst of codes), for `patience` seconds at most; it gives up at once when the
    server is slow (a send has lasted longer than `patience`): status, lookups and
    /info keep their threads.
    """

    def __init__(self, size: int, patience: float = 1.0) -> None:
        self.patience = patience
        self._free = threading.BoundedSemaphore(size)
        self._lock = threading.Lock()
        self._started: dict[int, float] = {}  # thread id → when its send began

    def take(self) -> bool:
        """Take a slot; False when none can be had."""
        taken = self._free.acquire(blocking=False) or (
            not self._server_is_slow() and self._free.acquire(timeout=self.patience)
        )
        if not taken:
            return False
        with self._lock:
            self._started[threading.get_ident()] = time.monotonic()
        return True

    def give_back(self) -> None:
        with self._lock:
            del self._started[threading.get_ident()]
        self._free.release()

    def _server_is_slow(self) -> bool:
        with self._lock:
            oldest = min(self._started.values(), default=None)
        return oldest is not None and time.monotonic() - oldest > self.patience


# Our template names → the file a Sydent-layout brand folder holds for them.
SYDENT_FILES = {
    "verification": "verification_template.eml.j2",
    "invite": "invite_template.eml.j2",
    "verify_response": "verify_response_template.html",
}
_LINE_BREAKS = re.compile(r"[\r\n]+")


class Mailer:
    """Sends the app's mails: built once per app (identity.services) from its settings,
    Flask-Mail's state for the app (server, port, credentials) and its rate limits."""

    def __init__(self, settings: MailSettings, smtp: Any, limits: Limits) -> None:
        self.settings = settings
        self.smtp = smtp
        self.limits = limits

    def send_template(
        self,
        name: str,
        to: str,
        context: Mapping[str, Any],
        *,
        brand: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Render the `name` mail for `to` and send it.

        :param name: ``verification``, ``invite`` or ``reminder``.
        :param to: the mailbox (identity.addresses): a non-ASCII local part goes out with
            SMTPUTF8 (RFC 6531), which the mail server must offer.
        :param context: the template variables (Sydent's names, e.g. ``token``, ``link``).
        :param brand: a brand folder of TEMPLATES_PATH; unknown brands fall back to
            DEFAULT_BRAND.
        :param headers: more headers (those of a mail about an invitation:
            `presentation.invitation_mail_headers`), Sydent-layout mails included.
        :raises MatrixError: M_LIMIT_EXCEEDED when the address got too many mails lately,
            M_EMAIL_SEND_ERROR when the mail cannot be handed to the server,
            M_INVALID_EMAIL when the mailbox needs SMTPUTF8 and the server does not offer it.
        """
        # However many clients ask, nobody's mailbox is flooded in our name (in any case:
        # the address's key is its mailbox case-folded).
        self.limits.check("mails_per_address", private_key(to.casefold()))
        settings = self.settings
        sydent_template = sydent_template_path(name, brand, settings)
        if sydent_template is not None:
            raw = with_headers(render_sydent_mail(sydent_template, to, context, settings), headers)
            self._deliver(to, raw=raw.encode("utf-8"), code=context.get("code"))
            return
        subject, body, html = render_mail(name, context)
        extra = {name: single_line(value) for name, value in (headers or {}).items()}
        message = Message(
            subject=subject, recipients=[to], body=body, html=html, extra_headers=extra
        )
        self._deliver(to, message=message, code=context.get("code"))

    def _deliver(
        self,
        to: str,
        *,
        message: Message | None = None,
        raw: bytes | None = None,
        code: str | None = None,
    ) -> None:
        state = self.smtp
        smtputf8 = not to.isascii()
        if message is not None and smtputf8:
            raw, message = _smtputf8_bytes(message, to), None
        if not state.server:
            data = message.as_bytes() if message else raw or b""
            if self.settings.print_raw:
                _print_for_development(data)
            else:
                _log_for_development(to, data, code)
            return
        slots = self.settings.slots
        if not slots.take():
            metrics.MAILS.labels("busy").inc()
            outages.warn(
                outages.SMTP, effect="mails beyond MAIL_MAX_CONCURRENT are refused at once"
            )
            raise EmailSendError("The mail server is busy, try again shortly")
        try:
            _send(state, self.settings, to, message, raw, smtputf8)
        finally:
            slots.give_back()
        metrics.MAILS.labels("sent").inc()
        logger.info("Mail sent to %s", redact(to))


def render_mail(name: str, context: Mapping[str, Any]) -> tuple[str, str, str]:
    """The subject, text and HTML of our `name` mail: every language in turn, French first.

    Each language's version of ``mail/<name>.txt|.html`` is rendered in that language
    and laid out by ``mail/base.txt|.html``; the subject joins the versions of
    ``mail/<name>_subject.txt`` (and the HTML title those of ``<name>_title.txt``).
    """
    footers = i18n.render_each_language("mail/footer.txt", **context)
    subject = i18n.join_lines(i18n.render_each_language(f"mail/{name}_subject.txt", **context))
    body = i18n.render_in_default_language(
        "mail/base.txt",
        versions=i18n.render_each_language(f"mail/{name}.txt", **context),
        footer=i18n.join_lines(footers),
        **context,
    )
    html = i18n.render_in_default_language(
        "mail/base.html",
        versions=i18n.render_each_language(f"mail/{name}.html", **context),
        footers=footers,
        title=i18n.join_lines(i18n.render_each_language(f"mail/{name}_title.txt", **context)),
        **context,
    )
    return single_line(subject), body, html


def sydent_template_path(name: str, brand: str | None, settings: MailSettings) -> str | None:
    """The Sydent-layout file for `name` in the chosen brand folder, if TEMPLATES_PATH has one."""
    root = settings.templates_path
    if not root or name not in SYDENT_FILES:  # Sydent had no reminder: ours is sent
        return None
    for candidate in (brand, settings.default_brand):
        if candidate and is_brand(candidate):
            path = os.path.join(root, candidate, SYDENT_FILES[name])
            if os.path.isfile(path):
                return path
    return None


def render_sydent_mail(
    path: str, to: str, context: Mapping[str, Any], settings: MailSettings
) -> str:
    """Render a Sydent-layout ``.eml.j2`` with the variables Sydent gives its templates."""
    root = settings.templates_path or ""
    sender = settings.default_sender
    _, sender_address = email.utils.parseaddr(sender)
    variables = {
        **context,
        "messageid": email.utils.make_msgid(domain=sender_address.rpartition("@")[2] or None),
        "date": email.utils.formatdate(localtime=False),
        "to": to,
        "from": sender,
        # Random per mail, so that text from the request cannot end a MIME part.
        "multipart_boundary": new_token(24).replace("-", "").replace("_", ""),
    }
    relative = os.path.relpath(path, root)
    return _sydent_environment(root).get_template(relative.replace(os.sep, "/")).render(variables)


def with_headers(raw: str, headers: Mapping[str, str] | None) -> str:
    """A rendered Sydent-layout message with `headers` added before its own."""
    if not headers:
        return raw
    newline = "\r\n" if "\r\n" in raw.partition("\n")[0] + "\n" else "\n"
    added = "".join(f"{name}: {single_line(value)}{newline}" for name, value in headers.items())
    return added + raw.lstrip("\r\n")


@cache
def _sydent_environment(root: str) -> jinja2.Environment:
    # Sydent renders these with autoescape on; templates that rely on it stay safe.
    return jinja2.Environment(loader=jinja2.FileSystemLoader(root), autoescape=True)


def single_line(text: str) -> str:
    """Collapse line breaks so that a value cannot add headers to a message."""
    return _LINE_BREAKS.sub(" ", text).strip()


@cache
def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """The verifying TLS context for SMTP, built once per process: loading the trust
    store costs more CPU than the rest of sending a mail."""
    return ssl.create_default_context(cafile=ca_file or None)


class VerifiedConnection(Connection):
    """Flask-Mail's connection with certificate verification and a timeout.

    Flask-Mail 0.10 opens TLS without verifying the server's certificate; we never
    hand codes and invitation links to a server we have not authenticated.
    """

    def __init__(self, mail: Any, settings: MailSettings) -> None:
        super().__init__(mail)
        self.settings = settings

    def configure_host(self) -> smtplib.SMTP:
        settings = self.settings
        timeout = settings.timeout
        host: smtplib.SMTP
        if self.mail.use_ssl:
            context = tls_context(settings.ca_file)
            host = smtplib.SMTP_SSL(
                self.mail.server, self.mail.port, timeout=timeout, context=context
            )
        else:
            host = smtplib.SMTP(self.mail.server, self.mail.port, timeout=timeout)
            if self.mail.use_tls:
                host.starttls(context=tls_context(settings.ca_file))
        if self.mail.username and self.mail.password:
            host.login(self.mail.username, self.mail.password)
        return host


def _send(
    state: Any,
    settings: MailSettings,
    to: str,
    message: Message | None,
    raw: bytes | None,
    smtputf8: bool,
) -> None:
    """Hand the mail to the SMTP server.

    :raises MatrixError: M_INVALID_EMAIL, M_EMAIL_SEND_ERROR.
    """
    try:
        with VerifiedConnection(state, settings) as connection:
            if message is not None:
                connection.send(message)
            elif connection.host is not None and raw is not None:
                _, sender = email.utils.parseaddr(state.default_sender)
                # smtplib asks for SMTPUTF8 in MAIL FROM, and refuses (before sending
                # anything) when the server does not offer it.
                options = ["SMTPUTF8"] if smtputf8 else []
                connection.host.sendmail(sender, [to], raw, mail_options=options)
    except smtplib.SMTPNotSupportedError:
        logger.warning("Could not send mail to %s: no SMTPUTF8 on the server", redact(to))
        metrics.MAILS.labels("failed").inc()
        raise InvalidEmail(
            "This server cannot send mail to an address with non-ASCII characters before the @"
        ) from None
    except (OSError, smtplib.SMTPException) as e:
        logger.warning(
            "Could not send mail to %s through %s:%s: %s",
            redact(to),
            state.server,
            state.port,
            _reason(e),
        )
        metrics.MAILS.labels("failed").inc()
        if isinstance(e, OSError | smtplib.SMTPServerDisconnected):  # not a refusal
            outages.UNAVAILABLE.labels(outages.SMTP).inc()
        raise EmailSendError("Failed to send email") from None


def _smtputf8_bytes(message: Message, to: str) -> bytes:
    """The message for a mailbox with a non-ASCII local part, as RFC 6532 writes it.

    Flask-Mail writes addresses for 7-bit transport only, and fails on such a mailbox:
    the message is built without recipients, then its To header names the mailbox in
    UTF-8, which a server offering SMTPUTF8 accepts.
    """
    message.recipients = []
    message.date = message.date or time.time()
    parsed = email.message_from_bytes(message.as_bytes(), policy=email.policy.SMTPUTF8)
    del parsed["To"]
    parsed["To"] = to
    return parsed.as_bytes()


def _reason(error: Exception) -> str:
    """What went wrong with the SMTP server, for an operator: the exception's kind and
    the server's reply or the system's message (neither quotes the mail)."""
    detail = getattr(error, "strerror", None) or getattr(error, "smtp_error", b"")
    if isinstance(detail, bytes):
        detail = detail.decode("utf-8", "replace")
    return f"{type(error).__name__}: {detail}" if detail else type(error).__name__


_URL = re.compile(r"https?://[^\s<>\"']+")


def _log_for_development(to: str, data: bytes, code: str | None) -> None:
    """MAIL_SERVER is empty: the embedded mode shows what the mail carries, in one log
    line (a log pipeline reads one object per line): the recipient masked, as in every
    log line, the subject, the code and the links.

    The line is written unscrubbed (identity.logs.UNSCRUBBED): its links carry the
    secrets a developer needs to follow them, which is what printing mails is for
    (and why gunicorn refuses it unless MAIL_PRINT_TO_LOG says so).
    """
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    subject = single_line(str(parsed.get("Subject", "")))
    part = parsed.get_body(preferencelist=("plain", "html"))
    text = part.get_content() if isinstance(part, email.message.EmailMessage) else ""
    links = list(dict.fromkeys(_URL.findall(text)))
    logger.warning(
        "MAIL_SERVER is not set: mail NOT sent to %s, subject %r%s%s",
        redact(to),
        subject,
        f", code {code}" if code else "",
        "".join(f", link {link}" for link in links),
        extra={UNSCRUBBED: True, "mail_subject": subject, "mail_code": code, "mail_links": links},
    )


def _print_for_development(data: bytes) -> None:
    # MAIL_SERVER is empty and MAIL_PRINT_RAW asks for the whole message.
    banner = "=" * 20 + " MAIL_SERVER is not set: this mail was NOT sent " + "=" * 20
    print(f"{banner}\n{data.decode('utf-8', 'replace')}\n{'=' * len(banner)}", file=sys.stderr)


def render_sydent_page(path: str, *, success: bool) -> str:
    """Render a Sydent-layout ``verify_response_template.html`` (``%(message)s``)."""
    message = (
        "Verification successful! Please return to your Matrix client to continue."
        if success
        else "Verification failed: you may need to request another verification email"
    )
    with open(path, encoding="utf-8") as f:
        return f.read() % {"message": message}
