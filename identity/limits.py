"""Rate limits: per client IP, per user, and per recipient of every mail we send.

Counters live where RATELIMIT_STORAGE_URI says (the `limits` library's URIs): in
memory for the embedded single-process mode, in Redis when several workers or hosts
must share them. Beyond a limit the client gets 429 M_LIMIT_EXCEEDED with
`retry_after_ms`.

Every window that applies to a request (say 120/minute and 2000/hour for its IP) is
checked and counted at once, with the moving windows of the library's
`MovingWindowRateLimiter`: all of them have room and each records the hit, or none
records it. In Redis that is one Lua script, one round trip, on the library's keys; in
memory, the same steps under a lock (`_MemoryWindows`). Other storages go through the
library's limiter, one window after the other.

When Redis cannot answer (stopped, frozen: REDIS_TIMEOUT_SECONDS bounds each call), the
limits that protect the service fail open: requests are served uncounted, with one
warning per outage. The quota of mails per address fails closed (503): it protects
people outside the service from being flooded in our name, and a code that cannot be
sent now can be asked for again in a minute. After a failure the store is not asked
again for `_RedisWindows.RETRY_SECONDS`, so an outage costs one timeout, not one per
request.
"""

import hashlib
import math
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any
from typing import Protocol

from limits import RateLimitItem
from limits import parse_many
from limits.storage import MemoryStorage
from limits.storage import RedisStorage
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from identity import outages
from identity.config import ConfigError
from identity.errors import LimitExceeded
from identity.errors import Unavailable
from identity.idle import IdleConnections


@dataclass(frozen=True)
class Window:
    """One moving window of a limit, such as 120 hits a minute."""

    item: RateLimitItem
    limit: int
    seconds: int
    suffix: str  # the end of the library's key for it: "120/1/minute"

    @classmethod
    def of(cls, item: RateLimitItem) -> "Window":
        suffix = f"{item.amount}/{item.multiples}/{item.GRANULARITY.name}"
        return cls(item, item.amount, item.get_expiry(), suffix)

    def key(self, kind: str, key: str) -> str:
        """The library's key (`RateLimitItem.key_for`), its fixed part worked out once."""
        return f"{self.item.namespace}/{kind}/{key}/{self.suffix}"


class _Windows(Protocol):
    def hit(self, windows: tuple[Window, ...], kind: str, key: str) -> int | None:
        """Count a hit in every window; None, or the milliseconds until all have room."""


@dataclass(frozen=True)
class Limits:
    per_ip: tuple[Window, ...]  # unauthenticated requests, by client IP
    per_user: tuple[Window, ...]  # authenticated v2 requests, by Matrix user
    mails_per_address: tuple[Window, ...]  # every mail, by recipient
    windows: _Windows | None  # None: every limit is off
    per_guest_link: tuple[Window, ...] = ()  # posts to a refusal or report page, by link

    def check(self, kind: str, key: str) -> None:
        """Count one event of `kind` for `key`.

        :raises MatrixError: 429 M_LIMIT_EXCEEDED with retry_after_ms; 503 when the
            store of a limit that fails closed cannot answer.
        """
        if self.windows is None:
            return
        try:
            retry_after_ms = self.windows.hit(getattr(self, kind), kind, key)
        except Exception as e:
            if outages.unavailable_dependency(e) != outages.REDIS:
                raise
            if kind in _FAIL_CLOSED:
                outages.report(outages.REDIS, e)
                raise Unavailable("Mail cannot be sent right now, try again shortly") from None
            outages.report(outages.REDIS, e, effect="requests are served without rate limits")
            return
        if retry_after_ms is not None:
            raise LimitExceeded("Too many requests", retry_after_ms=retry_after_ms)

    def store_state(self) -> str:
        """Where the counts are kept, for /health: "off" (nowhere, or in memory), else
        "ok" or "unreachable" (Redis)."""
        if not isinstance(self.windows, _RedisWindows):
            return "off"
        return "ok" if self.windows.storage.check() else "unreachable"


# Kinds of limits whose store being down refuses the request rather than letting it by.
_FAIL_CLOSED = frozenset({"mails_per_address"})


@dataclass(frozen=True)
class LimitSettings:
    """The RATELIMIT_*, REDIS_TIMEOUT_SECONDS and MAIL_LIMIT_PER_ADDRESS settings, read once.

    Each limit is kept with the key it came from, which an error names.
    """

    enabled: bool
    storage_uri: str
    redis_timeout: float | None
    limits: dict[str, str]  # key → "30/minute;500/hour"

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "LimitSettings":
        return cls(
            enabled=config["RATELIMIT_ENABLED"],
            storage_uri=config["RATELIMIT_STORAGE_URI"],
            redis_timeout=config["REDIS_TIMEOUT_SECONDS"] or None,
            limits={
                key: str(config[key])
                for key in (
                    "RATELIMIT_PER_IP",
                    "RATELIMIT_PER_USER",
                    "MAIL_LIMIT_PER_ADDRESS",
                    "RATELIMIT_PER_GUEST_LINK",
                )
            },
        )


def build(settings: LimitSettings) -> "Limits":
    """The app's limits, and their store when they are enabled.

    :raises ConfigError: a bad limit or storage URI.
    """
    windows: _Windows | None = None
    if settings.enabled:
        uri = settings.storage_uri
        options: dict[str, float] = {}
        if uri.startswith(("redis", "rediss")) and settings.redis_timeout:
            timeout = settings.redis_timeout
            options = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
        try:
            storage = storage_from_string(uri, key_prefix="identity", **options)
        except Exception as e:  # the limits library raises several types for a bad URI
            raise ConfigError(f"RATELIMIT_STORAGE_URI: {e}") from None
        if isinstance(storage, RedisStorage):
            windows = _RedisWindows(storage)
        elif isinstance(storage, MemoryStorage):
            windows = _MemoryWindows()
        else:
            windows = _LibraryWindows(MovingWindowRateLimiter(storage))
    return Limits(
        per_ip=_items("RATELIMIT_PER_IP", settings),
        per_user=_items("RATELIMIT_PER_USER", settings),
        mails_per_address=_items("MAIL_LIMIT_PER_ADDRESS", settings),
        per_guest_link=_items("RATELIMIT_PER_GUEST_LINK", settings),
        windows=windows,
    )


class _MemoryWindows:
    """Moving windows in this process's memory: `_HIT_ALL`'s steps under one lock.

    Each key keeps the times of its last `limit` hits, newest first, as the library's
    MemoryStorage does; unlike it, this starts no thread (MemoryStorage starts one every
    10 ms to expire entries: at a few thousand requests a second, 15% of a worker's
    time). Old hits leave a key as new ones come; idle keys go in a sweep at most once a
    minute, on the request that finds it due.
    """

    SWEEP_SECONDS = 60

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # (window, kind, key) → (times, expiry)
        self._hits: dict[tuple[str, str, str], tuple[deque[float], int]] = {}
        self._next_sweep = time.monotonic() + self.SWEEP_SECONDS

    def hit(self, windows: tuple[Window, ...], kind: str, key: str) -> int | None:
        if not windows:
            return None
        now = time.time()
        with self._lock:
            wait = 0.0
            counts = []
            for window in windows:
                name = (window.suffix, kind, key)
                entry = self._hits.get(name)
                if entry is None:
                    entry = self._hits[name] = (deque(maxlen=max(window.limit, 0)), window.seconds)
                hits = entry[0]
                while hits and hits[-1] < now - window.seconds:  # out of the window
                    hits.pop()
                counts.append(hits)
                if window.limit < 1:
                    wait = max(wait, window.seconds)
                elif len(hits) >= window.limit:  # full of hits still in the window
                    wait = max(wait, hits[-1] + window.seconds - now)
            if wait > 0:
                return max(0, math.ceil(wait * 1000))
            for hits in counts:
                hits.appendleft(now)
            if time.monotonic() >= self._next_sweep:
                self._sweep(now)
        return None

    def _sweep(self, now: float) -> None:
        self._next_sweep = time.monotonic() + self.SWEEP_SECONDS
        for name, (hits, expiry) in list(self._hits.items()):
            if not hits or hits[0] < now - expiry:
                del self._hits[name]


class _LibraryWindows:
    """Any other storage of the library: its limiter, one window after the other."""

    def __init__(self, limiter: MovingWindowRateLimiter) -> None:
        self.limiter = limiter

    def hit(self, windows: tuple[Window, ...], kind: str, key: str) -> int | None:
        for window in windows:
            if not self.limiter.hit(window.item, kind, key):
                reset_at = self.limiter.get_window_stats(window.item, kind, key).reset_time
                return max(0, math.ceil((reset_at - time.time()) * 1000))
        return None


# KEYS: one list per window, newest entry first; ARGV: now, then (limit, seconds) per key.
# Like the library's acquire_moving_window.lua, for every window at once: all of them
# have room, and each records the hit; or none records it, and the answer is the
# seconds until the fullest one has room again. A list is trimmed only once it holds
# more than its limit (LPUSH answers its length): one command less per window and hit.
_HIT_ALL = """
local now = tonumber(ARGV[1])
local wait = 0
for i, key in ipairs(KEYS) do
    local limit = tonumber(ARGV[2 * i])
    local expiry = tonumber(ARGV[2 * i + 1])
    local oldest = redis.call('lindex', key, limit - 1)
    if limit < 1 then
        wait = math.max(wait, expiry)
    elseif oldest and tonumber(oldest) >= now - expiry then
        wait = math.max(wait, tonumber(oldest) + expiry - now)
    end
end
if wait > 0 then
    return tostring(wait)
end
for i, key in ipairs(KEYS) do
    local limit = tonumber(ARGV[2 * i])
    local expiry = tonumber(ARGV[2 * i + 1])
    if redis.call('lpush', key, ARGV[1]) > limit then
        redis.call('ltrim', key, 0, limit - 1)
    end
    redis.call('expire', key, expiry)
end
return false
"""


class _RedisWindows:
    """Moving windows in Redis, all of a request's in one round trip (`_HIT_ALL`)."""

    def __init__(self, storage: RedisStorage) -> None:
        self.storage = storage
        # A redis-py client (the limits library types it as a narrower protocol).
        client: Any = storage.get_connection()
        self.script = client.register_script(_HIT_ALL)
        pool = client.connection_pool
        self.connections = IdleConnections(
            partial(pool.connection_class, **pool.connection_kwargs), _disconnect
        )
        self.down_until = 0.0
        self.down_error: type[Exception] | None = None

    # After Redis failed to answer, requests do not ask it again for this long.
    RETRY_SECONDS = 1.0

    def _evalsha(self, keys: list[str], args: list) -> bytes | None:
        """EVALSHA straight on a connection of our own: a third of redis-py's CPU per
        call. Anything unusual (script not loaded yet, a connection to re-open) goes
        through redis-py's full path, which loads the script and retries."""
        if self.down_error is not None and time.monotonic() < self.down_until:
            # As the last try failed (a new error: the last one keeps its traceback).
            raise self.down_error("Redis did not answer a moment ago: not asked again yet")
        connection = self.connections.take()
        try:
            connection.send_command("EVALSHA", self.script.sha, len(keys), *keys, *args)
            answer = connection.read_response()
        except Exception as e:
            self.connections.discard(connection)
            if _timed_out(e):  # asking again would wait as long again
                self._mark_down(e)
                raise
            try:
                answer = self.script(keys=keys, args=args)
            except Exception as again:
                if outages.unavailable_dependency(again) is not None:
                    self._mark_down(again)
                raise
        else:
            self.connections.give(connection)
        if self.down_error is not None:  # back: the next request asks it again at once
            self.down_error = None
        return answer

    def _mark_down(self, error: Exception) -> None:
        self.down_until = time.monotonic() + self.RETRY_SECONDS
        self.down_error = type(error)

    def hit(self, windows: tuple[Window, ...], kind: str, key: str) -> int | None:
        """Count a hit in every window; None, or the milliseconds until one has room."""
        if not windows:
            return None
        keys = [self.storage.prefixed_key(window.key(kind, key)) for window in windows]
        args: list[float | int] = [time.time()]
        for window in windows:
            args += [window.limit, window.seconds]
        wait = self._evalsha(keys, args)
        if wait is None:
            return None
        return max(0, math.ceil(float(wait) * 1000))


def _timed_out(error: Exception) -> bool:
    """A read that waited REDIS_TIMEOUT_SECONDS for nothing (redis-py's or the socket's)."""
    from redis.exceptions import TimeoutError as RedisTimeout  # loaded with Redis limits

    return isinstance(error, RedisTimeout | TimeoutError)


def _disconnect(connection: Any) -> None:
    connection.disconnect()


def _items(key: str, settings: LimitSettings) -> tuple[Window, ...]:
    try:
        return tuple(Window.of(item) for item in parse_many(settings.limits[key]))
    except ValueError:
        raise ConfigError(f"{key}: expected limits such as '30/minute;500/hour'") from None


def private_key(value: str) -> str:
    """A storage key for an address or token: counted, never readable in Redis."""
    return hashlib.sha256(value.encode()).hexdigest()[:32]
