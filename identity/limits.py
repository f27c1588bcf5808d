"""Rate limits: per client IP, per user, and per recipient of every mail we send.

Counters live in the `limits` library's storage named by RATELIMIT_STORAGE_URI:
in memory for the embedded single-process mode, in Redis when several workers or
hosts must share them. Beyond a limit the client gets 429 M_LIMIT_EXCEEDED with
`retry_after_ms`.
"""

import hashlib
import math
import time
from dataclasses import dataclass

from flask import Flask
from limits import RateLimitItem
from limits import parse_many
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from identity.config import ConfigError
from identity.errors import LimitExceeded
from identity.services import services


@dataclass(frozen=True)
class Limits:
    per_ip: tuple[RateLimitItem, ...]  # unauthenticated requests, by client IP
    per_user: tuple[RateLimitItem, ...]  # authenticated v2 requests, by Matrix user
    mails_per_address: tuple[RateLimitItem, ...]  # every mail, by recipient
    limiter: MovingWindowRateLimiter | None  # None: every limit is off

    def check(self, kind: str, key: str) -> None:
        """Count one event of `kind` for `key`.

        :raises MatrixError: 429 M_LIMIT_EXCEEDED with retry_after_ms.
        """
        if self.limiter is None:
            return
        for item in getattr(self, kind):
            if not self.limiter.hit(item, kind, key):
                reset_at = self.limiter.get_window_stats(item, kind, key).reset_time
                retry_after_ms = max(0, math.ceil((reset_at - time.time()) * 1000))
                raise LimitExceeded("Too many requests", retry_after_ms=retry_after_ms)


def init_app(app: Flask) -> "Limits":
    config = app.config
    limiter = None
    if config["RATELIMIT_ENABLED"]:
        try:
            storage = storage_from_string(config["RATELIMIT_STORAGE_URI"], key_prefix="identity")
        except Exception as e:  # the limits library raises several types for a bad URI
            raise ConfigError(f"RATELIMIT_STORAGE_URI: {e}") from None
        limiter = MovingWindowRateLimiter(storage)
    return Limits(
        per_ip=_items("RATELIMIT_PER_IP", config),
        per_user=_items("RATELIMIT_PER_USER", config),
        mails_per_address=_items("MAIL_LIMIT_PER_ADDRESS", config),
        limiter=limiter,
    )


def _items(key: str, config) -> tuple[RateLimitItem, ...]:
    try:
        return tuple(parse_many(str(config[key])))
    except ValueError:
        raise ConfigError(f"{key}: expected limits such as '30/minute;500/hour'") from None


def current() -> Limits:
    return services().limits


def private_key(value: str) -> str:
    """A storage key for an address or token: counted, never readable in Redis."""
    return hashlib.sha256(value.encode()).hexdigest()[:32]
