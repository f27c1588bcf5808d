"""A real Sydent 2.6.1, installed in its own cached virtualenv, run as a subprocess.

The virtualenv lives outside the repository, in ~/.cache/tchap-identity/sydent-venv
($TCHAP_IDENTITY_CACHE/sydent-venv), and is created once; later sessions reuse it as long
as it imports the pinned version.
"""

import base64
import configparser
import fcntl
import hashlib
import json
import os
import re
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import signedjson.key
import signedjson.sign

from testing.processes import ServerNotReady
from testing.processes import ServerProcess
from testing.processes import free_port
from testing.processes import wait_until

SYDENT_VERSION = "2.6.1"
CACHE_DIR = Path(os.environ.get("TCHAP_IDENTITY_CACHE", "~/.cache/tchap-identity")).expanduser()
VENV = CACHE_DIR / "sydent-venv"
# Sydent's wheel carries no templates: the Tchap-branded ones of our mail tests.
TEMPLATES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "sydent_templates"
_CHECK = (
    "import importlib.metadata as m, sydent.sydent, prometheus_client;"
    f"assert m.version('matrix-sydent') == '{SYDENT_VERSION}'"
)


class SydentUnavailable(Exception):
    """The virtualenv could not be created or Sydent did not start."""


def ensure_venv() -> Path:
    """The Python of a virtualenv with Sydent installed, created on first use."""
    python = VENV / "bin" / "python"
    VENV.parent.mkdir(parents=True, exist_ok=True)
    with open(VENV.parent / "sydent-venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one creator when sessions run side by side
        if python.exists() and _works(python):
            return python
        steps = [
            [getattr(sys, "_base_executable", sys.executable), "-m", "venv", "--clear", str(VENV)],
            # prometheus_client is used by Sydent but missing from its dependencies.
            [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
             f"matrix-sydent=={SYDENT_VERSION}", "prometheus_client"],
        ]  # fmt: skip
        for step in steps:
            try:
                done = subprocess.run(step, capture_output=True, text=True, timeout=900)
            except (OSError, subprocess.TimeoutExpired) as e:
                raise SydentUnavailable(f"{' '.join(step[:4])} … failed: {e}") from None
            if done.returncode != 0:
                raise SydentUnavailable(
                    f"{' '.join(step[:4])} … failed: {done.stderr.strip()[-2000:]}"
                )
        if not _works(python):
            raise SydentUnavailable(f"Sydent {SYDENT_VERSION} does not import in {VENV}")
    return python


def _works(python: Path) -> bool:
    return subprocess.run([str(python), "-c", _CHECK], capture_output=True).returncode == 0


@dataclass
class Sydent:
    """One Sydent server with its working directory, config and SQLite database."""

    python: Path
    workdir: Path
    smtp_host: str
    smtp_port: int
    server_name: str = "sydent.test"
    port: int = 0
    process: ServerProcess | None = None

    @property
    def config_path(self) -> Path:
        return self.workdir / "sydent.conf"

    @property
    def db_path(self) -> Path:
        return self.workdir / "sydent.db"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write_config(self) -> None:
        """A config for a test: loopback, our SMTP sink, no signing key (Sydent makes one)."""
        self.port = free_port()
        config = configparser.ConfigParser(interpolation=None)
        config["general"] = {
            "server.name": self.server_name,
            "templates.path": str(TEMPLATES),
            "brand.default": "tchap",
            "pidfile.path": str(self.workdir / "sydent.pid"),
            "log.path": "",
            # The tests' fake homeserver listens on loopback, which Sydent refuses
            # by default.
            "ip.whitelist": "127.0.0.1",
        }
        config["db"] = {"db.file": str(self.db_path)}
        config["http"] = {
            "clientapi.http.bind_address": "127.0.0.1",
            "clientapi.http.port": str(self.port),
            "client_http_base": self.base_url,
            # The fake homeserver's certificate comes from the tests' own CA.
            "federation.verifycerts": "false",
        }
        config["email"] = {
            "email.smtphost": self.smtp_host,
            "email.smtpport": str(self.smtp_port),
            "email.hostname": self.server_name,
            "email.from": f"Sydent <noreply@{self.server_name}>",
            "email.tlsmode": "0",
        }
        config["crypto"] = {}
        with open(self.config_path, "w") as f:
            config.write(f)

    def start(self, timeout: float = 30) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.config_path.exists():
            self.write_config()
        self.process = ServerProcess(
            [str(self.python), "-m", "sydent.sydent"],
            cwd=self.workdir,
            env={**os.environ, "SYDENT_CONF": str(self.config_path)},
            log=self.workdir / "sydent.log",
            what="Sydent",
        )
        try:
            self.process.start(self._answers, timeout=timeout)
        except ServerNotReady as e:
            self.process = None
            raise SydentUnavailable(str(e)) from None

    def _answers(self) -> bool:
        try:
            self.get("/_matrix/identity/v2")
        except (OSError, urllib.error.URLError):
            return False
        return True

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(timeout=10)
        self.process = None

    def log_tail(self) -> str:
        path = self.workdir / "sydent.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    # -- HTTP ----------------------------------------------------------------------

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.base_url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json"} if data else {},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def get(self, path: str) -> dict:
        status, body = self.request("GET", path)
        assert status == 200, (path, status, body)
        return body

    def post(self, path: str, body: dict) -> dict:
        status, answer = self.request("POST", path, body)
        assert status == 200, (path, status, answer, self.log_tail())
        return answer

    def bind(self, smtp, address: str, mxid: str) -> dict:
        """Validate `address` with the code Sydent mails, then bind it (v1 API)."""
        secret = "sydent-secret"
        v1 = "/_matrix/identity/api/v1"
        before = len(smtp.messages)
        body = {"email": address, "client_secret": secret, "send_attempt": 1}
        sid = self.post(f"{v1}/validate/email/requestToken", body)["sid"]
        code = _code(_wait_for_mail(smtp, before))
        self.post(
            f"{v1}/validate/email/submitToken",
            {"sid": sid, "client_secret": secret, "token": code},
        )
        return self.post(f"{v1}/3pid/bind", {"sid": sid, "client_secret": secret, "mxid": mxid})

    def store_invite(self, address: str, room_id: str, sender: str, **extra: str) -> dict:
        body = {"medium": "email", "address": address, "room_id": room_id, "sender": sender}
        return self.post("/_matrix/identity/api/v1/store-invite", {**body, **extra})


def _wait_for_mail(smtp, before: int, timeout: float = 10):
    wait_until(lambda: len(smtp.messages) > before, timeout=timeout, interval=0.05,
               what="Sydent's mail")  # fmt: skip
    return smtp.messages[-1]


def _code(mail) -> str:
    match = re.search(r"Votre code : (\S+)", mail.text())
    assert match, mail.text()
    return match.group(1)


# -- replication between peers --------------------------------------------------------


def long_term_key(sydent: Sydent) -> str:
    """The peer's long-term public key (Sydent writes its key into its config)."""
    config = configparser.ConfigParser(interpolation=None)
    config.read(sydent.config_path)
    _, version, seed = config["crypto"]["ed25519.signingkey"].split()
    key = signedjson.key.decode_signing_key_base64("ed25519", version, seed)
    return signedjson.key.encode_verify_key_base64(key.verify_key)


def introduce(target: Sydent, peer: Sydent) -> None:
    """Configure `peer` as a replication peer of `target`: a row in `peers` and one in
    `peer_pubkeys` under the name the peer signs with (Sydent's README, "Intra-sydent
    replication")."""
    with sqlite3.connect(target.db_path) as conn:
        conn.execute(
            "INSERT INTO peers (name, port, active) VALUES (?, ?, 1)", (peer.server_name, 1)
        )
        conn.execute(
            "INSERT INTO peer_pubkeys (peername, alg, key) VALUES (?, 'ed25519', ?)",
            (peer.server_name, long_term_key(peer)),
        )


def replicate(source: Sydent, target: Sydent) -> None:
    """Write into `target`'s database (Sydent stopped) what a push from `source` stores.

    Associations as Sydent 2.6.1 stores a push (http/servlets/replication.py, then
    GlobalAssociationStore.addAssociation): the association signed by the source,
    verified with its key, hashed with the target's pepper, under the source's name
    and the source's local ID. Invitation tokens and ephemeral keys as Tchap's Sydent
    branch stores them (JoinTokenStore.storeToken / storeEphemeralPublicKey):
    `origin_server` / `origin_id` columns, the reception time as `received_ts`.
    Mainline 2.6.1 replicates neither; the two columns are added as Tchap's schema has.
    """
    verify_key = signedjson.key.decode_verify_key_bytes(
        "ed25519:0", signedjson.key.decode_base64(long_term_key(source))
    )
    for sydent in (source, target):
        _add_origin_columns(sydent.db_path)
    with sqlite3.connect(source.db_path) as conn:
        associations = conn.execute(
            "SELECT originId, sgAssoc FROM global_threepid_associations"
            " WHERE originServer = ? ORDER BY originId",
            (source.server_name,),
        ).fetchall()
        tokens = conn.execute(
            "SELECT id, medium, address, room_id, sender, token FROM invite_tokens"
            " WHERE origin_id IS NULL ORDER BY id"
        ).fetchall()
        ephemeral = conn.execute(
            "SELECT id, public_key, persistence_ts FROM ephemeral_public_keys"
            " WHERE origin_id IS NULL ORDER BY id"
        ).fetchall()
    now_s = int(time.time())
    with sqlite3.connect(target.db_path) as conn:
        (pepper,) = conn.execute("SELECT lookup_pepper FROM hashing_metadata").fetchone()
        for origin_id, raw in associations:
            signed = json.loads(raw)
            signedjson.sign.verify_signed_json(signed, source.server_name, verify_key)
            address = signed["address"].casefold()
            digest = hashlib.sha256(f"{address} {signed['medium']} {pepper}".encode()).digest()
            conn.execute(
                "insert or ignore into global_threepid_associations (medium, address,"
                " lookup_hash, mxid, ts, notBefore, notAfter, originServer, originId, sgAssoc)"
                " values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    signed["medium"],
                    address,
                    base64.urlsafe_b64encode(digest).rstrip(b"=").decode(),
                    signed["mxid"],
                    signed["ts"],
                    signed["not_before"],
                    signed["not_after"],
                    source.server_name,
                    origin_id,
                    json.dumps(signed),
                ),
            )
        (last,) = conn.execute(
            "SELECT coalesce(max(origin_id), 0) FROM invite_tokens WHERE origin_server = ?",
            (source.server_name,),
        ).fetchone()
        for origin_id, medium, address, room_id, sender, token in tokens:
            if origin_id > last:
                conn.execute(
                    "INSERT INTO invite_tokens ('medium', 'address', 'room_id', 'sender',"
                    " 'token', 'received_ts', 'origin_server', 'origin_id')"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (medium, address, room_id, sender, token, now_s, source.server_name, origin_id),
                )
        (last,) = conn.execute(
            "SELECT coalesce(max(origin_id), 0) FROM ephemeral_public_keys WHERE origin_server = ?",
            (source.server_name,),
        ).fetchone()
        for origin_id, key, persistence_ts in ephemeral:
            if origin_id > last:
                conn.execute(
                    "INSERT INTO ephemeral_public_keys"
                    " (public_key, persistence_ts, origin_server, origin_id)"
                    " VALUES (?, ?, ?, ?)",
                    (key, persistence_ts, source.server_name, origin_id),
                )


def _add_origin_columns(db_path: Path) -> None:
    with sqlite3.connect(db_path) as conn:
        for table in ("invite_tokens", "ephemeral_public_keys"):
            columns = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
            if "origin_server" not in columns:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN origin_server TEXT")
                conn.execute(f"ALTER TABLE {table} ADD COLUMN origin_id INTEGER")
