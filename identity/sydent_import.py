"""Importing a Sydent (2.x) deployment: its SQLite database and its signing key.

Sydent's database is opened read-only with the standard `sqlite3` module and its rows
are written through our storage modules, in the caller's transaction (the caller
commits). What is imported:

* the lookup pepper (`hashing_metadata`), made our current one so that the pepper
  clients have cached keeps working;
* the associations (`global_threepid_associations`, which Sydent's lookups answer
  from, and `local_threepid_associations`), with their ts / not_before / not_after,
  hashed again with that pepper over our normalised address;
* the invitations not yet delivered (`invite_tokens` without `sent_ts`); Sydent gives
  them no expiry, so they expire `invite_validity` after their reception (Sydent
  counts these times in seconds, and those of associations in milliseconds);
* the ephemeral public keys, linked to no invitation (Sydent keeps no link): they stay
  valid as they did in Sydent;
* the accounts, their access tokens (stored hashed, as ours are) and the terms URLs
  they accepted;
* with `config_path`, the long-term signing key (`[crypto] ed25519.signingkey`).

Every kind of row is counted as imported, already present or skipped with a reason;
importing the same database twice changes nothing the second time.
"""

import base64
import binascii
import configparser
import os
import sqlite3
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field
from datetime import UTC
from datetime import datetime
from datetime import timedelta
from pathlib import Path

from nacl.signing import SigningKey

from identity import keys
from identity.accounts import server_of
from identity.accounts import token_hash
from identity.addresses import normalise_email
from identity.errors import MatrixError
from identity.extensions import db
from identity.lookup import hash_association
from identity.storage import accounts
from identity.storage import associations
from identity.storage import ephemeral_keys
from identity.storage import invites
from identity.storage import peppers
from identity.storage.models import Association
from identity.storage.models import Invitation

# The kinds of rows, in the order they are imported and reported.
KINDS = (
    "signing key",
    "pepper",
    "associations",
    "invitations",
    "ephemeral keys",
    "accounts",
    "access tokens",
    "accepted terms",
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Column sizes of our tables (identity/storage/models.py).
_MAX_PEPPER = 64
_MAX_TOKEN = 128
_MAX_URL = 1024
_MAX_MXID = 255


class SydentImportError(Exception):
    """The import cannot start: unreadable database or config, or a conflicting key."""


@dataclass
class KindReport:
    imported: int = 0
    present: int = 0
    # {reason: [row reference, …]}; references name Sydent's table and row id, never
    # an address or a token.
    skipped: dict[str, list[str]] = field(default_factory=dict)

    def skip(self, reason: str, row: str) -> None:
        self.skipped.setdefault(reason, []).append(row)

    @property
    def skipped_count(self) -> int:
        return sum(len(rows) for rows in self.skipped.values())


@dataclass
class ImportReport:
    kinds: dict[str, KindReport] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # The signing key now at SIGNING_KEY_PATH when the import wrote it.
    written_key: SigningKey | None = None

    def kind(self, name: str) -> KindReport:
        return self.kinds.setdefault(name, KindReport())

    @property
    def imported(self) -> int:
        return sum(k.imported for k in self.kinds.values())

    @property
    def present(self) -> int:
        return sum(k.present for k in self.kinds.values())

    @property
    def skipped(self) -> int:
        return sum(k.skipped_count for k in self.kinds.values())


def import_sydent(
    db_path: str,
    config_path: str | None = None,
    *,
    now: datetime,
    invite_validity: timedelta,
    signing_key_path: str,
    replace_key: bool = False,
) -> ImportReport:
    """Import Sydent's database at `db_path` (and its signing key from `config_path`).

    Rows are added to the current session and flushed; the caller commits. The signing
    key, when it is to be written, is written last, once every row has been flushed.

    :param invite_validity: how long an invitation lives after its reception.
    :param signing_key_path: our key file (SIGNING_KEY_PATH).
    :param replace_key: replace an existing, different key at `signing_key_path`.
    :raises SydentImportError: the database or the config cannot be read, or our key
        differs from Sydent's and `replace_key` is not set; nothing has been written.
    """
    report = ImportReport(kinds={name: KindReport() for name in KINDS})
    key_to_write = None
    if config_path is None:
        del report.kinds["signing key"]
        report.notes.append("No Sydent config given: the signing key was not imported.")
    else:
        key_to_write = _plan_signing_key(
            config_path, signing_key_path, replace_key, report.kind("signing key")
        )
    with _open_readonly(db_path) as conn:
        tables = _tables(conn)
        for kind, table in _TABLES.items():
            if table not in tables:
                report.notes.append(f"{kind}: Sydent's database has no {table} table.")
        _import_pepper(conn, tables, report, now=now)
        _import_associations(conn, tables, report.kind("associations"), now=now)
        _import_invitations(
            conn, tables, report.kind("invitations"), now=now, validity=invite_validity
        )
        _import_ephemeral_keys(conn, tables, report.kind("ephemeral keys"), now=now)
        _import_accounts(conn, tables, report, now=now)
    if key_to_write is not None:
        _write_key(signing_key_path, key_to_write)
        report.written_key = key_to_write
    return report


# Where each kind is read from; the pepper and the key are reported apart.
_TABLES = {
    "pepper": "hashing_metadata",
    "associations": "global_threepid_associations",
    "invitations": "invite_tokens",
    "ephemeral keys": "ephemeral_public_keys",
    "accounts": "accounts",
    "access tokens": "tokens",
    "accepted terms": "accepted_terms_urls",
}


# -- reading Sydent's database ----------------------------------------------------


class _ReadOnly:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        return self.conn

    def __exit__(self, *exc: object) -> None:
        self.conn.close()


def _open_readonly(db_path: str) -> _ReadOnly:
    path = Path(db_path)
    if not path.is_file():
        raise SydentImportError(f"{db_path}: no such file")
    uri = f"{path.resolve().as_uri()}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True)
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as e:
        raise SydentImportError(f"{db_path}: not a readable SQLite database ({e})") from None
    if "local_threepid_associations" not in _tables(conn):
        conn.close()
        raise SydentImportError(f"{db_path}: not a Sydent database (no threepid tables)")
    return _ReadOnly(conn)


def _tables(conn: sqlite3.Connection) -> set[str]:
    return {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def _rows(conn: sqlite3.Connection, query: str) -> Iterator[sqlite3.Row]:
    conn.row_factory = sqlite3.Row
    yield from conn.execute(query)


def _moment(ms: object) -> datetime | None:
    """A Sydent timestamp in milliseconds (associations, accounts) as an aware datetime."""
    if not isinstance(ms, int) or isinstance(ms, bool):
        return None
    try:
        return _EPOCH + timedelta(milliseconds=ms)
    except OverflowError:
        return None


def _moment_s(seconds: object) -> datetime | None:
    """A Sydent timestamp in seconds (invite_tokens, ephemeral_public_keys)."""
    return _moment(seconds * 1000) if isinstance(seconds, int) else None


def _email(address: object) -> str | None:
    if not isinstance(address, str):
        return None
    try:
        return normalise_email(address)
    except MatrixError:
        return None


def _is_user_id(user_id: object) -> bool:
    return (
        isinstance(user_id, str)
        and len(user_id) <= _MAX_MXID
        and user_id.startswith("@")
        and server_of(user_id) is not None
    )


# -- the pepper --------------------------------------------------------------------


def _import_pepper(
    conn: sqlite3.Connection, tables: set[str], report: ImportReport, *, now: datetime
) -> str | None:
    """Make Sydent's pepper our current one; return it (None when it was not imported)."""
    kind = report.kind("pepper")
    if "hashing_metadata" not in tables:
        return None
    found = list(_rows(conn, "SELECT id, lookup_pepper FROM hashing_metadata ORDER BY id DESC"))
    if not found:
        report.notes.append("pepper: Sydent's hashing_metadata is empty; ours is kept.")
        return None
    row = found[0]
    ref = f"hashing_metadata#{row['id']}"
    pepper = row["lookup_pepper"]
    if not isinstance(pepper, str) or not pepper or len(pepper) > _MAX_PEPPER:
        kind.skip("empty or too long a pepper", ref)
        return None
    if any(c.isspace() for c in pepper):
        kind.skip("the pepper contains white space", ref)
        return None
    known = peppers.all_peppers()
    if known and known[0] == pepper:
        kind.present += 1
        return pepper
    if pepper in known:
        kind.skip("it is one of our former peppers and cannot become the current one", ref)
        return None
    peppers.add(pepper, now)
    kind.imported += 1
    rehashed = _rehash_associations(now)
    if rehashed:
        report.notes.append(f"pepper: {rehashed} existing association(s) hashed with it.")
    return pepper


def _rehash_associations(now: datetime) -> int:
    """Hash the associations we already hold with the (new) current pepper."""
    count = 0
    for address in list(associations.addresses("email")):
        association = associations.find("email", address)
        if association is not None:
            hash_association(association, now=now)
            count += 1
    db.session.flush()
    return count


# -- associations ------------------------------------------------------------------


# Sydent's lookups answer from the global table; the local one holds its own binds.
_ASSOCIATION_QUERIES = {
    "global_threepid_associations": "SELECT id, medium, address, mxid, ts, notBefore, notAfter"
    " FROM global_threepid_associations",
    "local_threepid_associations": "SELECT id, medium, address, mxid, ts, notBefore, notAfter"
    " FROM local_threepid_associations",
}


@dataclass(frozen=True)
class _Binding:
    ref: str
    address: str
    mxid: str
    ts: datetime
    not_before: datetime
    not_after: datetime


def _import_associations(
    conn: sqlite3.Connection,
    tables: set[str],
    kind: KindReport,
    *,
    now: datetime,
) -> None:
    """Import the live bindings; the newest wins among rows of one normalised address."""
    bindings: dict[str, list[_Binding]] = {}
    for table, query in _ASSOCIATION_QUERIES.items():
        if table not in tables:
            continue
        for row in _rows(conn, query):
            binding = _binding(row, f"{table}#{row['id']}", kind, now=now)
            if binding is not None:
                bindings.setdefault(binding.address, []).append(binding)
    for address, candidates in bindings.items():
        candidates.sort(key=lambda b: (b.ts, b.ref.startswith("global")), reverse=True)
        newest = candidates[0]
        for older in candidates[1:]:
            if older.mxid != newest.mxid:
                kind.skip("superseded by a newer binding to another Matrix ID", older.ref)
        existing = associations.find("email", address)
        if existing is not None:
            if existing.mxid == newest.mxid:
                kind.present += 1
            else:
                kind.skip("the address is bound here to another Matrix ID", newest.ref)
            continue
        association = Association(
            medium="email",
            address=address,
            mxid=newest.mxid,
            created_at=newest.ts,
            not_before=newest.not_before,
            not_after=newest.not_after,
        )
        hash_association(association, now=now)
        associations.save(association)
        kind.imported += 1


def _binding(row: sqlite3.Row, ref: str, kind: KindReport, *, now: datetime) -> _Binding | None:
    if row["mxid"] is None:
        kind.skip("unbound in Sydent (no Matrix ID)", ref)
        return None
    if row["medium"] != "email":
        kind.skip(f"medium {row['medium']!r} is not supported", ref)
        return None
    address = _email(row["address"])
    if address is None:
        kind.skip("not a valid email address", ref)
        return None
    if not _is_user_id(row["mxid"]):
        kind.skip("not a valid Matrix user ID", ref)
        return None
    ts, not_before, not_after = (_moment(row[c]) for c in ("ts", "notBefore", "notAfter"))
    if ts is None or not_before is None or not_after is None:
        kind.skip("missing or invalid timestamp", ref)
        return None
    if not_after <= now:
        kind.skip("expired (not_after has passed)", ref)
        return None
    return _Binding(ref, address, row["mxid"], ts, not_before, not_after)


# -- invitations and ephemeral keys ------------------------------------------------


def _import_invitations(
    conn: sqlite3.Connection,
    tables: set[str],
    kind: KindReport,
    *,
    now: datetime,
    validity: timedelta,
) -> None:
    if "invite_tokens" not in tables:
        return
    query = (
        "SELECT id, medium, address, room_id, sender, token, received_ts, sent_ts"
        " FROM invite_tokens ORDER BY id"
    )
    for row in _rows(conn, query):
        ref = f"invite_tokens#{row['id']}"
        token = row["token"]
        if not isinstance(token, str) or not token or len(token) > _MAX_TOKEN:
            kind.skip("missing or too long a token", ref)
            continue
        if invites.by_token(token) is not None:
            kind.present += 1
            continue
        if row["sent_ts"] is not None:
            kind.skip("already delivered to the invitee's homeserver", ref)
            continue
        if row["medium"] != "email":
            kind.skip(f"medium {row['medium']!r} is not supported", ref)
            continue
        address = _email(row["address"])
        if address is None:
            kind.skip("not a valid email address", ref)
            continue
        room_id = row["room_id"]
        if not isinstance(room_id, str) or not room_id.startswith("!") or len(room_id) > 255:
            kind.skip("not a valid room ID", ref)
            continue
        if not _is_user_id(row["sender"]):
            kind.skip("the sender is not a valid Matrix user ID", ref)
            continue
        received = _moment_s(row["received_ts"])
        if received is None:
            kind.skip("no reception time", ref)
            continue
        if received + validity <= now:
            kind.skip(f"expired: received more than {_days(validity)} ago", ref)
            continue
        invites.add(
            Invitation(
                token=token,
                medium="email",
                address=address,
                room_id=room_id,
                sender=row["sender"],
                # Sydent does not say whether the sender was authenticated.
                sender_verified=False,
                details={},
                created_at=received,
                expires_at=received + validity,
            )
        )
        kind.imported += 1


def _days(validity: timedelta) -> str:
    return f"{validity.days} day(s)" if validity.days else f"{int(validity.total_seconds())} s"


def _import_ephemeral_keys(
    conn: sqlite3.Connection, tables: set[str], kind: KindReport, *, now: datetime
) -> None:
    if "ephemeral_public_keys" not in tables:
        return
    query = "SELECT id, public_key, verify_count, persistence_ts FROM ephemeral_public_keys"
    for row in _rows(conn, query):
        ref = f"ephemeral_public_keys#{row['id']}"
        public_key = row["public_key"]
        if not _is_public_key(public_key):
            kind.skip("not an ed25519 public key in unpadded base64", ref)
            continue
        if ephemeral_keys.exists(public_key):
            kind.present += 1
            continue
        verify_count = row["verify_count"]
        ephemeral_keys.add_unlinked(
            public_key,
            _moment_s(row["persistence_ts"]) or now,
            verify_count if isinstance(verify_count, int) else 0,
        )
        kind.imported += 1


def _is_public_key(value: object) -> bool:
    if not isinstance(value, str) or not 40 <= len(value) <= 64:
        return False
    padded = value + "=" * (-len(value) % 4)
    for decode in (base64.urlsafe_b64decode, base64.standard_b64decode):
        try:
            if len(decode(padded)) == 32:
                return True
        except (binascii.Error, ValueError):
            continue
    return False


# -- accounts, tokens, terms -------------------------------------------------------


def _import_accounts(
    conn: sqlite3.Connection, tables: set[str], report: ImportReport, *, now: datetime
) -> None:
    kind = report.kind("accounts")
    if "accounts" in tables:
        for row in _rows(conn, "SELECT rowid, user_id, created_ts FROM accounts"):
            ref = f"accounts#{row['rowid']}"
            user_id = row["user_id"]
            if not _is_user_id(user_id):
                kind.skip("not a valid Matrix user ID", ref)
                continue
            if accounts.exists(user_id):
                kind.present += 1
                continue
            accounts.ensure_account(user_id, _moment(row["created_ts"]) or now)
            kind.imported += 1
    kind = report.kind("access tokens")
    if "tokens" in tables:
        for row in _rows(conn, "SELECT rowid, token, user_id FROM tokens"):
            ref = f"tokens#{row['rowid']}"
            token, user_id = row["token"], row["user_id"]
            if not isinstance(token, str) or not token:
                kind.skip("empty token", ref)
                continue
            owner = accounts.user_for_token(token_hash(token))
            if owner is not None:
                if owner == user_id:
                    kind.present += 1
                else:
                    kind.skip("the token belongs here to another user", ref)
                continue
            if not isinstance(user_id, str) or not accounts.exists(user_id):
                kind.skip("no imported account for its user", ref)
                continue
            accounts.add_token(token_hash(token), user_id, now)
            kind.imported += 1
    kind = report.kind("accepted terms")
    if "accepted_terms_urls" in tables:
        accepted: dict[str, set[str]] = {}
        for row in _rows(conn, "SELECT rowid, user_id, url FROM accepted_terms_urls"):
            ref = f"accepted_terms_urls#{row['rowid']}"
            user_id, url = row["user_id"], row["url"]
            if not isinstance(url, str) or not url or len(url) > _MAX_URL:
                kind.skip("empty or too long a URL", ref)
                continue
            if not isinstance(user_id, str) or not accounts.exists(user_id):
                kind.skip("no imported account for its user", ref)
                continue
            if user_id not in accepted:
                accepted[user_id] = accounts.accepted_urls(user_id)
            if url in accepted[user_id]:
                kind.present += 1
                continue
            accounts.accept_urls(user_id, {url}, now)
            accepted[user_id].add(url)
            kind.imported += 1


# -- the signing key ---------------------------------------------------------------


def _plan_signing_key(
    config_path: str, key_path: str, replace_key: bool, kind: KindReport
) -> SigningKey | None:
    """Sydent's key when it is to be written to `key_path`, None when ours is the same.

    :raises SydentImportError: unreadable config or key, or a different key at
        `key_path` without `replace_key`.
    """
    sydent_key = read_sydent_key(config_path)
    if not os.path.exists(key_path):
        kind.imported += 1
        return sydent_key
    try:
        ours = keys.read(key_path)
    except (OSError, ValueError) as e:
        if not replace_key:
            raise SydentImportError(
                f"{key_path} cannot be read ({e}); use --replace-key to replace it"
            ) from None
        ours = None
    if ours is not None and _same_key(ours, sydent_key):
        kind.present += 1
        return None
    if not replace_key:
        raise SydentImportError(
            f"{key_path} holds another signing key ({_describe(ours)}) than Sydent's"
            f" ({_describe(sydent_key)}): nothing was imported. Use --replace-key to"
            " replace it, if nothing signed with it must stay valid."
        )
    kind.imported += 1
    return sydent_key


def read_sydent_key(config_path: str) -> SigningKey:
    """The key of `[crypto] ed25519.signingkey` in a sydent.conf."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(config_path, encoding="utf-8") as f:
            parser.read_file(f)
    except (OSError, configparser.Error) as e:
        raise SydentImportError(f"{config_path}: cannot read the Sydent config ({e})") from None
    text = parser.get("crypto", "ed25519.signingkey", fallback="").strip()
    if not text:
        raise SydentImportError(f"{config_path}: no [crypto] ed25519.signingkey")
    try:
        return keys.parse(text)
    except ValueError:
        raise SydentImportError(
            f"{config_path}: [crypto] ed25519.signingkey is not 'ed25519 <version> <base64>'"
        ) from None


def _same_key(a: SigningKey, b: SigningKey) -> bool:
    return keys.serialise(a) == keys.serialise(b)


def _describe(key: SigningKey | None) -> str:
    if key is None:
        return "unreadable"
    return f"{keys.key_id(key)} {keys.public_key_base64(key)}"


def _write_key(path: str, key: SigningKey) -> None:
    """Write the key in Sydent's format, owner-only, replacing the file atomically."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".signing-key-")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(keys.serialise(key) + "\n")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
