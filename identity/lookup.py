"""Association lookups: the v2 hashed lookup and the legacy v1 plain ones.

For `sha256`, clients send base64url(sha256("<address> <medium> <pepper>")); we
store that hash with each association and look it up by index, never hashing rows
per request. An address at an internationalised domain has two spellings a client may
hash (``jean@exämple.fr`` as typed, ``jean@xn--exmple-cua.fr``): its association keeps
the hash of each.
"""

import base64
import functools
import hashlib
from collections.abc import Callable
from datetime import datetime
from typing import Any

from canonicaljson import encode_canonical_json

from identity.addresses import lookup_form
from identity.addresses import unicode_spelling
from identity.clock import to_ms
from identity.errors import InvalidParam
from identity.errors import InvalidPepper
from identity.errors import TooLarge
from identity.storage import associations
from identity.storage import peppers
from identity.storage.associations import CommittedAssociation
from identity.storage.models import Association
from identity.storage.models import Pepper

ALGORITHMS = ["none", "sha256"]


def lookup_hash(medium: str, address: str, pepper: str) -> str:
    digest = hashlib.sha256(f"{address} {medium} {pepper}".encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def hash_details(*, now: datetime, known_pepper: tuple[str, int] | None = None) -> dict[str, Any]:
    """The algorithms and the current pepper.

    :param known_pepper: the current pepper and slot, when the caller has read them.
    """
    pepper = (known_pepper or peppers.current_value_and_slot(now))[0]
    return {"algorithms": ALGORITHMS, "lookup_pepper": pepper}


def lookup(
    addresses: list[str],
    algorithm: str,
    pepper: str,
    *,
    now: datetime,
    limit: int,
    known_pepper: tuple[str, int] | None = None,
) -> dict[str, str]:
    """Map each hash (or "address medium" string) that has a live association to its mxid.

    :param known_pepper: the current pepper and slot, when the caller has read them.
    :raises MatrixError: M_INVALID_PEPPER (with the current pepper), M_INVALID_PARAM for
        an unknown algorithm, M_TOO_LARGE past `limit` addresses.
    """
    current, slot = known_pepper or peppers.current_value_and_slot(now)
    if pepper != current:
        raise InvalidPepper("Unknown or invalid pepper", lookup_pepper=current)
    if algorithm not in ALGORITHMS:
        raise InvalidParam(f"Unsupported algorithm; use one of {', '.join(ALGORITHMS)}")
    if len(addresses) > limit:
        raise TooLarge(f"Too many addresses; at most {limit} per request")
    if not all(isinstance(a, str) for a in addresses):
        raise InvalidParam("addresses must be strings")
    if algorithm == "sha256":
        return associations.mxids_by_hash(addresses, slot=slot, now=now)
    # Several spellings of one address have the same hash: each gets its answer.
    queries: dict[str, list[str]] = {}
    for query in addresses:
        address, _, medium = query.rpartition(" ")
        queries.setdefault(lookup_hash(medium, lookup_form(address), current), []).append(query)
    found = associations.mxids_by_hash(queries, slot=slot, now=now)
    return {query: mxid for h, mxid in found.items() for query in queries[h]}


def hashing_peppers(now: datetime) -> list[Pepper]:
    """The peppers associations are hashed with: the current one, and the one being
    rotated in if any (so that the rotation need not come back to them)."""
    return [p for p in (peppers.current(now), peppers.pending()) if p is not None]


def hash_association(
    association: Association, *, now: datetime, with_peppers: list[Pepper] | None = None
) -> None:
    """Set the association's hashes for the `hashing_peppers`.

    :param with_peppers: those peppers, when the caller hashes many associations.
    """
    if with_peppers is None:
        with_peppers = hashing_peppers(now)
    for pepper in with_peppers:
        hashes = spelling_hashes(association.medium, association.address, pepper.value)
        for column, value in zip(associations.hash_columns(pepper.slot), hashes, strict=True):
            setattr(association, column.key, value)


def spelling_hashes(medium: str, address: str, pepper: str) -> tuple[str, str | None]:
    """The lookup hashes of an address's key, and of its Unicode spelling if it has one."""
    unicode = unicode_spelling(address) if medium == "email" else None
    return (
        lookup_hash(medium, address, pepper),
        lookup_hash(medium, unicode, pepper) if unicode else None,
    )


def rotate_pepper(
    *, now: datetime, batch: int = 5_000, commit: Callable[[], None], progress=None
) -> str:
    """Replace the lookup pepper without stopping lookups; return the new pepper.

    A new pepper is created in the slot the current one does not use, and every
    association's hash for it is computed there, `batch` rows per transaction, while
    lookups keep answering with the current pepper. Once every row has one, the new
    pepper becomes current: clients still hashing with the old one get
    M_INVALID_PEPPER with the new one, as the specification says. An interrupted
    rotation resumes where it stopped.

    :param commit: ends each batch's transaction (the caller owns the session).
    :param progress: called with the number of rows hashed so far.
    """
    pending = peppers.pending()
    if pending is None:
        pending = peppers.start_pending(1 - peppers.current(now).slot, now)
        associations.clear_slot(pending.slot)
        commit()
    done = after = 0
    while True:
        rows = associations.missing_in_slot(pending.slot, batch, after=after)
        if not rows and after:
            # Once more from the first id: a bind that read the peppers before this one
            # was pending may have committed an unhashed row behind `after`.
            after = 0
            continue
        if not rows:
            break
        associations.set_hashes(
            pending.slot,
            {
                row_id: spelling_hashes(medium, address, pending.value)
                for row_id, medium, address in rows
            },
        )
        commit()
        after = rows[-1][0]
        done += len(rows)
        if progress is not None:
            progress(done)
    pending.activated_at = now
    commit()
    return pending.value


def lookup_v1(
    medium: str, address: str, *, now: datetime, sign: Callable[[dict[str, Any]], dict[str, Any]]
) -> bytes:
    """The legacy v1 lookup of one address, as the JSON of its answer: the signed
    association, or {} when unbound.

    :param sign: signs the association with the service's long-term key; the same
        callable (`Signer.sign` of the signer made once per key) for every lookup.
    """
    # Straight on the pool (storage.hot_reads), not through the ORM: v1 lookups are hot.
    association = associations.find_committed(medium, lookup_form(address))
    if association is None or association.not_after <= now:
        return b"{}"
    return _signed_association(association, sign)


@functools.lru_cache(maxsize=1024)
def _signed_association(
    association: CommittedAssociation, sign: Callable[[dict[str, Any]], dict[str, Any]]
) -> bytes:
    """The signed answer for an association, encoded and remembered: homeservers look
    the same addresses up again and again (on every invite), and an Ed25519 signature of
    the same content is the same bytes. The association as read is the key, every column
    of it, so a changed binding is signed afresh; so is everything after a change of key.
    Bytes, as Synapse keeps its signed key answers: nothing a caller could change, and
    no encoding per request."""
    return encode_canonical_json(sign(association_json(association)))


def association_json(association: Association | CommittedAssociation) -> dict[str, Any]:
    """The association as the specification's lookup and bind answers give it."""
    return {
        "address": association.address,
        "medium": association.medium,
        "mxid": association.mxid,
        "not_before": to_ms(association.not_before),
        "not_after": to_ms(association.not_after),
        "ts": to_ms(association.created_at),
    }


def bulk_lookup(threepids: list[Any], *, now: datetime, limit: int) -> list[list[str]]:
    """The legacy v1 bulk lookup: [[medium, address, mxid], …] for the known pairs, by
    medium and address (as Sydent orders them).

    :raises MatrixError: M_TOO_LARGE past `limit`, M_INVALID_PARAM for a malformed pair.
    """
    if len(threepids) > limit:
        raise TooLarge(f"Too many threepids; at most {limit} per request")
    pairs = []
    for pair in threepids:
        if not (
            isinstance(pair, list)
            and len(pair) == 2
            and isinstance(pair[0], str)
            and isinstance(pair[1], str)
        ):
            raise InvalidParam("threepids must be [medium, address] pairs")
        pairs.append((pair[0], lookup_form(pair[1])))
    return [list(row) for row in associations.bound_to(pairs, now=now)]
