"""A real SMTP server on loopback (aiosmtpd) that keeps, or only counts, what it receives."""

import email
import email.policy
import threading
from dataclasses import dataclass
from dataclasses import field
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP

from testing.processes import free_port


@dataclass
class ReceivedMail:
    sender: str
    recipients: list[str]
    raw: bytes

    @property
    def message(self) -> EmailMessage:
        return email.message_from_bytes(self.raw, policy=email.policy.default)  # type: ignore[return-value]

    def text(self) -> str:
        part = self.message.get_body(preferencelist=("plain",))
        return part.get_content() if part else ""

    def html(self) -> str:
        part = self.message.get_body(preferencelist=("html",))
        return part.get_content() if part else ""


class _Controller(Controller):
    def __init__(self, handler: Any, *, line_length_limit: int | None, **options: Any) -> None:
        super().__init__(handler, **options)
        self.line_length_limit = line_length_limit

    def factory(self) -> SMTP:
        server = super().factory()
        if self.line_length_limit is not None:
            server.line_length_limit = self.line_length_limit
        return server


@dataclass
class SmtpSink:
    """An aiosmtpd server on loopback that keeps every message it receives.

    :param keep: False to only count the messages (`count`), as a load test wants.
    :param long_lines: accept lines longer than RFC 5321's 1,000 characters, as a real
        relay does (aiosmtpd refuses them; Sydent's mails now and then have one).
    """

    host: str = "127.0.0.1"
    port: int = 0
    messages: list[ReceivedMail] = field(default_factory=list)
    refuse: bool = False
    keep: bool = True
    long_lines: bool = False
    # Whether the server offers SMTPUTF8 (RFC 6531): mailboxes with non-ASCII local parts.
    smtputf8: bool = False
    count: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server, session, envelope):
        if self.refuse:
            return "554 Transaction failed"
        with self._lock:
            self.count += 1
            if self.keep:
                self.messages.append(
                    ReceivedMail(envelope.mail_from, list(envelope.rcpt_tos),
                                 envelope.original_content)
                )  # fmt: skip
        return "250 OK"

    def controller_options(self) -> dict[str, Any]:
        """Options of aiosmtpd's Controller beyond host and port (TLS, for instance)."""
        return {}

    def start(self) -> "SmtpSink":
        self.port = free_port()
        self._controller = _Controller(
            self, hostname=self.host, port=self.port,
            line_length_limit=1 << 20 if self.long_lines else None,
            enable_SMTPUTF8=self.smtputf8, **self.controller_options(),
        )  # fmt: skip
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()

    def clear(self) -> None:
        with self._lock:
            self.messages.clear()
        self.refuse = False

    def last(self) -> ReceivedMail:
        assert self.messages, "no mail was received"
        return self.messages[-1]

    def to(self, address: str) -> list[ReceivedMail]:
        return [m for m in self.messages if address in m.recipients]
