"""SQLAlchemy models. Data only: the queries live in the sibling modules."""

from collections.abc import Callable
from datetime import UTC
from datetime import datetime
from typing import Any

from sqlalchemy import JSON
from sqlalchemy import BigInteger
from sqlalchemy import Boolean
from sqlalchemy import DateTime
from sqlalchemy import ForeignKey
from sqlalchemy import Index
from sqlalchemy import Integer
from sqlalchemy import String
from sqlalchemy import Text
from sqlalchemy import TypeDecorator
from sqlalchemy import UniqueConstraint
from sqlalchemy import and_
from sqlalchemy import text
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column
from sqlalchemy.orm import relationship
from sqlalchemy.sql.elements import ColumnElement

from identity.extensions import Model

# SQLAlchemy's text of a datetime on SQLite (its DATETIME's default storage format).
_SQLITE_TEXT = "%04d-%02d-%02d %02d:%02d:%02d.%06d"


class UTCDateTime(TypeDecorator[datetime]):
    """An aware UTC datetime on every engine (SQLite hands back naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime stored; use an aware UTC datetime")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    def bind_processor(self, dialect: Dialect) -> Callable[[Any], Any] | None:
        """On SQLite, an aware datetime written as the text SQLAlchemy stores (naive UTC,
        microseconds always) in one step: SQLAlchemy's own formatting after
        `process_bind_param` took 2.3 µs, a parameter of every /info. Anything else
        takes the general way."""
        general = super().bind_processor(dialect)
        if dialect.name != "sqlite" or general is None:
            return general

        def to_text(value: Any) -> Any:
            if type(value) is not datetime or value.tzinfo is None:
                return general(value)  # None, or a naive datetime (refused there)
            v = value.astimezone(UTC)
            return _SQLITE_TEXT % (v.year, v.month, v.day, v.hour, v.minute, v.second,
                                   v.microsecond)  # fmt: skip

        return to_text

    def result_processor(self, dialect: Dialect, coltype: object) -> Callable[[Any], Any] | None:
        """On SQLite, the text SQLAlchemy stored (naive UTC) read in one step: a tenth of
        the time of its parser followed by `process_result_value` (2.5 µs a value), three
        values in each association read. Any other text takes the general way."""
        general = super().result_processor(dialect, coltype)
        if dialect.name != "sqlite" or general is None:
            return general

        def from_text(value: Any) -> Any:
            if value is None:  # an empty column: no exception to raise and catch
                return None
            try:
                return datetime.fromisoformat(value + "+00:00")  # tzinfo is UTC itself
            except (TypeError, ValueError):  # text of another form
                return general(value)

        return from_text


class ValidationSession(Model):
    """An email address being proven, keyed by (address, client_secret)."""

    __tablename__ = "validation_session"
    __table_args__ = (UniqueConstraint("medium", "address", "client_secret"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sid: Mapped[str] = mapped_column(String(64), unique=True)
    medium: Mapped[str] = mapped_column(String(16))
    # The address's key (identity.addresses): what the session is found and bound by.
    address: Mapped[str] = mapped_column(String(320))
    # Where the code goes: the address as last written (domain in ASCII); None before 0003.
    mailbox: Mapped[str | None] = mapped_column(String(320))
    client_secret: Mapped[str] = mapped_column(String(255))
    send_attempt: Mapped[int] = mapped_column(BigInteger)
    token: Mapped[str] = mapped_column(String(64))
    failed_attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_link: Mapped[str | None] = mapped_column(Text)
    brand: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # Sessions expire a fixed time after their last change.
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    validated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


# The columns of lookup hashes: of each slot, for the address's key and its Unicode spelling.
_HASH_COLUMNS = ("lookup_hash", "lookup_hash_alt", "lookup_hash_unicode", "lookup_hash_unicode_alt")


class Association(Model):
    """A validated address bound to a Matrix ID."""

    __tablename__ = "association"
    __table_args__ = (
        UniqueConstraint("medium", "address"),
        # The v2 lookup's, one per hash column (identity.storage.associations._by_hash).
        # Partial: a slot is empty but during a pepper rotation (a non-partial btree
        # keeps an entry per NULL), and few rows have a Unicode spelling. No index on
        # `mxid`: no query searches by it alone (unbinds name the address too).
        *(
            Index(
                f"ix_association_{name}",
                name,
                sqlite_where=text(f"{name} IS NOT NULL"),
                postgresql_where=text(f"{name} IS NOT NULL"),
            )
            for name in _HASH_COLUMNS
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    medium: Mapped[str] = mapped_column(String(16))
    address: Mapped[str] = mapped_column(String(320))
    # sha256("<address> <medium> <pepper>"), unpadded URL-safe base64.
    # Two slots, so that a new pepper's hashes are filled in while lookups keep using
    # the current pepper's (identity.lookup.rotate_pepper); Pepper.slot says which.
    lookup_hash: Mapped[str | None] = mapped_column(String(64))
    lookup_hash_alt: Mapped[str | None] = mapped_column(String(64))
    # The same for the address's Unicode spelling, when its domain is internationalised
    # (clients hash what the user typed): NULL for every other address.
    lookup_hash_unicode: Mapped[str | None] = mapped_column(String(64))
    lookup_hash_unicode_alt: Mapped[str | None] = mapped_column(String(64))
    mxid: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    not_before: Mapped[datetime] = mapped_column(UTCDateTime)
    not_after: Mapped[datetime] = mapped_column(UTCDateTime)


class Pepper(Model):
    """A lookup pepper. The newest activated one is current; a newer one not yet
    activated is being rotated in (its hashes are being filled in its slot)."""

    __tablename__ = "pepper"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    value: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    slot: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    activated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


# An invitation still waiting for its reminder (the partial index's condition).
_REMINDER_WAITING = (
    "reminder_key IS NOT NULL AND reminded_at IS NULL"
    " AND revoked_at IS NULL AND accepted_at IS NULL"
)


class Invitation(Model):
    """A pending 3PID invitation stored by a homeserver with store-invite."""

    __tablename__ = "invitation"
    __table_args__ = (
        Index("ix_invitation_medium_address", "medium", "address"),
        # The reminders' due query (identity.storage.invites.due_reminders): only the
        # invitations still waiting for theirs, by expiry.
        Index(
            "ix_invitation_reminder_due",
            "expires_at",
            "id",
            sqlite_where=text(_REMINDER_WAITING),
            postgresql_where=text(_REMINDER_WAITING),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token: Mapped[str] = mapped_column(String(128), unique=True)
    medium: Mapped[str] = mapped_column(String(16))
    # The address's key (identity.addresses), which binds hand the invitation over by.
    address: Mapped[str] = mapped_column(String(320))
    # Where the mail went: the address as written (domain in ASCII); None before 0003.
    mailbox: Mapped[str | None] = mapped_column(String(320))
    room_id: Mapped[str] = mapped_column(String(255), index=True)
    sender: Mapped[str] = mapped_column(String(255), index=True)
    # True when the sender came from an authenticated (v2) request.
    sender_verified: Mapped[bool] = mapped_column(Boolean, default=False)
    # Every optional string argument of store-invite (room_name, sender_display_name, …).
    details: Mapped[dict] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Set with revoked_at when the guest refused invitations (identity.refusals).
    refused_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # An invitation admits one account (unless INVITE_SINGLE_USE is off): the first to
    # obtain a signature with sign-ed25519 or to bind the address. Set once, together,
    # by one conditional UPDATE (identity.storage.invites.admit).
    accepted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    admitted_mxid: Mapped[str | None] = mapped_column(String(255))
    # Set when a bind queued the invitation's one onbind delivery.
    handed_over_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The server name of the Sydent peer that stored it (imported invitations): the
    # room's third-party invite names that peer's key, so the delivery is signed
    # with it. None: stored here.
    stored_by: Mapped[str | None] = mapped_column(String(255))
    # The reminder (identity.reminders). The ephemeral private key, sealed with a key
    # derived from the landing secret (identity.landing.seal_key), so that the reminder
    # can link to the invitation's landing page; NULL when no reminder is to be sent
    # (switched off, an invitation too short-lived, made before 0008, or imported), and
    # emptied once the reminder is sent.
    reminder_key: Mapped[str | None] = mapped_column(String(255))
    # A worker that claimed the reminder owns it until then; after a failed attempt,
    # the next attempt waits until then too.
    reminder_claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Claims so far, a crashed or failed attempt included: bounded (identity.reminders).
    reminder_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # When the SMTP server accepted the reminder: never another one after that.
    reminded_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    # The one definition of an invitation's life, in Python and in SQL: *open* while
    # neither expired nor revoked (its keys sign, its delivery goes out); *pending*
    # while open and not yet accepted by an account.
    def is_open(self, now: datetime) -> bool:
        return self.revoked_at is None and self.expires_at > now

    def is_pending(self, now: datetime) -> bool:
        return self.is_open(now) and self.accepted_at is None

    @classmethod
    def open_at(cls, now: Any) -> ColumnElement[bool]:
        """SQL for `is_open`; `now` is a datetime or a bound parameter."""
        return and_(cls.expires_at > now, cls.revoked_at.is_(None))

    @classmethod
    def pending_at(cls, now: Any) -> ColumnElement[bool]:
        """SQL for `is_pending`; `now` is a datetime or a bound parameter."""
        return and_(cls.expires_at > now, cls.unanswered())

    @classmethod
    def unanswered(cls) -> ColumnElement[bool]:
        """SQL for pending until `expires_at`: neither revoked nor accepted."""
        return and_(cls.revoked_at.is_(None), cls.accepted_at.is_(None))


class GuestRefusal(Model):
    """A guest's refusal of invitations: never the address, only its keyed hash.

    `address_hash` is HMAC-SHA256 of the address's key (identity.addresses) under a
    server secret (identity.refusals): without the secret, a dump does not tell whose
    refusal a row is. `sender` is the inviting account for the "not from this person"
    scope, "" for the whole platform (a NULL would escape the unique key on both engines).
    """

    __tablename__ = "guest_refusal"
    __table_args__ = (UniqueConstraint("address_hash", "scope", "sender"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    address_hash: Mapped[str] = mapped_column(String(64))
    scope: Mapped[str] = mapped_column(String(16))  # "sender" or "all"
    sender: Mapped[str] = mapped_column(String(255), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class InviteReport(Model):
    """ "I don't know this person": one per reporting address (its keyed hash) and sender."""

    __tablename__ = "invite_report"
    __table_args__ = (
        UniqueConstraint("reporter_hash", "sender"),
        Index("ix_invite_report_sender_created_at", "sender", "created_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    reporter_hash: Mapped[str] = mapped_column(String(64))
    sender: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ReportedSender(Model):
    """A sender someone reported: the row each new report locks (so that concurrent
    reports are counted one after the other), and the block once enough came."""

    __tablename__ = "reported_sender"

    sender: Mapped[str] = mapped_column(String(255), primary_key=True)
    last_report_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # Set when INVITE_REPORTS_BLOCK_THRESHOLD distinct reporters came within the
    # window; kept until `flask invites reports clear`.
    blocked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class EphemeralKey(Model):
    """A short-term public key handed out with an invitation."""

    __tablename__ = "ephemeral_key"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    public_key: Mapped[str] = mapped_column(String(64), unique=True)
    invitation_id: Mapped[int | None] = mapped_column(
        ForeignKey("invitation.id", ondelete="SET NULL"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    verify_count: Mapped[int] = mapped_column(Integer, default=0)


class Account(Model):
    """A Matrix user registered with this service through OpenID."""

    __tablename__ = "account"

    user_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class AccessToken(Model):
    """An access token, stored only as its SHA-256 hash."""

    __tablename__ = "access_token"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(
        ForeignKey("account.user_id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class AcceptedTerms(Model):
    """A terms document URL a user has accepted."""

    __tablename__ = "accepted_terms"

    user_id: Mapped[str] = mapped_column(
        ForeignKey("account.user_id", ondelete="CASCADE"), primary_key=True
    )
    url: Mapped[str] = mapped_column(String(1024), primary_key=True)
    accepted_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Delivery(Model):
    """An invitation to hand to a homeserver with /3pid/onbind, retried until done."""

    __tablename__ = "delivery"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # One delivery per invitation: the same invite is never delivered twice.
    invitation_id: Mapped[int] = mapped_column(
        ForeignKey("invitation.id", ondelete="CASCADE"), unique=True
    )
    destination: Mapped[str] = mapped_column(String(255))
    mxid: Mapped[str] = mapped_column(String(255))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    # A worker that claimed the job owns it until this moment.
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime)

    invitation: Mapped[Invitation] = relationship()


class PeerKey(Model):
    """The long-term public key of a Sydent peer whose data was imported.

    Invitations that peer stored name this key in their rooms; its private half, when
    imported, lives in a file beside the signing key (identity.peers), not here.
    """

    __tablename__ = "peer_key"

    server_name: Mapped[str] = mapped_column(String(255), primary_key=True)
    public_key: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ServerKey(Model):
    """A homeserver's signing key fetched from /_matrix/key/v2/server."""

    __tablename__ = "server_key"

    server_name: Mapped[str] = mapped_column(String(255), primary_key=True)
    key_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    verify_key: Mapped[str] = mapped_column(String(64))
    valid_until: Mapped[datetime] = mapped_column(UTCDateTime)
    fetched_at: Mapped[datetime] = mapped_column(UTCDateTime)
