"""The requests the fault-injection tests send, and what they read back: answers, the
service's log and its metrics."""

import json
import re
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path

import requests

from testing.servers import Gunicorn
from tests.helpers import V1
from tests.helpers import V2
from tests.helpers import code_from_mail

# A domain of domains.yaml: its addresses are routed, mailed and bound like any user's.
DOMAIN = "ac-versailles.fr"
# Longer than any bounded answer the tests wait for: a hang shows as a slow answer.
CLIENT_TIMEOUT = 30


@dataclass
class Answer:
    """What one request got: a status (None when the connection failed) and how long."""

    kind: str
    started: float  # time.monotonic()
    seconds: float
    status: int | None
    body: dict = field(default_factory=dict)
    retry_after: str | None = None
    error: str | None = None  # the client's exception, when there was no answer

    @property
    def errcode(self) -> str | None:
        return self.body.get("errcode")

    def is_unavailable(self) -> bool:
        """503, a Matrix error, Retry-After in whole seconds: what a client can act upon."""
        return (
            self.status == 503
            and self.errcode == "M_UNKNOWN"
            and isinstance(self.body.get("error"), str)
            and self.retry_after is not None
            and self.retry_after.isdigit()
            and int(self.retry_after) >= 1
        )

    def __repr__(self) -> str:
        outcome = self.error or f"{self.status} {self.errcode or ''}".strip()
        return f"<{self.kind} {outcome} in {self.seconds:.1f} s>"


def call(kind: str, method: str, url: str, *, http: requests.Session | None = None,
         timeout: float = CLIENT_TIMEOUT, **options) -> Answer:  # fmt: skip
    """Send one request; never raises: a failed connection is an Answer without status."""
    started = time.monotonic()
    sender = http or requests
    try:
        response = sender.request(method, url, timeout=timeout, **options)
    except requests.RequestException as e:
        return Answer(kind, started, time.monotonic() - started, None, error=type(e).__name__)
    try:
        body = response.json()
    except ValueError:
        body = {"text": response.text[:200]}
    return Answer(kind, started, time.monotonic() - started, response.status_code,
                  body if isinstance(body, dict) else {"json": body},
                  response.headers.get("Retry-After"))  # fmt: skip


def new_address(prefix: str = "faults") -> str:
    return f"{prefix}.{uuid.uuid4().hex[:10]}@{DOMAIN}"


class Service:
    """The service under gunicorn: its URL, log and the requests the tests send."""

    def __init__(self, server: Gunicorn, log: Path, token: str | None = None) -> None:
        self.server = server
        self.base = server.base
        self.log_path = log
        self.token = token
        self._pepper: str | None = None

    # -- reading what it did ----------------------------------------------------------

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_lines_since(self, offset: int) -> list[str]:
        """The log's lines written after `offset` (a length of `log()` read earlier)."""
        return self.log()[offset:].splitlines()

    def metrics(self) -> str:
        response = requests.get(f"{self.base}/metrics", timeout=CLIENT_TIMEOUT)
        assert response.status_code == 200, response.text
        return response.text

    def unavailable_count(self, dependency: str) -> float:
        """identity_dependency_unavailable_total{dependency=…}, 0 when absent."""
        pattern = re.compile(
            r'^identity_dependency_unavailable_total\{dependency="' + dependency
            + r'"\} (\S+)$', re.MULTILINE,
        )  # fmt: skip
        match = pattern.search(self.metrics())
        return float(match.group(1)) if match else 0.0

    # -- the requests -----------------------------------------------------------------

    def status(self, **options) -> Answer:
        return call("status", "GET", f"{self.base}{V2}", **options)

    def health(self, **options) -> Answer:
        return call("health", "GET", f"{self.base}/health", **options)

    def info(self, address: str | None = None, **options) -> Answer:
        params = {"medium": "email", "address": address or new_address("info")}
        return call("info", "GET", f"{self.base}{V1}/info", params=params, **options)

    def lookup_v1(self, address: str | None = None, **options) -> Answer:
        params = {"medium": "email", "address": address or new_address("nobody")}
        return call("lookup_v1", "GET", f"{self.base}{V1}/lookup", params=params, **options)

    def hash_details(self, **options) -> Answer:
        return call("hash_details", "GET", f"{self.base}{V2}/hash_details",
                    headers=self._auth(), **options)  # fmt: skip

    def pepper(self) -> str:
        """The lookup pepper (read once, while the database answers)."""
        if self._pepper is None:
            answer = self.hash_details()
            assert answer.status == 200, answer.body
            self._pepper = answer.body["lookup_pepper"]
        return self._pepper

    def lookup_v2(self, addresses: list[str] | None = None, *, pepper: str | None = None,
                  **options) -> Answer:  # fmt: skip
        body = {
            "addresses": [f"{a} email" for a in addresses or [new_address("nobody")]],
            "algorithm": "none",
            "pepper": pepper or self._pepper or "unknown-pepper",
        }
        return call("lookup_v2", "POST", f"{self.base}{V2}/lookup", json=body,
                    headers=self._auth(), **options)  # fmt: skip

    def request_token(self, address: str, secret: str = "FaultsSecret1", attempt: int = 1,
                      **options) -> Answer:  # fmt: skip
        body = {"client_secret": secret, "email": address, "send_attempt": attempt}
        return call("request_token", "POST", f"{self.base}{V1}/validate/email/requestToken",
                    json=body, **options)  # fmt: skip

    def submit_token(self, sid: str, token: str, secret: str = "FaultsSecret1",
                     **options) -> Answer:  # fmt: skip
        body = {"sid": sid, "client_secret": secret, "token": token}
        return call("submit_token", "POST", f"{self.base}{V1}/validate/email/submitToken",
                    json=body, **options)  # fmt: skip

    def bind(self, sid: str, mxid: str, secret: str = "FaultsSecret1", **options) -> Answer:
        body = {"sid": sid, "client_secret": secret, "mxid": mxid}
        return call("bind", "POST", f"{self.base}{V1}/3pid/bind", json=body, **options)

    def store_invite(self, address: str, **options) -> Answer:
        body = {
            "medium": "email",
            "address": address,
            "room_id": "!room:agent.dinum.tchap.gouv.fr",
            # A sender of its own each time: no per-sender daily cap is reached.
            "sender": f"@marie.{uuid.uuid4().hex[:8]}:agent.dinum.tchap.gouv.fr",
        }
        return call("store_invite", "POST", f"{self.base}{V1}/store-invite", json=body,
                    **options)  # fmt: skip

    def bound(self, smtp, address: str, mxid: str) -> None:
        """Validate `address` with the code mailed to it and bind it to `mxid`."""
        answer = self.request_token(address)
        assert answer.status == 200, answer.body
        sid = answer.body["sid"]
        code = code_from_mail(smtp.to(address)[-1])
        answer = self.submit_token(sid, code)
        assert answer.status == 200, answer.body
        answer = self.bind(sid, mxid)
        assert answer.status == 200, answer.body

    def _auth(self) -> dict[str, str]:
        assert self.token, "no v2 token for this service"
        return {"Authorization": f"Bearer {self.token}"}


# -- reading the log ---------------------------------------------------------------------

_LEVEL = re.compile(r"\[(WARNING|ERROR|CRITICAL)\]")


def warnings_about(lines: list[str], word: str) -> list[str]:
    """The log lines at WARNING or above (the app's JSON lines and gunicorn's own) that
    mention `word`: what an operator reads about an outage."""
    found = []
    for line in lines:
        if line.startswith('{"time": "['):  # the access log
            continue
        level = None
        if line.startswith("{"):
            try:
                level = json.loads(line).get("level")
            except ValueError:
                level = None
        elif match := _LEVEL.search(line):
            level = match.group(1)
        if level in ("WARNING", "ERROR", "CRITICAL") and word.lower() in line.lower():
            found.append(line)
    return found


# -- load --------------------------------------------------------------------------------


def in_parallel(count: int, call: Callable[[int], Answer]) -> list[Answer]:
    """`call(i)` for i in range(count), from `count` threads released together."""
    barrier = threading.Barrier(count)

    def run(i: int) -> Answer:
        barrier.wait()
        return call(i)

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(run, range(count)))


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]
