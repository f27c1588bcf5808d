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
* with `config_path`, the long-term signing key (`[crypto] ed25519.signingkey`),
  and the public keys of the Sydent and of its replication peers (`peer_pubkeys`).

A deployment of several replicating peers is imported one database at a time into
the same service, the first as the deployment, each other one `as_peer`: its key
then signs the invitations it stored (identity.peers), and rows replicated between
peers are imported once (the same token; the same address, Matrix ID and `ts`).

Every kind of row is counted as imported, already present or skipped with a reason;
importing the same database twice changes nothing the second time.
"""

import base64
import binascii
import configparser
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field
from datetime import UTC
from datetime import datetime
from datetime import timedelta
from pathlib import Path

from signedjson.types import SigningKey

from identity import keys
from identity import peers
from identity.accounts import token_hash
from identity.addresses import normalise_email
from identity.errors import MatrixError
from identity.lookup import hash_association
from identity.lookup import hashing_peppers
from identity.lookup import spelling_hashes
from identity.matrix_ids import is_server_name
from identity.matrix_ids import server_of
from identity.storage import accounts
from identity.storage import associations
from identity.storage import ephemeral_keys
from identity.storage import invites
from identity.storage import peer_keys
from identity.storage import peppers
from identity.storage.models import AcceptedTerms
from identity.storage.models import AccessToken
from identity.storage.models import Account
from identity.storage.models import Association
from identity.storage.models import EphemeralKey
from identity.storage.models import Invitation
from identity.storage.models import PeerKey
from identity.storage.models import Pepper

# The kinds of rows, in the order they are imported and reported.
KINDS = (
    "signing key",
    "peer keys",
    "pepper",
    "associations",
    "invitations",
    "ephemeral keys",
    "accounts",
    "access tokens",
    "accepted terms",
)
# The tables an import fills.
MODELS = (PeerKey, Pepper, Association, Invitation, EphemeralKey, Account, AccessToken,
          AcceptedTerms)  # fmt: skip
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
    as_peer: bool = False,
) -> ImportReport:
    """Import Sydent's database at `db_path` (and its signing key from `config_path`).

    Rows are added to the current session and flushed; the caller commits. A key,
    when one is to be written, is written last, once every row has been flushed.

    :param invite_validity: how long an invitation lives after its reception.
    :param signing_key_path: our key file (SIGNING_KEY_PATH).
    :param replace_key: replace an existing, different key at `signing_key_path`.
    :param as_peer: the database is one more peer of a deployment already imported:
        its key is kept as a peer key (our own key is untouched) and our pepper stays.
    :raises SydentImportError: the database or the config cannot be read, our key
        differs from Sydent's and neither `replace_key` nor `as_peer` is set, or
        another key is recorded for that peer; nothing has been written.
    """
    report = ImportReport(kinds={name: KindReport() for name in KINDS})
    sydent, key_to_write = _plan_key(
        config_path,
        report,
        signing_key_path=signing_key_path,
        replace_key=replace_key,
        as_peer=as_peer,
        now=now,
    )
    with _open_readonly(db_path) as sydent_db:
        _import_rows(
            sydent_db, sydent, report, now=now, invite_validity=invite_validity, as_peer=as_peer
        )
    if key_to_write is not None:
        _write_key(*key_to_write, signing_key_path=signing_key_path, report=report)
    return report


def _import_rows(
    sydent_db: "_SydentDatabase",
    sydent: "SydentConfig | None",
    report: ImportReport,
    *,
    now: datetime,
    invite_validity: timedelta,
    as_peer: bool,
) -> None:
    """Import every kind of row but the signing key, in the order of KINDS."""
    for kind, table in _TABLES.items():
        if not sydent_db.has(table):
            report.notes.append(f"{kind}: Sydent's database has no {table} table.")
    _import_peer_keys(sydent_db, sydent, report.kind("peer keys"), now=now)
    if as_peer:
        del report.kinds["pepper"]
        report.notes.append(
            "pepper: ours is kept (a peer's import); clients that cached this"
            " peer's pepper are answered M_INVALID_PEPPER and fetch hash_details."
        )
    else:
        _import_pepper(sydent_db, report, now=now)
    _import_associations(sydent_db, report.kind("associations"), now=now)
    _import_invitations(
        sydent_db,
        report.kind("invitations"),
        now=now,
        validity=invite_validity,
        own_name=sydent.server_name if sydent is not None else None,
    )
    _import_ephemeral_keys(sydent_db, report.kind("ephemeral keys"), now=now)
    # Accounts first: tokens and accepted terms are imported only for known accounts.
    _import_accounts(sydent_db, report.kind("accounts"), now=now)
    _import_access_tokens(sydent_db, report.kind("access tokens"), now=now)
    _import_accepted_terms(sydent_db, report.kind("accepted terms"), now=now)


# Where each kind is read from; the pepper and the key are reported apart.
_TABLES = {
    "peer keys": "peer_pubkeys",
    "pepper": "hashing_metadata",
    "associations": "global_threepid_associations",
    "invitations": "invite_tokens",
    "ephemeral keys": "ephemeral_public_keys",
    "accounts": "accounts",
    "access tokens": "tokens",
    "accepted terms": "accepted_terms_urls",
}


# -- reading Sydent's database ----------------------------------------------------


class _SydentDatabase:
    """Sydent's database, opened read-only, and the tables it has."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.conn.row_factory = sqlite3.Row
        query = "SELECT name FROM sqlite_master WHERE type='table'"
        self.tables = {name for (name,) in conn.execute(query)}

    def __enter__(self) -> "_SydentDatabase":
        return self

    def __exit__(self, *exc: object) -> None:
        self.conn.close()

    def has(self, table: str) -> bool:
        return table in self.tables

    def rows(self, table: str, query: str) -> Iterator[sqlite3.Row]:
        """The rows `query` reads from `table`; none when Sydent's database lacks it
        (older versions, or a table Tchap's branch added)."""
        if table in self.tables:
            yield from self.conn.execute(query)

    def columns(self, table: str) -> set[str]:
        return {row[1] for row in self.conn.execute(f"PRAGMA table_info({table})")}


def _open_readonly(db_path: str) -> _SydentDatabase:
    path = Path(db_path)
    if not path.is_file():
        raise SydentImportError(f"{db_path}: no such file")
    uri = f"{path.resolve().as_uri()}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True)
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as e:
        raise SydentImportError(f"{db_path}: not a readable SQLite database ({e})") from None
    sydent_db = _SydentDatabase(conn)
    if not sydent_db.has("local_threepid_associations"):
        conn.close()
        raise SydentImportError(f"{db_path}: not a Sydent database (no threepid tables)")
    return sydent_db


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


def _import_pepper(sydent_db: _SydentDatabase, report: ImportReport, *, now: datetime) -> None:
    """Make Sydent's newest pepper our current one, and hash our associations with it."""
    if not sydent_db.has("hashing_metadata"):
        return
    query = "SELECT id, lookup_pepper FROM hashing_metadata ORDER BY id DESC"
    row = next(sydent_db.rows("hashing_metadata", query), None)
    if row is None:
        report.notes.append("pepper: Sydent's hashing_metadata is empty; ours is kept.")
        return
    kind = report.kind("pepper")
    ref, pepper = f"hashing_metadata#{row['id']}", row["lookup_pepper"]
    problem = _pepper_problem(pepper)
    if problem is not None:
        kind.skip(problem, ref)
        return
    known = peppers.all_peppers()
    if known and known[0] == pepper:
        kind.present += 1
    elif pepper in known:
        kind.skip("it is one of our former peppers and cannot become the current one", ref)
    else:
        peppers.add(pepper, now)
        kind.imported += 1
        rehashed = _rehash_associations(now)
        if rehashed:
            report.notes.append(f"pepper: {rehashed} existing association(s) hashed with it.")


def _pepper_problem(pepper: object) -> str | None:
    """Why `pepper` cannot be ours (clients put it in the string they hash), if it cannot."""
    if not isinstance(pepper, str) or not pepper or len(pepper) > _MAX_PEPPER:
        return "empty or too long a pepper"
    if any(c.isspace() for c in pepper):
        return "the pepper contains white space"
    return None


def _rehash_associations(now: datetime) -> int:
    """Hash the associations we already hold with the (new) current pepper."""
    with_peppers = hashing_peppers(now)
    count = 0
    for batch in associations.id_address_batches("email"):
        for pepper in with_peppers:
            hashes = {
                row_id: spelling_hashes("email", address, pepper.value) for row_id, address in batch
            }
            associations.set_hashes(pepper.slot, hashes)
        count += len(batch)
    return count


# -- associations ------------------------------------------------------------------


# Sydent's lookups answer from the global table; the local one holds its own binds.
_ASSOCIATION_QUERIES = {
    "global_threepid_associations": "SELECT id, medium, address, mxid, ts, notBefore, notAfter"
    " FROM global_threepid_associations",
    "local_threepid_associations": "SELECT id, medium, address, mxid, ts, notBefore, notAfter"
    " FROM local_threepid_associations",
}
# Addresses looked up and associations written at a time.
_ASSOCIATION_BATCH = 500


@dataclass(frozen=True)
class _Binding:
    ref: str
    address: str
    mxid: str
    ts: datetime
    not_before: datetime
    not_after: datetime


def _import_associations(sydent_db: _SydentDatabase, kind: KindReport, *, now: datetime) -> None:
    """Import the live bindings; the newest wins among rows of one normalised address."""
    bindings = _live_bindings(sydent_db, kind, now=now)
    addresses = list(bindings)
    # Into an empty table (a first import) the indexes are built once, after the rows;
    # there is then nothing to look up (one row per address is written).
    with associations.bulk_load() as empty:
        for start in range(0, len(addresses), _ASSOCIATION_BATCH):
            batch = addresses[start : start + _ASSOCIATION_BATCH]
            with_peppers = hashing_peppers(now)
            # One indexed look-up per address: an IN list over a table filled in this
            # same transaction gets a plan that scans it all on PostgreSQL (no statistics).
            new = [
                _import_binding(
                    bindings[address],
                    None if empty else associations.find("email", address),
                    kind,
                    now=now,
                    with_peppers=with_peppers,
                )
                for address in batch
            ]
            associations.insert_all(a for a in new if a is not None)


def _live_bindings(
    sydent_db: _SydentDatabase, kind: KindReport, *, now: datetime
) -> dict[str, list[_Binding]]:
    """{normalised address: its live bindings in both tables}."""
    bindings: dict[str, list[_Binding]] = {}
    for table, query in _ASSOCIATION_QUERIES.items():
        for row in sydent_db.rows(table, query):
            binding = _binding(row, f"{table}#{row['id']}", kind, now=now)
            if binding is not None:
                bindings.setdefault(binding.address, []).append(binding)
    return bindings


def _import_binding(
    candidates: list[_Binding],
    existing: Association | None,
    kind: KindReport,
    *,
    now: datetime,
    with_peppers: list[Pepper],
) -> Association | None:
    """Import the newest of one address's bindings; return the association to add."""
    candidates.sort(key=lambda b: (b.ts, b.ref.startswith("global")), reverse=True)
    newest, older = candidates[0], candidates[1:]
    for binding in older:
        if binding.mxid != newest.mxid:
            kind.skip("superseded by a newer binding to another Matrix ID", binding.ref)
    if existing is None:
        kind.imported += 1
        return _set_binding(
            Association(medium="email", address=newest.address), newest, now, with_peppers
        )
    if _superseded_here(existing, newest, older):
        # Imported from another peer before that peer heard of this newer binding.
        _set_binding(existing, newest, now, with_peppers)
        kind.imported += 1
    elif existing.mxid == newest.mxid:
        kind.present += 1
    else:
        kind.skip("the address is bound here to another Matrix ID", newest.ref)
    return None


def _set_binding(
    association: Association, binding: _Binding, now: datetime, with_peppers: list[Pepper]
) -> Association:
    """Give `association` the Matrix ID and times of `binding`, and hash it."""
    association.mxid, association.created_at = binding.mxid, binding.ts
    association.not_before, association.not_after = binding.not_before, binding.not_after
    hash_association(association, now=now, with_peppers=with_peppers)
    return association


def _superseded_here(existing: Association, newest: _Binding, older: list[_Binding]) -> bool:
    """Whether this database holds our binding of the address as an older one.

    A row replicated from another peer and its original are the same binding (same
    Matrix ID, same `ts`). When this database holds ours among its older rows and a
    newer binding to another Matrix ID, ours was imported from a peer that had not
    heard of the newer one yet. A binding made here matches no row, and stays.
    """
    return (
        newest.mxid != existing.mxid
        and newest.ts > existing.created_at
        and any(b.mxid == existing.mxid and b.ts == existing.created_at for b in older)
    )


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


_INVITATIONS = (
    "SELECT id, medium, address, room_id, sender, token, received_ts, sent_ts,"
    " NULL AS origin_server FROM invite_tokens ORDER BY id"
)
_INVITATIONS_REPLICATED = (
    "SELECT id, medium, address, room_id, sender, token, received_ts, sent_ts,"
    " origin_server FROM invite_tokens ORDER BY id"
)


def _import_invitations(
    sydent_db: _SydentDatabase,
    kind: KindReport,
    *,
    now: datetime,
    validity: timedelta,
    own_name: str | None,
) -> None:
    """Import the invitations not yet delivered, each with the peer that stored it.

    Tchap's Sydent replicates invitations between peers: a copy carries the name of
    the peer that stored the original (`origin_server`), and its token, which is
    what makes both the same invitation here.
    """
    # Only Tchap's branch has the origin column; mainline Sydent does not replicate.
    replicated = "origin_server" in sydent_db.columns("invite_tokens")
    query = _INVITATIONS_REPLICATED if replicated else _INVITATIONS
    for row in sydent_db.rows("invite_tokens", query):
        _import_invitation(row, kind, now=now, validity=validity, own_name=own_name)


def _import_invitation(
    row: sqlite3.Row,
    kind: KindReport,
    *,
    now: datetime,
    validity: timedelta,
    own_name: str | None,
) -> None:
    ref = f"invite_tokens#{row['id']}"
    token, stored_by = row["token"], row["origin_server"] or own_name
    if not isinstance(token, str) or not token or len(token) > _MAX_TOKEN:
        kind.skip("missing or too long a token", ref)
        return
    if stored_by is not None and not is_server_name(stored_by):
        kind.skip("the origin server is not a server name", ref)
        return
    existing = invites.by_token(token)
    if existing is not None:
        if existing.stored_by is None and stored_by is not None:
            # Imported first without knowing its origin (no config given).
            existing.stored_by = stored_by
        kind.present += 1
        return
    problem = _not_pending(row, now=now, validity=validity)
    if problem is not None:
        kind.skip(problem, ref)
        return
    received = _moment_s(row["received_ts"])
    assert received is not None  # _not_pending refused the rows without one
    invites.add(
        Invitation(
            token=token,
            medium="email",
            address=_email(row["address"]),
            room_id=row["room_id"],
            sender=row["sender"],
            # Sydent does not say whether the sender was authenticated.
            sender_verified=False,
            details={},
            created_at=received,
            expires_at=received + validity,
            stored_by=stored_by,
        )
    )
    kind.imported += 1


def _not_pending(row: sqlite3.Row, *, now: datetime, validity: timedelta) -> str | None:
    """Why an invitation is not one to deliver from here, if it is not."""
    if row["sent_ts"] is not None:
        return "already delivered to the invitee's homeserver"
    if row["medium"] != "email":
        return f"medium {row['medium']!r} is not supported"
    if _email(row["address"]) is None:
        return "not a valid email address"
    room_id = row["room_id"]
    if not isinstance(room_id, str) or not room_id.startswith("!") or len(room_id) > 255:
        return "not a valid room ID"
    if not _is_user_id(row["sender"]):
        return "the sender is not a valid Matrix user ID"
    received = _moment_s(row["received_ts"])
    if received is None:
        return "no reception time"
    if received + validity <= now:
        return f"expired: received more than {_days(validity)} ago"
    return None


def _days(validity: timedelta) -> str:
    return f"{validity.days} day(s)" if validity.days else f"{int(validity.total_seconds())} s"


def _import_ephemeral_keys(sydent_db: _SydentDatabase, kind: KindReport, *, now: datetime) -> None:
    query = "SELECT id, public_key, verify_count, persistence_ts FROM ephemeral_public_keys"
    for row in sydent_db.rows("ephemeral_public_keys", query):
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


def _import_accounts(sydent_db: _SydentDatabase, kind: KindReport, *, now: datetime) -> None:
    for row in sydent_db.rows("accounts", "SELECT rowid, user_id, created_ts FROM accounts"):
        ref, user_id = f"accounts#{row['rowid']}", row["user_id"]
        if not _is_user_id(user_id):
            kind.skip("not a valid Matrix user ID", ref)
        elif accounts.exists(user_id):
            kind.present += 1
        else:
            accounts.ensure_account(user_id, _moment(row["created_ts"]) or now)
            kind.imported += 1


def _import_access_tokens(sydent_db: _SydentDatabase, kind: KindReport, *, now: datetime) -> None:
    """Import the access tokens of imported accounts, hashed as we store ours."""
    for row in sydent_db.rows("tokens", "SELECT rowid, token, user_id FROM tokens"):
        ref, token, user_id = f"tokens#{row['rowid']}", row["token"], row["user_id"]
        if not isinstance(token, str) or not token:
            kind.skip("empty token", ref)
            continue
        owner = accounts.user_for_token(token_hash(token))
        if owner is not None and owner == user_id:
            kind.present += 1
        elif owner is not None:
            kind.skip("the token belongs here to another user", ref)
        elif not isinstance(user_id, str) or not accounts.exists(user_id):
            kind.skip("no imported account for its user", ref)
        else:
            accounts.add_token(token_hash(token), user_id, now)
            kind.imported += 1


def _import_accepted_terms(sydent_db: _SydentDatabase, kind: KindReport, *, now: datetime) -> None:
    """Import the terms URLs imported accounts accepted."""
    # {user ID: the URLs it has accepted here}, read once per account.
    accepted: dict[str, set[str]] = {}
    query = "SELECT rowid, user_id, url FROM accepted_terms_urls"
    for row in sydent_db.rows("accepted_terms_urls", query):
        ref, user_id, url = f"accepted_terms_urls#{row['rowid']}", row["user_id"], row["url"]
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
        else:
            accounts.accept_urls(user_id, {url}, now)
            accepted[user_id].add(url)
            kind.imported += 1


# -- the signing key ---------------------------------------------------------------


def _plan_key(
    config_path: str | None,
    report: ImportReport,
    *,
    signing_key_path: str,
    replace_key: bool,
    as_peer: bool,
    now: datetime,
) -> tuple["SydentConfig | None", tuple[str, SigningKey] | None]:
    """Sydent's config, and the (file, key) to write once the rows are imported.

    Nothing is written yet, so that a refused key leaves nothing behind.

    :raises SydentImportError: see `import_sydent`.
    """
    if config_path is None:
        if as_peer:
            raise SydentImportError("a peer is imported with its config (--config)")
        del report.kinds["signing key"]
        report.notes.append("No Sydent config given: the signing key was not imported.")
        return None, None
    sydent = read_sydent_config(config_path)
    if sydent.server_name is None:
        report.notes.append(
            f"{config_path}: no [general] server.name: the invitations of this"
            " database are signed with our key on delivery."
        )
    kind = report.kind("signing key")
    if as_peer:
        return sydent, _plan_peer_key(sydent, signing_key_path, kind, now=now)
    key = _plan_signing_key(sydent.key, signing_key_path, replace_key, kind)
    return sydent, (signing_key_path, key) if key is not None else None


def _write_key(path: str, key: SigningKey, *, signing_key_path: str, report: ImportReport) -> None:
    keys.write(path, key)
    if path == signing_key_path:
        report.written_key = key
    else:
        report.notes.append(
            f"signing key: kept in {path}, to sign the invitations this peer stored."
        )


def _plan_signing_key(
    sydent_key: SigningKey, key_path: str, replace_key: bool, kind: KindReport
) -> SigningKey | None:
    """Sydent's key when it is to be written to `key_path`, None when ours is the same.

    :raises SydentImportError: an unreadable key, or a different key at `key_path`
        without `replace_key`.
    """
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
            f" ({_describe(sydent_key)}): nothing was imported. Use --peer if this"
            " Sydent is one more peer of a deployment already imported, or"
            " --replace-key to replace it, if nothing signed with it must stay valid."
        )
    kind.imported += 1
    return sydent_key


def _plan_peer_key(
    sydent: "SydentConfig", signing_key_path: str, kind: KindReport, *, now: datetime
) -> tuple[str, SigningKey] | None:
    """(file, key) when the peer's private key is to be written, None when it is there.

    :raises SydentImportError: no server name, or another key recorded for the peer.
    """
    if sydent.server_name is None:
        raise SydentImportError(
            "a peer is imported under its server name: set [general] server.name in"
            " its config to the name its replication peers know it by"
        )
    public_key = keys.public_key_base64(sydent.key)
    known = peer_keys.find(sydent.server_name)
    if known is not None and known.public_key != public_key:
        raise SydentImportError(
            f"another key ({known.public_key}) is recorded for peer {sydent.server_name}"
            f" than its config's ({_describe(sydent.key)}): nothing was imported."
        )
    try:
        ours = keys.read(signing_key_path)
    except (OSError, ValueError):
        ours = None
    on_disk = peers.read_private_key(signing_key_path, sydent.server_name)
    if any(k is not None and _same_key(k, sydent.key) for k in (ours, on_disk)):
        kind.present += 1
        return None
    kind.imported += 1
    return peers.key_path(signing_key_path, sydent.server_name), sydent.key


@dataclass(frozen=True)
class SydentConfig:
    """What the import needs from a sydent.conf."""

    # [general] server.name: the name the peer signs under and its replication peers
    # know it by; None when unset (Sydent then takes the host name).
    server_name: str | None
    # [crypto] ed25519.signingkey
    key: SigningKey


def read_sydent_config(config_path: str) -> SydentConfig:
    """The server name and signing key of a sydent.conf."""
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
        key = keys.parse(text)
    except ValueError:
        raise SydentImportError(
            f"{config_path}: [crypto] ed25519.signingkey is not 'ed25519 <version> <base64>'"
        ) from None
    server_name = parser.get("general", "server.name", fallback="").strip()
    if server_name and not is_server_name(server_name):
        raise SydentImportError(f"{config_path}: [general] server.name is not a server name")
    return SydentConfig(server_name or None, key)


def _import_peer_keys(
    sydent_db: _SydentDatabase,
    sydent: SydentConfig | None,
    kind: KindReport,
    *,
    now: datetime,
) -> None:
    """Record the public keys of this Sydent and of its replication peers.

    Invitations a peer stored name its key in their rooms: it must stay valid here.
    Replication peers are configured in `peers` and `peer_pubkeys` (Sydent's README,
    "Intra-sydent replication"), under the server name each peer signs with.
    """
    found: list[tuple[str, str, str]] = []
    if sydent is not None and sydent.server_name is not None:
        found.append(("config", sydent.server_name, keys.public_key_base64(sydent.key)))
    found += _replication_peer_keys(sydent_db, kind)
    for ref, server_name, public_key in found:
        try:
            recorded = peers.record_public_key(server_name, public_key, now=now)
        except ValueError as e:
            kind.skip(str(e), ref)
            continue
        if recorded:
            kind.imported += 1
        else:
            kind.present += 1


def _replication_peer_keys(
    sydent_db: _SydentDatabase, kind: KindReport
) -> list[tuple[str, str, str]]:
    """(row reference, server name, public key) of each valid row of `peer_pubkeys`."""
    found = []
    query = "SELECT id, peername, alg, key FROM peer_pubkeys ORDER BY id"
    for row in sydent_db.rows("peer_pubkeys", query):
        ref = f"peer_pubkeys#{row['id']}"
        if row["alg"] != "ed25519":
            kind.skip(f"algorithm {row['alg']!r} is not supported", ref)
        elif not isinstance(row["peername"], str) or not is_server_name(row["peername"]):
            kind.skip("not a server name", ref)
        elif not _is_public_key(row["key"]):
            kind.skip("not an ed25519 public key in unpadded base64", ref)
        else:
            found.append((ref, row["peername"], row["key"]))
    return found


def _same_key(a: SigningKey, b: SigningKey) -> bool:
    return keys.serialise(a) == keys.serialise(b)


def _describe(key: SigningKey | None) -> str:
    if key is None:
        return "unreadable"
    return f"{keys.key_id(key)} {keys.public_key_base64(key)}"
