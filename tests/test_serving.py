"""gunicorn.conf.py: several workers, one /metrics, scrubbed JSON access log, graceful reload."""

import base64
import contextlib
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest
import requests

from testing.processes import ServerProcess
from testing.processes import answers
from testing.processes import free_port
from testing.processes import wait_until
from testing.servers import Gunicorn
from testing.servers import migrate
from testing.servers import service_env
from tests.conftest import POSTGRES_URL
from tests.helpers import V1
from tests.helpers import V2
from tests.helpers import auth
from tests.helpers import register_user

ROOT = Path(__file__).resolve().parent.parent
ISO_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


@pytest.fixture
def gunicorn(tmp_path):
    env = service_env(
        f"sqlite:///{tmp_path / 'db.sqlite3'}",
        tmp_path,
        WORKERS="2",
        THREADS="2",
        DELIVERY_WORKER_ENABLED="false",
        RATELIMIT_ENABLED="false",
        MAIL_SEVER="smtp.example.fr",  # a typo, warned about once
    )
    migrate(env)
    with (
        (tmp_path / "gunicorn.log").open("a+") as log,
        Gunicorn(env, ("-c", "gunicorn.conf.py"), log=log) as server,
    ):
        yield server, server.base, log


def test_workers_metrics_logs_and_reload(gunicorn):
    server, base, log = gunicorn
    # Scrapes first, as Prometheus may: a worker's first request writes nothing of the
    # master's warm-up answers (the master forks the workers before writing them).
    for _ in range(8):
        assert requests.get(f"{base}/metrics", timeout=5).status_code == 200
    address = "marie.dupont@ac-versailles.fr"
    for _ in range(20):
        r = requests.get(f"{base}/_matrix/identity/api/v1/info",
                         params={"medium": "email", "address": address}, timeout=5)  # fmt: skip
        assert r.status_code == 200
    requests.get(f"{base}/_matrix/identity/invitation/WzEsInNlY3JldCJd.x.y", timeout=5)

    # /metrics adds up every worker's counters, each written within a second.
    def answered() -> float:
        text = requests.get(f"{base}/metrics", timeout=5).text
        line = next(
            (line for line in text.splitlines()
             if line.startswith("identity_requests_total{")
             and 'endpoint="/_matrix/identity/api/v1/info"' in line and 'status="200"' in line),
            " 0",
        )  # fmt: skip
        return float(line.rsplit(" ", 1)[1])

    deadline = time.monotonic() + 5
    while answered() < 20 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert answered() == 20

    # A graceful reload (SIGHUP) keeps answering.
    server.signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        # New workers may take seconds to boot on a loaded machine: slow, never lost.
        assert requests.get(f"{base}/health", timeout=30).status_code == 200
        time.sleep(0.2)

    log.flush()
    log.seek(0)
    lines = log.read().splitlines()
    # One line, one JSON object, whoever wrote it (gunicorn, its access log, the app),
    # with one time format and numbers as numbers.
    records = [json.loads(line) for line in lines]
    assert all(ISO_TIME.fullmatch(r["time"]) for r in records), lines
    assert all(isinstance(r["pid"], int) for r in records)
    assert {"gunicorn.error", "gunicorn.access", "app"} <= {r["logger"] for r in records}
    access = [r for r in records if r["logger"] == "gunicorn.access"]
    assert all(isinstance(r[key], int) for r in access for key in ("status", "duration_ms"))
    assert len(access) >= 21
    assert all(entry["request_id"] not in ("", "-") for entry in access)
    whole = "\n".join(lines)
    assert whole.count("Unknown configuration key MAIL_SEVER") == 1
    assert "marie.dupont" not in whole and "WzEsInNlY3JldCJd" not in whole
    assert any(e["request"].startswith("GET /_matrix/identity/api/v1/info?… ") for e in access)


def test_refusals_are_matrix_errors_that_say_why(gunicorn):
    """404, 405 and 413 are written as every other Matrix error (compact, one line); a
    413 gives the limit, a refused internal call names the settings that let it in."""
    _, base, _ = gunicorn
    ours = requests.post(f"{base}{V1}/validate/email/requestToken", data="{", timeout=30)
    assert ours.status_code == 400 and ours.content.endswith(b'"}\n')
    answers = {
        404: requests.get(f"{base}/_matrix/identity/v2/nowhere", timeout=30),
        405: requests.delete(f"{base}/_matrix/identity/v2", timeout=30),
        413: requests.post(f"{base}{V1}/validate/email/requestToken", timeout=30,
                           data=b"{" + b" " * 70_000, headers={"Content-Type": "application/json"}),
        403: requests.get(f"{base}{V1}/internal-info",
                          params={"medium": "email", "address": "a@b.fr"}, timeout=30),
    }  # fmt: skip
    for status, r in answers.items():
        assert r.status_code == status
        assert r.headers["Content-Type"] == ours.headers["Content-Type"]
        assert r.content == json.dumps(r.json(), separators=(",", ":")).encode() + b"\n"
    assert answers[405].headers["Allow"]
    assert answers[413].json() == {
        "errcode": "M_TOO_LARGE", "error": "Request too large: at most 65536 bytes here"
    }  # fmt: skip
    forbidden = answers[403].json()["error"]
    assert "INTERNAL_API_TRUSTED_NETWORKS" in forbidden and "INTERNAL_API_SECRET" in forbidden


def _gunicorn_env(tmp_path, database_url: str, **extra: str) -> dict[str, str]:
    return service_env(
        database_url,
        tmp_path,
        DELIVERY_WORKER_ENABLED="false",
        RATELIMIT_ENABLED="false",
        MAIL_PRINT_TO_LOG="true",
        **extra,
    )


def _fresh_postgres_database():
    """A new, empty PostgreSQL database: (its URL, a function that drops it)."""
    admin_url = POSTGRES_URL.replace("postgresql+psycopg://", "postgresql://")
    name = f"identity_cold_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=3) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')

    return POSTGRES_URL.rsplit("/", 1)[0] + "/" + name, drop


def complete_lines(text: str) -> list[str]:
    """The lines of a log still being written: the last one may be half written."""
    lines = text.splitlines(keepends=True)
    return [line for line in lines if line.endswith("\n")]


def _lookup(base: str) -> int:
    params = {"medium": "email", "address": "a@b.fr"}
    url = f"{base}/_matrix/identity/api/v1/lookup"
    return requests.get(url, params=params, timeout=30).status_code


@pytest.mark.parametrize("engine", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_cold_starts_migrate_once_and_every_worker_serves(tmp_path, engine):
    """Four workers on a new database, three times in a row: the schema is migrated
    once, before any worker starts, the signing key is created once, and every worker
    boots and answers."""
    for attempt in range(3):
        here = tmp_path / str(attempt)
        here.mkdir()
        if engine == "sqlite":
            url, drop = f"sqlite:///{here / 'db.sqlite3'}", None
        else:
            url, drop = _fresh_postgres_database()
        env = _gunicorn_env(here, url, WORKERS="4", THREADS="1",
                            AUTO_MIGRATE="true")  # fmt: skip
        try:
            with (here / "gunicorn.log").open("a+") as log:
                server = Gunicorn(env, ("-c", "gunicorn.conf.py"), log=log)
                try:
                    assert (here / "signing.key").exists()  # before any request needed it
                    deadline = time.monotonic() + 30
                    pids: set[str] = set()
                    while len(pids) < 4 and time.monotonic() < deadline:
                        # Concurrent lookups (each reads the tables) reach every worker.
                        with ThreadPoolExecutor(max_workers=8) as pool:
                            answers = list(pool.map(_lookup, [server.base] * 16))
                        assert all(status == 200 for status in answers)
                        log.flush()
                        log.seek(0)
                        pids = {
                            record["pid"] for record in map(json.loads, complete_lines(log.read()))
                            if record["logger"] == "gunicorn.access"
                            and "/lookup?" in record["request"]
                        }  # fmt: skip
                    assert server.process.poll() is None
                finally:
                    server.stop()
                log.seek(0)
                text = log.read()
        finally:
            if drop is not None:
                drop()
        booted = text.count("Booting worker with pid")
        assert booted == 4, text
        assert "Worker failed to boot" not in text and "already exists" not in text, text
        assert "Exception in worker process" not in text, text
        assert text.count("Running upgrade  -> 0001") == 1, text
        assert text.count("Generated a new signing key") == 1, text
        assert len(pids) == 4, f"only {len(pids)} of 4 workers answered"


# -- The app built in the master: workers share it, SIGHUP loads new code -----------------

_RELOADABLE = """
def create_app():
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [{body!r}]
    return app
"""


def _text(log) -> str:
    """All of a log that a server process writes to (at its own offset)."""
    log.flush()
    log.seek(0)
    return log.read()


def test_a_reload_serves_new_code_and_refuses_a_version_that_cannot_load(tmp_path):
    """The master builds the app before forking (shared memory) yet SIGHUP loads the code
    on disk again; code that fails to load is refused and the running version serves on."""
    module = tmp_path / "reloadable.py"
    module.write_text(_RELOADABLE.format(body=b"version 1"))
    env = {**_gunicorn_env(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite3'}", WORKERS="2"),
           "PYTHONDONTWRITEBYTECODE": "1"}  # fmt: skip
    options = ("-c", str(ROOT / "gunicorn.conf.py"), "--chdir", str(tmp_path))
    with (tmp_path / "gunicorn.log").open("a+") as log:
        server = Gunicorn(env, options, log=log, app="reloadable:create_app()", ready_path="/")

        def serves(body: bytes) -> None:
            deadline = time.monotonic() + 60
            while requests.get(server.base, timeout=30).content != body:
                assert time.monotonic() < deadline and server.process.poll() is None
                time.sleep(0.2)

        try:
            serves(b"version 1")
            module.write_text(_RELOADABLE.format(body=b"version two"))
            server.signal(signal.SIGHUP)
            serves(b"version two")
            module.write_text("def create_app(:\n")  # a syntax error
            server.signal(signal.SIGHUP)
            deadline = time.monotonic() + 60
            while "Reload refused" not in _text(log):
                assert time.monotonic() < deadline and server.process.poll() is None
                time.sleep(0.2)
            for _ in range(10):
                assert requests.get(server.base, timeout=30).content == b"version two"
            module.write_text(_RELOADABLE.format(body=b"version three"))
            server.signal(signal.SIGHUP)
            serves(b"version three")
        finally:
            server.stop()


def test_workers_build_the_app_themselves_if_the_master_cannot(tmp_path):
    """The master's build failing where its child's succeeded (a file changed between
    the two?) costs memory, not the service: each worker builds the app itself."""
    (tmp_path / "reloadable.py").write_text(
        "import os\n"
        f"if os.getppid() == {os.getpid()}:  # gunicorn's master, not its children\n"
        "    raise RuntimeError('the master fails')\n"
        + _RELOADABLE.format(body=b"built by a worker")
    )
    env = _gunicorn_env(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite3'}", WORKERS="2")
    options = ("-c", str(ROOT / "gunicorn.conf.py"), "--chdir", str(tmp_path))
    with (tmp_path / "gunicorn.log").open("a+") as log:
        server = Gunicorn(env, options, log=log, app="reloadable:create_app()", ready_path="/")
        try:
            assert requests.get(server.base, timeout=30).content == b"built by a worker"
        finally:
            server.stop()
        text = _text(log)
    assert "the master fails" in text and "Each worker builds the app itself" in text


_REPORTING_CONFIG = """
import os, sys
path = {config!r}
exec(compile(open(path).read(), path, "exec"))
_built_in = post_worker_init


def post_worker_init(worker):
    _built_in(worker)
    path = os.path.join({directory!r}, f"{{os.getpid()}}.modules")
    with open(path + ".part", "w") as out:
        out.write("\\n".join(sys.modules))
    os.replace(path + ".part", path)  # whole when it appears
"""


def _established_tcp(pid: int) -> list[str]:
    """The remote ends (hex address:port) of `pid`'s established TCP connections."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    remotes = []
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "01" and fields[9] in inodes:  # 01: ESTABLISHED
                remotes.append(fields[2])
    return remotes


@pytest.mark.postgres
def test_workers_fork_with_the_app_but_no_connection_and_no_alembic(
    tmp_path, postgres_database, redis_url
):
    """What the master builds and answers before forking leaves no connection open in it
    (workers would share it); a worker imports no Alembic, and SIGHUP makes it reload its
    rules instead of killing it (docs/domains.md)."""
    env = service_env(postgres_database, tmp_path, WORKERS="2", AUTO_MIGRATE="true",
                      DELIVERY_WORKER_ENABLED="true", MAIL_PRINT_TO_LOG="true",
                      RATELIMIT_STORAGE_URI=redis_url)  # fmt: skip
    config = tmp_path / "reporting.conf.py"
    config.write_text(_REPORTING_CONFIG.format(config=str(ROOT / "gunicorn.conf.py"),
                                               directory=str(tmp_path)))  # fmt: skip
    with (tmp_path / "gunicorn.log").open("a+") as log:
        server = Gunicorn(env, ("-c", str(config)), log=log)
        try:
            for _ in range(10):
                assert _lookup(server.base) == 200
            assert _established_tcp(server.pid) == []
            workers = server.workers()
            for pid in workers:
                # Written by the worker once it is up: the master may list it before.
                path = tmp_path / f"{pid}.modules"
                wait_until(path.exists, timeout=15, interval=0.05, what=f"{path.name}")
                modules = path.read_text().split()
                assert "identity.api" in modules and "app" in modules
                assert not [m for m in modules if m.split(".")[0] in ("alembic", "mako")]
                os.kill(pid, signal.SIGHUP)
            time.sleep(1)
            assert server.workers() == workers
            assert _lookup(server.base) == 200
        finally:
            server.stop()


# -- Request sizes: the body limit fits the lookups' documented maxima ---------------------


def _hashes(count: int) -> list[str]:
    return [
        base64.urlsafe_b64encode(hashlib.sha256(str(i).encode()).digest()).rstrip(b"=").decode()
        for i in range(count)
    ]


def _threepids(count: int) -> list[list[str]]:
    # Long, realistic addresses: the limit must not depend on them being short.
    return [
        ["email", f"prenom-compose.nom-de-famille-{i:05}@direction-regionale.interieur.gouv.fr"]
        for i in range(count)
    ]


def test_a_v2_lookup_at_its_documented_maximum(app, client, fake_homeserver):
    maximum = app.config["LOOKUP_MAX_ADDRESSES"]
    assert maximum == 10_000
    headers = auth(register_user(client, fake_homeserver))
    pepper = client.get(f"{V2}/hash_details", headers=headers).json["lookup_pepper"]
    body = {"algorithm": "sha256", "pepper": pepper, "addresses": _hashes(maximum)}
    r = client.post(f"{V2}/lookup", json=body, headers=headers)
    assert r.status_code == 200, r.json
    assert r.json == {"mappings": {}}
    body["addresses"] = _hashes(maximum + 1)
    r = client.post(f"{V2}/lookup", json=body, headers=headers)
    assert (r.status_code, r.json["errcode"]) == (413, "M_TOO_LARGE")


def test_a_bulk_lookup_at_its_documented_maximum(app, client):
    maximum = app.config["BULK_LOOKUP_MAX_THREEPIDS"]
    assert maximum == 10_000
    r = client.post(f"{V1}/bulk_lookup", json={"threepids": _threepids(maximum)})
    assert r.status_code == 200, r.json
    assert r.json == {"threepids": []}
    r = client.post(f"{V1}/bulk_lookup", json={"threepids": _threepids(maximum + 1)})
    assert (r.status_code, r.json["errcode"]) == (413, "M_TOO_LARGE")


def test_bodies_beyond_the_limits_get_a_matrix_error(app, client):
    # Far beyond what a lookup may carry, and beyond MAX_REQUEST_BYTES elsewhere.
    huge = {"threepids": [["email", "x" * 1000 + "@example.fr"]] * 5000}
    r = client.post(f"{V1}/bulk_lookup", json=huge)
    assert (r.status_code, r.json["errcode"]) == (413, "M_TOO_LARGE")
    padding = "x" * app.config["MAX_REQUEST_BYTES"]
    r = client.post(f"{V1}/validate/email/requestToken",
                    json={"client_secret": "s", "email": "a@b.fr", "send_attempt": 1,
                          "padding": padding})  # fmt: skip
    assert (r.status_code, r.json["errcode"]) == (413, "M_TOO_LARGE")


def test_the_readme_first_command_prints_mails_and_creates_the_key_at_start(tmp_path):
    """`flask --app app run` with no mail server: the embedded mode prints mails (only
    gunicorn refuses to), and the signing key exists before any request needs it."""
    port = free_port()
    env = {
        **{name: value for name, value in os.environ.items() if not name.startswith("IDENTITY_")},
        "IDENTITY_SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        # The embedded mode's key, in the instance folder: its first start creates it.
        "IDENTITY_INSTANCE_PATH": str(tmp_path),
        "IDENTITY_DELIVERY_WORKER_ENABLED": "false",
    }
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "flask.log"
    command = [sys.executable, "-m", "flask", "--app", "app", "run", "--port", str(port)]
    ready = answers(f"{base}/_matrix/identity/versions", status=None, timeout=5)
    with ServerProcess(command, cwd=ROOT, env=env, log=log, what="flask run").start(ready):
        assert (tmp_path / "signing.key").exists()
        body = {"client_secret": "s3cret", "email": "agent@interieur.gouv.fr", "send_attempt": 1}
        r = requests.post(f"{base}{V1}/validate/email/requestToken", json=body, timeout=30)
        assert r.status_code == 200, r.text
        # The mail, summed up in one JSON line (stderr is no terminal here): the
        # recipient masked as in every line, the subject, the code, the link to follow.
        output = log.read_text()
        [mail] = [json.loads(line) for line in output.splitlines() if '"identity.mailer"' in line]
        assert "MAIL_SERVER is not set" in mail["message"]
        assert "a…@interieur.gouv.fr" in mail["message"] and "agent@" not in output
        assert "Content-Type" not in output
        assert re.fullmatch(r"[A-Z0-9]{4}-[A-Z0-9]{4}", mail["mail_code"])
        assert mail["mail_code"] in mail["mail_subject"]
        [link] = mail["mail_links"]
        assert "client_secret=s3cret" in link and f"sid={r.json()['sid']}" in link
        followed = requests.get(link.replace("http://localhost:5000", base), timeout=30)
        assert followed.status_code == 200
        _the_readme_v2_tour(env, base, log)
    assert "Generated a new signing key" in output


def _the_readme_v2_tour(env: dict[str, str], base: str, log: Path) -> None:
    """README's "Trying the v2 API", as written, on the shipped domains.yaml."""

    def flask_token(user_id: str) -> str:
        command = [str(ROOT / ".venv" / "bin" / "flask"), "--app", "app", "accounts", "token",
                   user_id]  # fmt: skip
        if not os.path.exists(command[0]):  # a suite run by another interpreter
            command[:1] = [sys.executable, "-m", "flask"]
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                              check=True, timeout=120)  # fmt: skip
        return done.stdout.strip()

    readme = (ROOT / "README.md").read_text()
    written = ("accounts token @you:agent.dinum.tchap.gouv.fr",
               '"email": "you@numerique.gouv.fr"', '"mxid": "@you:agent.dinum.tchap.gouv.fr"',
               )  # fmt: skip
    for text in written:
        assert text in readme
    v2 = f"{base}/_matrix/identity/v2"
    auth = {"Authorization": f"Bearer {flask_token('@you:agent.dinum.tchap.gouv.fr')}"}
    body = {"client_secret": "try-it", "email": "you@numerique.gouv.fr", "send_attempt": 1}
    sid = requests.post(f"{v2}/validate/email/requestToken", json=body, headers=auth,
                        timeout=30).json()["sid"]  # fmt: skip
    [code] = [json.loads(line)["mail_code"] for line in log.read_text().splitlines()
              if "y…@numerique.gouv.fr" in line]  # fmt: skip
    body = {"client_secret": "try-it", "sid": sid, "token": code}
    r = requests.post(f"{v2}/validate/email/submitToken", json=body, headers=auth, timeout=30)
    assert r.json() == {"success": True}
    body = {"client_secret": "try-it", "sid": sid, "mxid": "@you:agent.dinum.tchap.gouv.fr"}
    r = requests.post(f"{v2}/3pid/bind", json=body, headers=auth, timeout=30)
    assert r.status_code == 200 and r.json()["mxid"] == body["mxid"], r.text
    # The old example's Matrix ID: refused, and the answer names the setting.
    other = {"Authorization": f"Bearer {flask_token('@you:example.org')}"}
    body = {**body, "mxid": "@you:example.org"}
    r = requests.post(f"{v2}/3pid/bind", json=body, headers=other, timeout=30)
    assert r.json()["errcode"] == "M_BINDING_NOT_PERMITTED"
    assert "RESTRICT_BINDS_TO_ROUTING" in r.json()["error"]


def test_new_workers_start_on_the_last_good_rules_after_a_broken_edit(tmp_path):
    """A broken domains.yaml refused by the running workers must not stop the next
    ones (a graceful reload, a worker recycled after max_requests): they start on the
    last good rules, and /health keeps saying why the file is refused."""
    domains = tmp_path / "domains.yaml"
    domains.write_text((ROOT / "domains.yaml").read_text())
    env = _gunicorn_env(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite3'}",
                        DOMAINS_PATH=str(domains), WORKERS="2",
                        THREADS="2")  # fmt: skip
    migrate(env)
    info = {"medium": "email", "address": "marie.dupont@ac-versailles.fr"}
    with (tmp_path / "gunicorn.log").open("a+") as log:
        server = Gunicorn(env, ("-c", "gunicorn.conf.py"), log=log)
        try:
            before = requests.get(f"{server.base}{V1}/info", params=info, timeout=30).json()
            domains.write_text("platforms: [unclosed\n")
            server.signal(signal.SIGHUP)
            deadline = time.monotonic() + 60
            while True:
                log.flush()
                log.seek(0)
                if log.read().count("Booting worker with pid") >= 4:
                    break
                assert time.monotonic() < deadline and server.process.poll() is None
                time.sleep(0.2)
            for _ in range(10):
                r = requests.get(f"{server.base}{V1}/info", params=info, timeout=30)
                assert r.json() == before
            health = requests.get(f"{server.base}/health", timeout=30).json()
            assert health["domains"]["ok"] is False and health["domains"]["rules"] > 0
            assert server.process.poll() is None
        finally:
            server.stop()
        log.seek(0)
        assert "Worker failed to boot" not in log.read()
