"""A real Synapse and our service under gunicorn, both with TLS on loopback.

Synapse is installed from PyPI into a virtual environment cached outside the repository
(`SYNAPSE_VENV`), reused as long as it imports the pinned version. A trustme CA signs the
certificates of Synapse's federation listener and of our service: we trust Synapse's
through FEDERATION_CA_FILE, Synapse (which calls identity servers over https only) runs
with its testing switch that skips certificate checks on outbound calls.
"""

import os
import secrets
import shutil
import sqlite3
import subprocess
import sys
import uuid
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests
import signedjson.key
import trustme
import yaml

from testing.processes import ServerProcess
from testing.processes import answers
from testing.servers import Gunicorn
from testing.servers import migrate

SYNAPSE_VERSION = "1.163.2"
CACHE_DIR = Path(os.environ.get("TCHAP_IDENTITY_CACHE", "~/.cache/tchap-identity")).expanduser()
SYNAPSE_VENV = CACHE_DIR / "synapse-venv"
ROOT = Path(__file__).resolve().parents[2]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
V1 = "/_matrix/identity/api/v1"
V2 = "/_matrix/identity/v2"
CLIENT = "/_matrix/client/v3"


def unavailable(reason: str) -> None:
    """Fail in CI, where the interop tests must run; skip with the reason elsewhere."""
    if IN_CI:
        pytest.fail(reason)
    pytest.skip(reason)


def ensure_synapse() -> Path:
    """The Python of a virtualenv where the pinned Synapse imports; install it when needed."""
    python = SYNAPSE_VENV / "bin" / "python"
    check = f"import synapse, sys; sys.exit(synapse.__version__ != {SYNAPSE_VERSION!r})"
    if python.exists() and _quiet([str(python), "-c", check]) == 0:
        return python
    shutil.rmtree(SYNAPSE_VENV, ignore_errors=True)
    SYNAPSE_VENV.parent.mkdir(parents=True, exist_ok=True)
    base_python = getattr(sys, "_base_executable", sys.executable)
    steps = [
        [base_python, "-m", "venv", str(SYNAPSE_VENV)],
        [str(python), "-m", "pip", "install", "-q", f"matrix-synapse=={SYNAPSE_VERSION}"],
    ]
    for step in steps:
        try:
            done = subprocess.run(step, capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as e:
            unavailable(f"cannot install Synapse {SYNAPSE_VERSION}: {e}")
        if done.returncode != 0:
            unavailable(
                f"cannot install Synapse {SYNAPSE_VERSION} ({' '.join(step[-2:])}):"
                f" {done.stderr[-2000:]}"
            )
    if _quiet([str(python), "-c", check]) != 0:
        unavailable(f"Synapse {SYNAPSE_VERSION} installed but does not import")
    return python


def _quiet(command: list[str]) -> int:
    return subprocess.run(command, capture_output=True, timeout=120).returncode


@dataclass
class Certificates:
    """A test CA, and one server certificate for `localhost` and `127.0.0.1` per service."""

    directory: Path
    ca_file: Path = field(init=False)

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._ca = trustme.CA()
        self.ca_file = self.directory / "ca.pem"
        self._ca.cert_pem.write_to_path(str(self.ca_file))

    def issue(self, name: str) -> tuple[Path, Path]:
        """(certificate chain, private key) files for a server named `name`."""
        leaf = self._ca.issue_cert("localhost", "127.0.0.1")
        cert, key = self.directory / f"{name}.crt", self.directory / f"{name}.key"
        for blob in leaf.cert_chain_pems:
            blob.write_to_path(str(cert), append=True)
        leaf.private_key_pem.write_to_path(str(key))
        return cert, key


# --- our service -------------------------------------------------------------------------


@dataclass
class IdentityServer:
    """Our service under gunicorn, with TLS, configured through IDENTITY_* variables."""

    directory: Path
    port: int
    certificates: Certificates
    smtp_host: str
    smtp_port: int
    domains_yaml: str
    secret: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    server: Gunicorn | None = None

    @property
    def host(self) -> str:
        """What homeservers are given as `id_server`: the host and port."""
        return f"localhost:{self.port}"

    @property
    def base(self) -> str:
        return f"https://{self.host}"

    @property
    def log_file(self) -> Path:
        return self.directory / "gunicorn.log"

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "IDENTITY_SQLALCHEMY_DATABASE_URI": f"sqlite:///{self.directory / 'identity.sqlite3'}",
            "IDENTITY_INSTANCE_PATH": str(self.directory),  # the server makes its signing key there
            "IDENTITY_PUBLIC_BASE_URL": self.base,
            "IDENTITY_MAIL_SERVER": self.smtp_host,
            "IDENTITY_MAIL_PORT": str(self.smtp_port),
            "IDENTITY_MAIL_DEFAULT_SENDER": "Tchap <noreply@tchap.test>",
            "IDENTITY_FEDERATION_CA_FILE": str(self.certificates.ca_file),
            "IDENTITY_FEDERATION_IP_ALLOWLIST": '["127.0.0.0/8"]',
            "IDENTITY_DELIVERY_WORKER_ENABLED": "true",
            "IDENTITY_DELIVERY_POLL_SECONDS": "1",
            "IDENTITY_DELIVERY_MAX_BACKOFF_SECONDS": "2",
            "IDENTITY_RATELIMIT_ENABLED": "false",
            "IDENTITY_INTERNAL_API_SECRET": self.secret,
            "IDENTITY_DOMAINS_PATH": str(self.directory / "domains.yaml"),
            "IDENTITY_LOG_LEVEL": "INFO",
        }

    def start(self) -> "IdentityServer":
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "domains.yaml").write_text(self.domains_yaml)
        cert, key = self.certificates.issue("identity")
        # Our own gunicorn settings, so that no gunicorn.conf.py of the working directory
        # applies: a plain access log, with the status after the request line.
        settings = self.directory / "gunicorn.interop.py"
        settings.write_text(
            "accesslog = '-'\n"
            "errorlog = '-'\n"
            'access_log_format = \'%(h)s "%(r)s" %(s)s %(b)s "%(a)s"\'\n'
        )
        migrate(self.env())  # once before the workers start, as a deployment does
        self.server = Gunicorn(
            self.env(),
            ("-c", str(settings), "-w", "2", "--threads", "4", "-b", f"127.0.0.1:{self.port}",
             "--certfile", str(cert), "--keyfile", str(key)),
            log=self.log_file, port=self.port, ca_file=str(self.certificates.ca_file),
            ready_status=200,
        )  # fmt: skip
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()

    def get(self, path: str, *, timeout: float = 15, **kwargs: Any) -> requests.Response:
        ca = str(self.certificates.ca_file)
        return requests.get(self.base + path, verify=ca, timeout=timeout, **kwargs)

    def post(self, path: str, *, timeout: float = 15, **kwargs: Any) -> requests.Response:
        ca = str(self.certificates.ca_file)
        return requests.post(self.base + path, verify=ca, timeout=timeout, **kwargs)

    def query(self, sql: str, *params: Any) -> list[tuple]:
        """Read our service's database (SQLite) directly."""
        with sqlite3.connect(self.directory / "identity.sqlite3") as conn:
            return conn.execute(sql, params).fetchall()

    def public_key(self) -> str:
        r = self.get(f"{V2}/pubkey/ed25519:0")
        assert r.status_code == 200, r.text
        return r.json()["public_key"]

    def register(self, openid: dict) -> str:
        """Register with an OpenID token from a homeserver; return our access token."""
        r = self.post(f"{V2}/account/register", json=openid)
        assert r.status_code == 200, r.text
        return r.json()["token"]


# --- Synapse -----------------------------------------------------------------------------


@dataclass(frozen=True)
class MatrixUser:
    user_id: str
    access_token: str

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}


@dataclass
class Synapse:
    """One Synapse process: a client listener (http) and a federation listener (TLS)."""

    python: Path
    directory: Path
    client_port: int
    federation_port: int
    certificates: Certificates
    smtp_host: str
    smtp_port: int
    identity_base: str
    identity_secret: str
    process: ServerProcess | None = None

    @property
    def server_name(self) -> str:
        # An explicit port: no .well-known or SRV lookups, a direct connection.
        return f"localhost:{self.federation_port}"

    @property
    def client_base(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def config_file(self) -> Path:
        return self.directory / "homeserver.yaml"

    @property
    def log_file(self) -> Path:
        return self.directory / "homeserver.log"

    def write_config(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        cert, key = self.certificates.issue("synapse")
        signing_key = self.directory / "signing.key"
        if not signing_key.exists():
            with signing_key.open("w") as f:
                signedjson.key.write_signing_keys(
                    f, [signedjson.key.generate_signing_key("a_" + secrets.token_hex(2))]
                )
        fast = {"per_second": 1000, "burst_count": 1000}
        config = {
            "server_name": self.server_name,
            "pid_file": str(self.directory / "homeserver.pid"),
            "public_baseurl": f"{self.client_base}/",
            "listeners": [
                {
                    "port": self.client_port,
                    "bind_addresses": ["127.0.0.1"],
                    "type": "http",
                    "tls": False,
                    "x_forwarded": False,
                    "resources": [{"names": ["client"], "compress": False}],
                },
                {
                    "port": self.federation_port,
                    "bind_addresses": ["127.0.0.1"],
                    "type": "http",
                    "tls": True,
                    "resources": [{"names": ["federation", "keys", "openid"], "compress": False}],
                },
            ],
            "tls_certificate_path": str(cert),
            "tls_private_key_path": str(key),
            "database": {
                "name": "sqlite3",
                "args": {"database": str(self.directory / "homeserver.db")},
            },
            "log_config": str(self.directory / "log.yaml"),
            "media_store_path": str(self.directory / "media"),
            "signing_key_path": str(signing_key),
            "macaroon_secret_key": secrets.token_urlsafe(32),
            "form_secret": secrets.token_urlsafe(32),
            "registration_shared_secret": secrets.token_urlsafe(32),
            "enable_registration": True,
            "enable_registration_without_verification": True,
            "report_stats": False,
            "suppress_key_server_warning": True,
            "trusted_key_servers": [],
            # Synapse calls identity servers over https only; it does not know our CA.
            "use_insecure_ssl_client_just_for_testing_do_not_use": True,
            # Our service and Synapse itself listen on loopback.
            "ip_range_whitelist": ["127.0.0.0/8", "::1/128"],
            "email": {
                "smtp_host": self.smtp_host,
                "smtp_port": self.smtp_port,
                "enable_tls": False,
                "require_transport_security": False,
                "notif_from": "Synapse <synapse@tchap.test>",
                "enable_notifs": False,
            },
            "rc_message": fast,
            "rc_registration": fast,
            "rc_login": {"address": fast, "account": fast, "failed_attempts": fast},
            "rc_joins": {"local": fast, "remote": fast},
            "rc_3pid_validation": fast,
            "rc_invites": {"per_room": fast, "per_user": fast, "per_issuer": fast},
            "rc_third_party_invite": fast,
            "modules": [
                {
                    "module": "tests.interop.tchap_gate.TchapGate",
                    "config": {
                        "identity_server": self.identity_base,
                        "secret": self.identity_secret,
                    },
                }
            ],
        }
        self.config_file.write_text(yaml.safe_dump(config))
        log_config = {
            "version": 1,
            "formatters": {"plain": {"format": "%(asctime)s %(name)s %(levelname)s %(message)s"}},
            "handlers": {
                "file": {
                    "class": "logging.FileHandler",
                    "formatter": "plain",
                    "filename": str(self.log_file),
                }
            },
            "root": {"level": "INFO", "handlers": ["file"]},
            "disable_existing_loggers": False,
        }
        (self.directory / "log.yaml").write_text(yaml.safe_dump(log_config))

    def start(self) -> "Synapse":
        if not self.config_file.exists():
            self.write_config()
        # The gate module is imported as tests.interop.tchap_gate: this directory itself cannot
        # go on the path, where this file would shadow the synapse package.
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.process = ServerProcess(
            [str(self.python), "-m", "synapse.app.homeserver", "-c", str(self.config_file)],
            cwd=self.directory,
            env=env,
            log=self.directory / "stdout.log",
            what="Synapse",
            also_show=[self.log_file],
        ).start(answers(f"{self.client_base}/_matrix/client/versions"), timeout=90, interval=0.3)
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    # --- the client-server API ---

    def request(
        self,
        method: str,
        path: str,
        user: MatrixUser | None = None,
        *,
        timeout: float = 30,
        **kwargs: Any,
    ) -> requests.Response:
        headers = {**kwargs.pop("headers", {}), **(user.auth() if user else {})}
        url = self.client_base + path
        return requests.request(method, url, headers=headers, timeout=timeout, **kwargs)

    def register(self, localpart: str | None = None, password: str = "interop-pass") -> MatrixUser:
        """Register a user through the dummy interactive-auth flow."""
        localpart = localpart or f"user{uuid.uuid4().hex[:10]}"
        body: dict[str, Any] = {"username": localpart, "password": password}
        r = self.request("POST", f"{CLIENT}/register", json=body)
        if r.status_code == 401:  # interactive auth: complete the dummy stage
            body["auth"] = {"type": "m.login.dummy", "session": r.json()["session"]}
            r = self.request("POST", f"{CLIENT}/register", json=body)
        assert r.status_code == 200, r.text
        return MatrixUser(r.json()["user_id"], r.json()["access_token"])

    def login(self, user_id: str, password: str = "interop-pass") -> MatrixUser:
        r = self.request(
            "POST",
            f"{CLIENT}/login",
            json={
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": user_id},
                "password": password,
            },
        )
        assert r.status_code == 200, r.text
        return MatrixUser(r.json()["user_id"], r.json()["access_token"])

    def create_room(self, user: MatrixUser, name: str = "Interop") -> str:
        r = self.request("POST", f"{CLIENT}/createRoom", user, json={"name": name})
        assert r.status_code == 200, r.text
        return r.json()["room_id"]

    def room_state(self, user: MatrixUser, room_id: str) -> list[dict]:
        r = self.request("GET", f"{CLIENT}/rooms/{quote(room_id)}/state", user)
        assert r.status_code == 200, r.text
        return r.json()

    def member_event(self, user: MatrixUser, room_id: str, member: str) -> dict | None:
        """The content of `member`'s m.room.member event as `user` sees it, if any."""
        r = self.request(
            "GET", f"{CLIENT}/rooms/{quote(room_id)}/state/m.room.member/{quote(member)}", user
        )
        if r.status_code == 404:
            return None
        assert r.status_code == 200, r.text
        return r.json()

    def membership(self, user: MatrixUser, room_id: str, member: str) -> str | None:
        """`member`'s membership in the room as `user` sees it, None when there is none."""
        event = self.member_event(user, room_id, member)
        return event.get("membership") if event else None

    def openid_token(self, user: MatrixUser) -> dict:
        """A fresh OpenID token, as the client-server API hands it out."""
        r = self.request(
            "POST", f"{CLIENT}/user/{quote(user.user_id)}/openid/request_token", user, json={}
        )
        assert r.status_code == 200, r.text
        return r.json()

    def invite_email(
        self, user: MatrixUser, room_id: str, address: str, id_server: str, id_access_token: str
    ) -> requests.Response:
        return self.request(
            "POST",
            f"{CLIENT}/rooms/{quote(room_id)}/invite",
            user,
            json={
                "id_server": id_server,
                "id_access_token": id_access_token,
                "medium": "email",
                "address": address,
            },
        )


def domains_yaml(synapse_server_name: str) -> str:
    """Routing for the tests: `*.example` guests go to the externals' platform on Synapse."""
    return yaml.safe_dump(
        {
            "platforms": {
                "externe": {"server": synapse_server_name, "requires_invite": True},
                "agents": {"server": "agent.tchap.example"},
            },
            "default": "externe",
            "domains": {".agent.example": "agents"},
        }
    )
