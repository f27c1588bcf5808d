"""Keeping invitations from being used to spam: blocklists and daily quotas.

Invitation mails go to people who never asked for them, under the State's name, so
store-invite refuses blocklisted senders, rooms and words before anything is stored
or sent, and no address (whoever invites it) or sender gets more than a daily quota
of invitation mails. Quotas count the invitations in the database, so every worker
and host shares them.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from datetime import timedelta

from identity.errors import Forbidden
from identity.errors import LimitExceeded
from identity.matrix_ids import server_of
from identity.storage import invites

QUOTA_WINDOW = timedelta(days=1)


@dataclass(frozen=True)
class Blocklists:
    keywords: tuple[str, ...] = ()  # case-insensitive, anywhere in the request's text
    homeservers: tuple[str, ...] = ()  # the sender's or the room's server, or a parent domain
    rooms: tuple[str, ...] = ()  # room IDs or aliases


@dataclass(frozen=True)
class Quotas:
    per_address: int | None  # invitation mails an address may receive a day; None: no limit
    per_sender: int | None  # invitation mails a sender may send a day


def check_blocklists(
    blocklists: Blocklists, *, room_id: str, sender: str, texts: Iterable[str]
) -> None:
    """:raises MatrixError: 403 M_FORBIDDEN when the invitation names anything blocked.

    The message does not say which entry matched: senders should not probe the list.
    """
    room_server = room_id.partition(":")[2].lower()
    servers = {room_server, (server_of(sender) or "").lower()}
    if any(_within(server, blocked) for server in servers for blocked in blocklists.homeservers):
        raise Forbidden("Invitations from this homeserver are not accepted")
    texts = [text.casefold() for text in texts]
    if any(room in (room_id, *texts) for room in blocklists.rooms):
        raise Forbidden("Invitations to this room are not accepted")
    if any(word.casefold() in text for word in blocklists.keywords for text in texts):
        raise Forbidden("This invitation was refused")


def _within(server: str, blocked: str) -> bool:
    blocked = blocked.lower()
    return server == blocked or server.endswith("." + blocked)


def check_quotas(quotas: Quotas, *, medium: str, address: str, sender: str, now: datetime) -> None:
    """:raises MatrixError: 429 M_LIMIT_EXCEEDED with retry_after_ms."""
    since = now - QUOTA_WINDOW
    counts = [
        (quotas.per_address, invites.created_since(since, medium=medium, address=address)),
        (quotas.per_sender, invites.created_since(since, sender=sender)),
    ]
    for quota, (count, oldest) in counts:
        if quota is not None and count >= quota and oldest is not None:
            retry_after = oldest + QUOTA_WINDOW - now
            raise LimitExceeded(
                "Too many invitations for today",
                retry_after_ms=max(0, int(retry_after.total_seconds() * 1000)),
            )
