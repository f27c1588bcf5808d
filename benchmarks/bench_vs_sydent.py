"""Our service against Sydent 2.6.1: same machine, same data, same load generator (wrk).

    .venv/bin/python benchmarks/bench_vs_sydent.py            # 100,000 and 1,000,000 bindings
    .venv/bin/python benchmarks/bench_vs_sydent.py --quick    # 10,000 bindings, shorter runs

Needs wrk (apt-get install wrk), the PostgreSQL server at 127.0.0.1:5432 (user postgres,
trust auth) and network access to PyPI the first time (Sydent is installed into its own
cached virtualenv, as the interop tests do: testing/sydent.py).

For each data size the same bindings (addresses, Matrix IDs, pepper) are written with
bulk SQL into three stores: our schema on PostgreSQL, our schema on SQLite, Sydent's
SQLite. Our service runs under gunicorn with gunicorn.conf.py (production settings, only
the worker class and counts overridden), Sydent as `python -m sydent.sydent`. Both send
mail to an SMTP sink started here. Every temporary database, file and process is removed
at the end.

Writes its section of docs/performance.md (between the sydent markers) and prints it.

    .venv/bin/python benchmarks/bench_vs_sydent.py --only bulk_lookup --sizes 100000 --rounds 3

compares only the named lookup workloads, the three servers running side by side and
taking turns, `--rounds` times; it prints each round and the median ratios, and writes
nothing (the section needs every measure).

    .venv/bin/python benchmarks/bench_vs_sydent.py --plans    # about a minute, no Sydent

measures only the PostgreSQL planning and execution of the lookup statements (our schema
at the largest size, 1,000,000 bindings by default) and rewrites that table alone in the
section, dated, the rest of the section as it was.
"""

import argparse
import configparser
import contextlib
import json
import math
import os
import platform
import random
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC
from datetime import datetime
from pathlib import Path
from urllib.parse import quote

import psycopg
from docs_section import REPORT
from docs_section import markers
from docs_section import write_section
from sqlalchemy.dialects.postgresql.psycopg import dialect as psycopg_dialect

from identity.accounts import token_hash
from identity.lookup import lookup_hash
from identity.storage.associations import _BOUND_TO  # the statements, to plan them as sent
from identity.storage.associations import _BY_HASH
from testing.servers import Gunicorn
from testing.servers import migrate
from testing.smtp import SmtpSink
from testing.sydent import SYDENT_VERSION
from testing.sydent import Sydent
from testing.sydent import ensure_venv

HERE = Path(__file__).resolve().parent
START, END, _ = markers("sydent")
PG = "postgresql://postgres@127.0.0.1:5432"
CORES = os.cpu_count() or 2

# The same pepper, token, user and addresses in both services.
PEPPER = "benchPepper42"
TOKEN = "benchAccessTokenForBothServices0123456789"  # noqa: S105 (a test token)
USER = "@bench:agent.tchap.gouv.fr"
DOMAINS = (
    "interieur.gouv.fr", "ac-versailles.fr", "finances.gouv.fr", "justice.fr",
    "dinum.fr", "culture.gouv.fr", "sante.gouv.fr", "agriculture.gouv.fr",
)  # fmt: skip
SYDENT_NAME = "sydent.test"
CREATED_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z
NOT_AFTER_MS = CREATED_MS + 100 * 365 * 86_400_000  # Sydent's 100 years
CREATED_SQL = "2024-01-01 00:00:00.000000"
NOT_AFTER_SQL = "2123-12-08 00:00:00.000000"

BATCH = 1_000  # addresses per lookup request
BODIES = 24  # different request bodies, taken in turn
LOOKUP_CONNECTIONS = 8
LIGHT_CONNECTIONS = 16

V1 = "/_matrix/identity/api/v1"
V2 = "/_matrix/identity/v2"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- data ------------------------------------------------------------------------------


def address(i: int) -> str:
    return f"agent{i}@{DOMAINS[i % len(DOMAINS)]}"


def mxid(i: int) -> str:
    return f"@agent{i}-{DOMAINS[i % len(DOMAINS)].replace('.', '-')}:agent.tchap.gouv.fr"


def bindings(count: int) -> Iterator[tuple[int, str, str, str]]:
    """(id, address, lookup hash, mxid) of every stored binding."""
    for i in range(count):
        yield i + 1, address(i), lookup_hash("email", address(i), PEPPER), mxid(i)


def fill_postgres(database: str, count: int) -> None:
    with psycopg.connect(f"{PG}/{database}", autocommit=True) as conn:
        columns = "id, medium, address, lookup_hash, mxid, created_at, not_before, not_after"
        with conn.cursor() as cur:
            with cur.copy(f"COPY association ({columns}) FROM STDIN") as copy:
                for row_id, addr, digest, user in bindings(count):
                    copy.write_row(
                        (row_id, "email", addr, digest, user, "2024-01-01 00:00:00+00",
                         "2024-01-01 00:00:00+00", "2123-12-08 00:00:00+00")
                    )  # fmt: skip
            cur.execute("SELECT setval(pg_get_serial_sequence('association', 'id'), %s)", (count,))
            _our_metadata(cur, "%s", "2024-01-01 00:00:00+00")
            cur.execute("VACUUM ANALYZE")


def fill_our_sqlite(path: Path, count: int) -> None:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA synchronous = OFF")
    with conn:
        conn.executemany(
            "INSERT INTO association (id, medium, address, lookup_hash, mxid, created_at,"
            " not_before, not_after) VALUES (?, 'email', ?, ?, ?, ?, ?, ?)",
            (
                (row_id, addr, digest, user, CREATED_SQL, CREATED_SQL, NOT_AFTER_SQL)
                for row_id, addr, digest, user in bindings(count)
            ),
        )
        _our_metadata(conn, "?", CREATED_SQL)
    conn.close()


OUR_METADATA = (
    "INSERT INTO pepper (value, created_at, slot, activated_at) VALUES (?, ?, 0, ?)",
    "INSERT INTO account (user_id, created_at) VALUES (?, ?)",
    "INSERT INTO access_token (token_hash, user_id, created_at) VALUES (?, ?, ?)",
)


def _our_metadata(cur, mark: str, created: str) -> None:
    """Pepper, account and access token (stored as its SHA-256) of our schema."""
    values = ((PEPPER, created, created), (USER, created), (token_hash(TOKEN), USER, created))
    for statement, row in zip(OUR_METADATA, values, strict=True):
        cur.execute(statement.replace("?", mark), row)


def fill_sydent(path: Path, count: int) -> None:
    """Sydent's global associations (what its lookups read), with the signed association
    it keeps beside each row, its pepper, and an account with a plain access token."""
    signature = "A" * 86  # the length of an ed25519 signature; lookups never verify it
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA synchronous = OFF")
    with conn:
        rows = (
            (
                addr, digest, user, CREATED_MS, CREATED_MS, NOT_AFTER_MS, SYDENT_NAME, row_id,
                json.dumps({
                    "address": addr, "medium": "email", "mxid": user,
                    "not_after": NOT_AFTER_MS, "not_before": CREATED_MS, "ts": CREATED_MS,
                    "signatures": {SYDENT_NAME: {"ed25519:0": signature}},
                }, separators=(",", ":")),
            )
            for row_id, addr, digest, user in bindings(count)
        )  # fmt: skip
        conn.executemany(
            "INSERT INTO global_threepid_associations (medium, address, lookup_hash, mxid, ts,"
            " notBefore, notAfter, originServer, originId, sgAssoc)"
            " VALUES ('email', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        conn.execute("DELETE FROM hashing_metadata")
        conn.execute("INSERT INTO hashing_metadata (id, lookup_pepper) VALUES (1, ?)", (PEPPER,))
        conn.execute("INSERT INTO accounts (user_id, created_ts) VALUES (?, ?)", (USER, CREATED_MS))
        conn.execute("INSERT INTO tokens (token, user_id) VALUES (?, ?)", (TOKEN, USER))
    conn.close()


def write_requests(tmp: Path, count: int) -> dict[str, Path]:
    """Request bodies and paths, shared by both services: half of each batch is bound."""
    rng = random.Random(count)
    half = BATCH // 2
    files = {name: tmp / f"{name}.txt" for name in ("lookup_v2", "bulk_lookup", "lookup_v1")}
    with files["lookup_v2"].open("w") as v2, files["bulk_lookup"].open("w") as bulk:
        for _ in range(BODIES):
            picked = rng.sample(range(count), half)
            unbound = rng.randrange(10**8)
            picked += list(range(count + unbound, count + unbound + half))
            rng.shuffle(picked)
            hashes = [lookup_hash("email", address(i), PEPPER) for i in picked]
            body = {"addresses": hashes, "algorithm": "sha256", "pepper": PEPPER}
            v2.write(json.dumps(body) + "\n")
            bulk.write(json.dumps({"threepids": [["email", address(i)] for i in picked]}) + "\n")
    with files["lookup_v1"].open("w") as v1:
        for n in range(2_000):
            i = rng.randrange(count) if n % 2 else count + rng.randrange(10**8)
            v1.write(f"{V1}/lookup?medium=email&address={quote(address(i))}\n")
    files["hash_details"] = tmp / "hash_details.txt"
    files["hash_details"].write_text(f"{V2}/hash_details\n")
    return files


# -- servers ---------------------------------------------------------------------------


def our_env(tmp: Path, database_uri: str, sink: SmtpSink) -> dict[str, str]:
    return {
        **os.environ,
        "IDENTITY_SQLALCHEMY_DATABASE_URI": database_uri,
        "IDENTITY_INSTANCE_PATH": str(tmp),  # the server makes its signing key there
        "IDENTITY_AUTO_MIGRATE": "false",
        "IDENTITY_RATELIMIT_ENABLED": "false",
        "IDENTITY_DELIVERY_WORKER_ENABLED": "false",
        "IDENTITY_MAIL_SERVER": "127.0.0.1",
        "IDENTITY_MAIL_PORT": str(sink.port),
    }


class Ours:
    """Our service under gunicorn with gunicorn.conf.py."""

    def __init__(self, env: dict[str, str], tmp: Path, worker: str) -> None:
        self.env, self.tmp, self.worker = env, tmp, worker
        self.gunicorn: Gunicorn | None = None

    @property
    def base(self) -> str:
        assert self.gunicorn is not None
        return self.gunicorn.base

    def start(self) -> "Ours":
        workers, threads = {"sync": (CORES, 1), "gthread": (CORES + 1, 4)}.get(
            self.worker, (CORES, 1)
        )
        options = ("-c", "gunicorn.conf.py", "-k", self.worker, "-w", str(workers),
                   "--threads", str(threads))  # fmt: skip
        self.gunicorn = Gunicorn(self.env, options, log=self.tmp / "gunicorn.log")
        return self

    def pids(self) -> list[int]:
        """The worker processes."""
        assert self.gunicorn is not None
        return self.gunicorn.workers()

    def stop(self) -> None:
        if self.gunicorn is not None:
            self.gunicorn.stop(timeout=40)
        self.gunicorn = None


class SydentServer:
    """Sydent 2.6.1 on its SQLite database, one process (Twisted)."""

    def __init__(self, python: Path, workdir: Path, sink: SmtpSink) -> None:
        self.sydent = Sydent(python, workdir, "127.0.0.1", sink.port, server_name=SYDENT_NAME)

    @property
    def base(self) -> str:
        return self.sydent.base_url

    def start(self) -> "SydentServer":
        if not self.sydent.config_path.exists():
            self.sydent.workdir.mkdir(parents=True, exist_ok=True)
            self.sydent.write_config()
            # Sydent limits requestToken per client IP (5 then one per 5 minutes): off, as
            # our limits are, so that both send every mail asked for.
            config = configparser.ConfigParser(interpolation=None)
            config.read(self.sydent.config_path)
            config["email"]["email.ratelimit_sender.burst"] = "1000000000"
            config["email"]["email.ratelimit_sender.rate_hz"] = "1000000"
            with self.sydent.config_path.open("w") as f:
                config.write(f)
        self.sydent.start(timeout=120)
        return self

    def pids(self) -> list[int]:
        assert self.sydent.process is not None
        return [self.sydent.process.pid]

    def stop(self) -> None:
        self.sydent.stop()


def call(base: str, path: str, body: dict | None = None, token: str | None = None) -> dict:
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base + path, data=data, headers=headers)
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def check_answers(base: str, files: dict[str, Path], count: int) -> None:
    """Both services must give the same answers to the benchmark's requests."""
    body = json.loads(files["lookup_v2"].read_text().splitlines()[0])
    found = call(base, f"{V2}/lookup", body, TOKEN)["mappings"]
    assert len(found) == BATCH // 2, (base, len(found))
    body = json.loads(files["bulk_lookup"].read_text().splitlines()[0])
    found = call(base, f"{V1}/bulk_lookup", body)["threepids"]
    assert len(found) == BATCH // 2, (base, len(found))
    pepper = call(base, f"{V2}/hash_details", token=TOKEN)["lookup_pepper"]
    assert pepper == PEPPER, (base, pepper)
    answer = call(base, f"{V1}/lookup?medium=email&address={quote(address(count - 1))}")
    assert answer.get("mxid") == mxid(count - 1), (base, answer)


def plan_times(database: str, count: int) -> dict[str, dict[str, float]]:
    """PostgreSQL's planning and execution times of each lookup statement, as our storage
    layer sends them (identity/storage/associations.py), with half the addresses bound;
    then two shapes for comparison, not our code."""
    rng = random.Random(0)
    picked = rng.sample(range(count), 500) + list(range(count + 1, count + 501))
    addresses = [address(i) for i in picked]
    hashes = [lookup_hash("email", address(i), PEPPER) for i in picked]
    bulk = _BOUND_TO["postgresql"].compile(dialect=psycopg_dialect())
    by_hash = _BY_HASH["postgresql", 0].compile(dialect=psycopg_dialect())
    now = datetime.now(UTC)
    values = {"medium": "email", "addresses": json.dumps(addresses), "now": now}
    in_list = ", ".join(["%s"] * 500)
    queries = {
        "bulk_lookup: one probe per address (LATERAL … LIMIT 1), 1,000 addresses": (
            str(bulk),
            bulk.construct_params(values),
        ),
        "v2 lookup: one probe per hash and spelling (LATERAL … LIMIT 1), 1,000 hashes": (
            str(by_hash),
            by_hash.construct_params({"hashes": json.dumps(hashes), "now": now}),
        ),
        "for comparison, v2 lookup until 2026-12: lookup_hash IN (500 hashes),"
        " one of its two statements": (
            f"SELECT lookup_hash, mxid FROM association WHERE lookup_hash IN ({in_list})"  # noqa: S608
            " AND not_after > %s",
            [*hashes[::2], now],
        ),
        "for comparison, bulk_lookup until 2026-11: address IN (500 addresses),"
        " one of its two statements": (
            "SELECT * FROM association WHERE medium = 'email'"  # noqa: S608
            f" AND address IN ({in_list}) AND not_after > %s",
            [*addresses[::2], now],
        ),
        "for comparison: address = ANY(1,000 addresses)": (
            "SELECT * FROM association WHERE medium = 'email' AND address = ANY(%s)"
            " AND not_after > %s",
            [addresses, now],
        ),
    }
    times = {}
    with psycopg.connect(f"{PG}/{database}") as conn:
        for name, (query, params) in queries.items():
            for _ in range(3):  # the last of three
                plan = "\n".join(r[0] for r in conn.execute("EXPLAIN ANALYZE " + query, params))
            times[name] = {
                "planning": float(re.search(r"Planning Time: ([\d.]+)", plan).group(1)),
                "execution": float(re.search(r"Execution Time: ([\d.]+)", plan).group(1)),
            }
    return times


def rss_kb(pid: int) -> int:
    match = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(match.group(1)) if match else 0


# -- load ------------------------------------------------------------------------------


def wrk(url: str, script: list[str], connections: int, seconds: float) -> dict[str, float]:
    threads = min(2, connections)
    command = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--latency",
    ]
    command += ["--timeout", "60s", "-s", script[0], url, "--", *script[1:]]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout

    def millis(label: str) -> float:
        value, unit = re.search(rf"{label}\s+([\d.]+)(us|ms|s)\b", out).groups()
        return float(value) * {"us": 0.001, "ms": 1, "s": 1000}[unit]

    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    errors = int(non_2xx.group(1)) if non_2xx else 0
    errors += sum(map(int, socket_errors.groups())) if socket_errors else 0
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "requests": int(re.search(r"(\d+) requests in", out).group(1)),
        "p50": millis("50%"),
        "p99": millis("99%"),
        "errors": errors,
    }


class Load:
    """The workloads, aimed at one server."""

    def __init__(self, files: dict[str, Path], seconds: float, warmup: float) -> None:
        self.files, self.seconds, self.warmup = files, seconds, warmup
        self._runs = 0

    def script(self, workload: str) -> tuple[str, list[str]]:
        rotate = str(HERE / "rotate_lines.lua")
        if workload == "lookup_v2":
            return f"{V2}/lookup", [rotate, str(self.files[workload]), "POST", TOKEN]
        if workload == "bulk_lookup":
            return f"{V1}/bulk_lookup", [rotate, str(self.files[workload]), "POST"]
        if workload == "lookup_v1":
            return "/", [rotate, str(self.files[workload]), "GET"]
        if workload == "hash_details":
            return "/", [rotate, str(self.files[workload]), "GET", TOKEN]
        assert workload == "request_token"
        self._runs += 1
        tag = f"r{os.getpid()}n{self._runs}"
        return f"{V1}/validate/email/requestToken", [
            str(HERE / "request_token.lua"),
            tag,
            "bench.gouv.fr",
        ]

    def run(self, base: str, workload: str, connections: int, *, seconds: int | None = None):
        """A warm-up, then the measured run; each followed by waiting for the server to be
        idle again (a single-process server keeps working through the requests queued when
        wrk stopped, which would slow the next run down)."""
        if self.warmup:
            path, script = self.script(workload)
            wrk(base + path, script, min(connections, 2), self.warmup)
            settle(base)
        path, script = self.script(workload)
        result = wrk(base + path, script, connections, seconds or self.seconds)
        result["seconds"] = seconds or self.seconds
        settle(base)
        return result


def settle(base: str, timeout: float = 900) -> None:
    """Wait until the server answers a trivial request quickly three times in a row."""
    deadline = time.monotonic() + timeout
    fast = 0
    while fast < 3:
        started = time.monotonic()
        with contextlib.suppress(OSError):
            urllib.request.urlopen(f"{base}{V2}", timeout=timeout).read()
        fast = fast + 1 if time.monotonic() - started < 0.1 else 0
        if time.monotonic() > deadline:
            raise RuntimeError(f"{base} still busy after {timeout} s")


def probe(base: str, workload: str, files: dict[str, Path]) -> float:
    """Seconds one request of `workload` takes alone (the best of two)."""
    body = json.loads(files[workload].read_text().splitlines()[0])
    path = f"{V2}/lookup" if workload == "lookup_v2" else f"{V1}/bulk_lookup"
    times = []
    for _ in range(2):
        started = time.monotonic()
        call(base, path, body, TOKEN)
        times.append(time.monotonic() - started)
    return min(times)


# -- the benchmark ---------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args, self.tmp = args, tmp
        # Counts only; Sydent's mails now and then have a line over 1,000 characters.
        self.sink = SmtpSink(keep=False, long_lines=True).start()
        self.databases: list[str] = []
        self.servers: list = []
        self.results: dict = {"lookups": {}, "light": {}, "request_token": {}, "memory": {},
                              "workers": {}, "load_seconds": {}, "rounds": {}}  # fmt: skip
        self.sydent_python = ensure_venv()

    def close(self) -> None:
        for server in self.servers:
            try:
                server.stop()
            except Exception as e:
                log(f"stopping a server: {e}")
        self.sink.stop()
        with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
            for name in self.databases:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def started(self, server):
        self.servers.append(server)
        return server.start()

    def stopped(self, server) -> None:
        server.stop()
        self.servers.remove(server)

    def stores(self, count: int) -> dict[str, dict]:
        """Create and fill the three stores for `count` bindings."""
        folder = self.tmp / f"n{count}"
        folder.mkdir()
        name = f"bench_vs_sydent_{os.getpid()}_{count}"
        with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            conn.execute(f'CREATE DATABASE "{name}"')
        self.databases.append(name)
        pg_env = our_env(folder, f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}", self.sink)
        sqlite_env = our_env(folder, f"sqlite:///{folder / 'ours.sqlite3'}", self.sink)
        timings = {}
        for label, env, fill, target in (
            ("ours, PostgreSQL", pg_env, fill_postgres, name),
            ("ours, SQLite", sqlite_env, fill_our_sqlite, folder / "ours.sqlite3"),
        ):
            migrate(env)
            started = time.monotonic()
            fill(target, count)
            timings[label] = time.monotonic() - started
        # Sydent creates its schema on first start; then the rows go in directly.
        sydent = SydentServer(self.sydent_python, folder / "sydent", self.sink)
        self.started(sydent)
        self.stopped(sydent)
        started = time.monotonic()
        fill_sydent(sydent.sydent.db_path, count)
        timings["Sydent"] = time.monotonic() - started
        self.results["load_seconds"][count] = timings
        return {
            "ours, PostgreSQL": {"env": pg_env, "database": name},
            "ours, SQLite": {"env": sqlite_env},
            "Sydent": {"sydent": sydent},
            "folder": folder,
        }

    def server(self, stores: dict, label: str, worker: str = "gthread"):
        if label == "Sydent":
            return stores["Sydent"]["sydent"]
        return Ours(stores[label]["env"], stores["folder"], worker)

    def run(self) -> None:
        if self.args.only:
            self.compare()
            return
        sizes = self.args.sizes
        load = Load({}, self.args.seconds, self.args.warmup)
        for count in sizes:
            log(f"{count:,} bindings: filling the stores")
            stores = self.stores(count)
            files = write_requests(stores["folder"], count)
            load.files = files
            largest = count == sizes[-1]
            for label in ("ours, PostgreSQL", "ours, SQLite", "Sydent"):
                server = self.started(self.server(stores, label))
                check_answers(server.base, files, count)
                for workload in ("lookup_v2", "bulk_lookup"):
                    log(f"{count:,} bindings, {label}: {workload}")
                    # Long enough for at least 5 requests at 1 connection and 16 at 8 (slow
                    # servers get longer runs), at most 2 minutes.
                    alone = probe(server.base, workload, files)
                    short = max(self.args.seconds // 2, math.ceil(5 * alone))
                    one = load.run(server.base, workload, 1, seconds=min(120, short))
                    long = max(self.args.seconds, math.ceil(16 * alone))
                    many = load.run(
                        server.base, workload, LOOKUP_CONNECTIONS, seconds=min(120, long)
                    )
                    self.results["lookups"][(count, workload, label)] = {"one": one, "many": many}
                if largest:
                    pids = server.pids()
                    self.results["memory"][label] = [rss_kb(pid) for pid in pids]
                    for workload in ("lookup_v1", "hash_details"):
                        log(f"{label}: {workload}")
                        result = load.run(server.base, workload, LIGHT_CONNECTIONS)
                        self.results["light"][(workload, label)] = result
                    log(f"{label}: request_token")
                    before = self.sink.count
                    result = load.run(server.base, "request_token", LIGHT_CONNECTIONS)
                    result["mails"] = self.sink.count - before
                    self.results["request_token"][label] = result
                self.stopped(server)
            if largest:
                database = stores["ours, PostgreSQL"]["database"]
                self.results["plans"] = plan_times(database, count)
                self.workers(stores, load)
            self.drop(stores)

    def compare(self) -> None:
        """`--only`: the named lookups, the three servers up at once and taking turns, so
        that a change in the machine's load falls on all three alike."""
        load = Load({}, self.args.seconds, self.args.warmup)
        labels = (*OURS, "Sydent")
        for count in self.args.sizes:
            log(f"{count:,} bindings: filling the stores")
            stores = self.stores(count)
            load.files = write_requests(stores["folder"], count)
            servers = {label: self.started(self.server(stores, label)) for label in labels}
            for server in servers.values():
                check_answers(server.base, load.files, count)
            for workload in self.args.only:
                for round_ in range(self.args.rounds):
                    for label, server in servers.items():
                        log(f"{count:,} bindings, round {round_ + 1}, {label}: {workload}")
                        # As long as `run` makes them for a slow server.
                        alone = probe(server.base, workload, load.files)
                        short = max(self.args.seconds // 2, math.ceil(5 * alone))
                        one = load.run(server.base, workload, 1, seconds=min(120, short))
                        long = max(self.args.seconds, math.ceil(16 * alone))
                        many = load.run(
                            server.base, workload, LOOKUP_CONNECTIONS, seconds=min(120, long)
                        )
                        log(f"p50 {one['p50']:.1f} ms, {many['rps']:.1f} req/s{errors_note(many)}")
                        self.results["rounds"].setdefault((count, workload, label), []).append(
                            {"one": one, "many": many}
                        )
            for server in servers.values():
                self.stopped(server)
            self.drop(stores)

    def workers(self, stores: dict, load: Load) -> None:
        classes = ["sync", "gthread"]
        if gevent_installed():
            classes.append("gevent")
        for worker in classes:
            server = self.started(self.server(stores, "ours, PostgreSQL", worker))
            for workload, connections in (
                ("lookup_v2", LOOKUP_CONNECTIONS),
                ("lookup_v1", LIGHT_CONNECTIONS),
                ("request_token", LIGHT_CONNECTIONS),
            ):
                log(f"worker class {worker}: {workload}")
                result = load.run(server.base, workload, connections)
                self.results["workers"][(worker, workload)] = result
            self.stopped(server)

    def drop(self, stores: dict) -> None:
        with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
            name = stores["ours, PostgreSQL"]["database"]
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            self.databases.remove(name)
        shutil.rmtree(stores["folder"], ignore_errors=True)


def gevent_installed() -> bool:
    command = [sys.executable, "-c", "import gevent"]
    return subprocess.run(command, capture_output=True).returncode == 0


# -- report ----------------------------------------------------------------------------


def machine() -> str:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"model name\s*:\s*(.*)", cpuinfo)
    ram = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
    with psycopg.connect(f"{PG}/postgres") as conn:
        pg = conn.execute("SHOW server_version").fetchone()[0].split()[0]
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split()[1]
    return (
        f"{CORES} cores ({model.group(1) if model else platform.machine()}),"
        f" {ram / 1024**2:.0f} GiB RAM, {platform.system()}, Python {platform.python_version()},"
        f" PostgreSQL {pg} (default settings), SQLite {sqlite3.sqlite_version},"
        f" Sydent {SYDENT_VERSION}, wrk {wrk_version}"
    )


def ratio(ours: float, theirs: float) -> str:
    return f"{ours / theirs:.2f}" if theirs else "–"


def errors_note(result: dict) -> str:
    return f" ({result['errors']:,} errors)" if result["errors"] else ""


OURS = ("ours, PostgreSQL", "ours, SQLite")
NAMES = {
    "lookup_v2": "`POST /v2/lookup` (1,000 hashes)",
    "bulk_lookup": "`POST /api/v1/bulk_lookup` (1,000 addresses)",
    "lookup_v1": "`GET /api/v1/lookup`",
    "hash_details": "`GET /v2/hash_details`",
    "request_token": "`POST /api/v1/validate/email/requestToken`",
}


def report(results: dict, args: argparse.Namespace, elapsed: float) -> str:
    """The section of docs/performance.md: an introduction, then one part per measure."""
    largest = args.sizes[-1]
    parts = [
        introduction(args, elapsed),
        lookups_table(results["lookups"], args),
        light_table(results["light"], largest),
        request_token_table(results["request_token"]),
        memory_table(results["memory"], largest),
        plans_table(results["plans"], largest),
        workers_table(results["workers"], largest),
        [loading_line(results["load_seconds"])],
        ["<!-- sydent:notes -->", END],
    ]
    return START + "\n" + "\n\n".join("\n".join(part) for part in parts)


def section(title: str, description: str, header: str, alignment: str,
            rows: list[str]) -> list[str]:  # fmt: skip
    """A titled table: `### title`, what it measures, the header and its rows."""
    return [f"### {title}", "", description, "", header, alignment, *rows]


def introduction(args: argparse.Namespace, elapsed: float) -> list[str]:
    s, w = args.seconds, args.warmup
    return [
        "## Against Sydent 2.6.1 (`benchmarks/bench_vs_sydent.py`)",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {machine()}."
        f" {'Quick run (`--quick`)' if args.quick else 'Full run'}: {elapsed / 60:.0f} minutes.",
        "",
        "Both services on the same machine, on the same data, loaded by the same wrk (which"
        " shares the 2 cores). The bindings are written with bulk SQL into three stores:"
        " our schema (`flask db upgrade`) on PostgreSQL (then `VACUUM ANALYZE`) and on SQLite,"
        " and Sydent's own SQLite (schema made by Sydent's first start; rows in"
        " `global_threepid_associations` with their `lookup_hash` and a signed association"
        " of real size, the pepper in `hashing_metadata`, an account and a token in"
        " `accounts`/`tokens`). Same addresses, Matrix IDs, pepper and access token in all"
        " three; no terms. Ours runs under gunicorn with `gunicorn.conf.py` (gthread,"
        f" {CORES + 1} workers × 4 threads unless said otherwise, access log on), rate limits off"
        " (`IDENTITY_RATELIMIT_ENABLED=false`), and Sydent's requestToken limit too"
        " (`email.ratelimit_sender.*`; it has none on the other endpoints), the"
        " delivery worker off; Sydent is one process, as it is deployed. ratio = ours /"
        " Sydent: above 1 is better for us in requests/s, below 1 is better for us in"
        " latency.",
        "",
        f"Every figure: a {w:g} s warm-up with the same requests on at most 2 connections"
        f" (discarded), then a measured run of {s:g} s unless said otherwise; after each run"
        " the benchmark waits until the server answers a trivial request within 100 ms"
        " three times in a row (a single process keeps working through the requests still"
        " queued when wrk stops). wrk `--latency`, 2 threads (1 at 1 connection), timeout"
        " 60 s. Requests take their body or path in turn from"
        f" {BODIES} prepared ones (`benchmarks/rotate_lines.lua`); each lookup batch is half"
        " bound addresses, half unknown ones.",
    ]


def lookups_table(
    lookups: dict,
    args: argparse.Namespace,
    workloads: tuple[str, ...] = ("lookup_v2", "bulk_lookup"),
) -> list[str]:
    s = args.seconds
    rows = []
    for count in args.sizes:
        for workload in workloads:
            theirs = lookups[(count, workload, "Sydent")]
            for label in (*OURS, "Sydent"):
                r = lookups[(count, workload, label)]
                one, many = r["one"], r["many"]
                ratios = (
                    f"{ratio(one['p50'], theirs['one']['p50'])} |"
                    f" {ratio(many['rps'], theirs['many']['rps'])}"
                    if label != "Sydent"
                    else "|"
                )
                rows.append(
                    f"| {count:,} | {NAMES[workload]} | {label} | {one['p50']:.1f} |"
                    f" {one['p99']:.1f} | {many['rps']:,.1f}{errors_note(many)} |"
                    f" {many['p99']:.0f} | {one['seconds']} / {many['seconds']} | {ratios} |"
                )
    return section(
        "Lookups of 1,000 addresses",
        f"p50 and p99 at 1 connection (latency of one request alone), requests/s and p99 at"
        f" {LOOKUP_CONNECTIONS} connections (throughput). Runs last {s // 2:g} s at 1"
        f" connection and {s:g} s at {LOOKUP_CONNECTIONS}, or longer for a slow server:"
        " at least 5 and 16 times the time of one request alone, at most 120 s (the"
        " `run s` column).",
        "| bindings | endpoint | server | p50 ms (1 conn) | p99 ms (1 conn) | req/s"
        f" ({LOOKUP_CONNECTIONS} conns) | p99 ms ({LOOKUP_CONNECTIONS} conns) | run s |"
        " ratio p50 | ratio req/s |",
        "|---:|---|---|---:|---:|---:|---:|---|---:|---:|",
        rows,
    )


def light_table(light: dict, largest: int) -> list[str]:
    rows = []
    for workload in ("lookup_v1", "hash_details"):
        theirs = light[(workload, "Sydent")]
        for label in (*OURS, "Sydent"):
            r = light[(workload, label)]
            ratios = (
                f"{ratio(r['rps'], theirs['rps'])} | {ratio(r['p99'], theirs['p99'])}"
                if label != "Sydent"
                else "|"
            )
            rows.append(
                f"| {NAMES[workload]} | {label} | {r['rps']:,.0f}{errors_note(r)} |"
                f" {r['p99']:.1f} | {ratios} |"
            )
    return section(
        f"Single lookups and hash details ({largest:,} bindings)",
        f"{LIGHT_CONNECTIONS} connections; `GET /api/v1/lookup` asks about 2,000 addresses in"
        " turn, half of them bound (ours signs the association on each answer, Sydent returns"
        " the one it signed at bind time); `hash_details` with the access token.",
        "| endpoint | server | req/s | p99 ms | ratio req/s | ratio p99 |",
        "|---|---|---:|---:|---:|---:|",
        rows,
    )


def request_token_table(token: dict) -> list[str]:
    rows = []
    for label in (*OURS, "Sydent"):
        r = token[label]
        rows.append(
            f"| {label} | {r['rps']:,.0f}{errors_note(r)} | {r['p99']:.1f} | {r['mails']:,} |"
            f" {ratio(r['rps'], token['Sydent']['rps']) if label != 'Sydent' else ''} |"
        )
    return section(
        "requestToken with mail delivery",
        f"{LIGHT_CONNECTIONS} connections, each request for a new address and client_secret"
        " (`benchmarks/request_token.lua`), so each one creates a session and sends a mail"
        " to an aiosmtpd sink run by the benchmark on the same machine (both services open"
        " one SMTP connection per mail, inside the request).",
        "| server | req/s | p99 ms | mails received | ratio req/s |",
        "|---|---:|---:|---:|---:|",
        rows,
    )


def memory_table(memory: dict, largest: int) -> list[str]:
    rows = []
    for label in (*OURS, "Sydent"):
        sizes = memory[label]
        each = ", ".join(f"{kb / 1024:.0f}" for kb in sizes)
        rows.append(f"| {label} | {len(sizes)} | {each} | {sum(sizes) / 1024:.0f} |")
    return section(
        f"Memory after the {largest:,}-binding lookups",
        "VmRSS from /proc of each gunicorn worker (the master not counted) and of the Sydent"
        " process, read right after the lookup runs. PostgreSQL's own memory is not counted;"
        " with SQLite the page cache is inside the process.",
        "| server | processes | RSS per process (MiB) | total (MiB) |",
        "|---|---:|---|---:|",
        rows,
    )


def plans_table(plans: dict, largest: int) -> list[str]:
    return section(
        f"PostgreSQL planning and execution of the lookup statements ({largest:,} bindings)",
        "`EXPLAIN ANALYZE` of the statements our storage layer sends for a request of 1,000"
        " addresses or hashes, half of them bound, the last of three runs; the lines"
        ' "for comparison" are not our code.',
        "| query | planning ms | execution ms |",
        "|---|---:|---:|",
        [f"| {name} | {t['planning']:.1f} | {t['execution']:.1f} |" for name, t in plans.items()],
    )


WORKER_WORKLOADS = ("lookup_v2", "lookup_v1", "request_token")


def workers_table(workers: dict, largest: int) -> list[str]:
    """The table of worker classes, then the best class for each workload."""
    classes = sorted({k for k, _ in workers}, key=["sync", "gthread", "gevent"].index)
    rows = []
    for worker in classes:
        cells = []
        for workload in WORKER_WORKLOADS:
            r = workers[(worker, workload)]
            cells.append(f"{r['rps']:,.0f}{errors_note(r)} | {r['p99']:.1f}")
        rows.append(f"| {worker} | {' | '.join(cells)} |")
    table = section(
        f"Worker class (ours, PostgreSQL, {largest:,} bindings)",
        f"`sync`: {CORES} workers; `gthread`: {CORES + 1} workers × 4 threads; `gevent`:"
        f" {CORES} workers (gevent installed in .venv only, not in pyproject). Lookups at"
        f" {LOOKUP_CONNECTIONS} connections, the others at {LIGHT_CONNECTIONS}.",
        "| worker class | v2 lookup req/s | p99 ms | v1 lookup req/s | p99 ms |"
        " requestToken req/s | p99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
        rows,
    )
    return [*table, "", *(best_worker(workers, classes, w) for w in WORKER_WORKLOADS)]


def best_worker(workers: dict, classes: list[str], workload: str) -> str:
    ranked = sorted(classes, key=lambda k: workers[(k, workload)]["rps"], reverse=True)
    best, second = ranked[0], ranked[1] if len(ranked) > 1 else ranked[0]
    rps = workers[(best, workload)]["rps"]
    return (
        f"- {NAMES[workload]}: best **{best}**, {rps:,.0f}"
        f" req/s, {ratio(rps, workers[(second, workload)]['rps'])}"
        f" × the next ({second})."
    )


def rounds_report(rounds: dict, args: argparse.Namespace, elapsed: float) -> str:
    """`--only`: each round's figures, then per server the medians and the median of the
    per-round ratios to Sydent (req/s at 8 connections, p50 at 1)."""
    lines = [
        f"Measured {time.strftime('%Y-%m-%d %H:%M')} on {machine()}; load average"
        f" {os.getloadavg()[0]:.1f} at the end. {args.rounds} rounds, the three servers"
        f" taking turns; {args.seconds // 2} s at 1 connection, {args.seconds} s at"
        f" {LOOKUP_CONNECTIONS} (or longer for a slow server, as in the full run), after a"
        f" {args.warmup} s warm-up. {elapsed / 60:.0f} minutes.",
        "",
        f"| bindings | endpoint | server | p50 ms (1 conn) | req/s ({LOOKUP_CONNECTIONS} conns)"
        " | ratio p50 | ratio req/s | req/s per round |",
        "|---:|---|---|---:|---:|---:|---:|---|",
    ]
    for count in args.sizes:
        for workload in args.only:
            theirs = rounds[(count, workload, "Sydent")]
            for label in (*OURS, "Sydent"):
                runs = rounds[(count, workload, label)]
                p50 = statistics.median(r["one"]["p50"] for r in runs)
                rps = statistics.median(r["many"]["rps"] for r in runs)
                ratios = "|"
                if label != "Sydent":
                    pairs = list(zip(runs, theirs, strict=True))
                    p50s = [r["one"]["p50"] / t["one"]["p50"] for r, t in pairs]
                    rpss = [r["many"]["rps"] / (t["many"]["rps"] or math.nan) for r, t in pairs]
                    ratios = f"{statistics.median(p50s):.2f} | {statistics.median(rpss):.2f}"
                each = ", ".join(f"{r['many']['rps']:,.1f}{errors_note(r['many'])}" for r in runs)
                lines.append(
                    f"| {count:,} | {NAMES[workload]} | {label} | {p50:.1f} | {rps:,.1f} |"
                    f" {ratios} | {each} |"
                )
    medians = {key: _median_run(runs) for key, runs in rounds.items()}
    table = lookups_table(medians, args, tuple(args.only))
    lines += [
        "",
        "In the form of the full run's table, the median of each figure:",
        "",
        *table[-2 - len(medians) :],
    ]
    return "\n".join(lines)


def _median_run(runs: list[dict]) -> dict:
    """One run of each figure's median over `runs` (the longest run length, all errors)."""
    return {
        part: {
            **{k: statistics.median(r[part][k] for r in runs) for k in ("p50", "p99", "rps")},
            "errors": sum(r[part]["errors"] for r in runs),
            "seconds": max(r[part]["seconds"] for r in runs),
        }
        for part in ("one", "many")
    }


def loading_line(loading: dict) -> str:
    return (
        "Bulk loading, seconds (not a served figure; for reference): "
        + "; ".join(
            f"{count:,} bindings: "
            + ", ".join(f"{label} {seconds:.1f}" for label, seconds in timings.items())
            for count, timings in loading.items()
        )
        + "."
    )


PLANS_TITLE = "### PostgreSQL planning and execution of the lookup statements"


def plans_only(args: argparse.Namespace) -> None:
    """`--plans`: the plans table alone, on our schema filled at the largest size."""
    count = max(args.sizes)
    name = f"bench_plans_{os.getpid()}"
    with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        with tempfile.TemporaryDirectory(prefix="bench-plans-") as tmp:
            env = {**os.environ, "IDENTITY_INSTANCE_PATH": tmp,
                   "IDENTITY_SQLALCHEMY_DATABASE_URI":
                   f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"}  # fmt: skip
            migrate(env)
        log(f"filling {count:,} bindings")
        fill_postgres(name, count)
        plans = plan_times(name, count)
    finally:
        with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    table = plans_table(plans, count)
    table[2] += (
        f" Measured {time.strftime('%Y-%m-%d')} by `--plans` alone (the 1-minute load average"
        f" {os.getloadavg()[0]:.1f}), after the rest of this section."
    )
    print("\n".join(table))
    if args.no_write:
        return
    text = REPORT.read_text()
    section_start, section_end = text.index(START), text.index(END)
    begin = text.index(PLANS_TITLE, section_start, section_end)
    following = text.find("\n### ", begin + len(PLANS_TITLE), section_end)
    stop = following + 1 if following != -1 else text.index("\n<!-- sydent:notes", begin) + 1
    REPORT.write_text(text[:begin] + "\n".join(table) + "\n\n" + text[stop:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="10,000 bindings, 5 s runs")
    parser.add_argument("--seconds", type=int, help="measured run length (10, quick 5)")
    parser.add_argument("--warmup", type=int, help="warm-up run length (3, quick 2)")
    parser.add_argument("--sizes", type=lambda v: [int(x) for x in v.split(",")])
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument(
        "--only",
        type=lambda v: v.split(","),
        help="only these lookups (lookup_v2,bulk_lookup), interleaved; prints, writes nothing",
    )
    parser.add_argument("--rounds", type=int, default=3, help="turns of each server (--only)")
    parser.add_argument("--plans", action="store_true", help="only the statements' plans table")
    args = parser.parse_args()
    if args.only and not set(args.only) <= {"lookup_v2", "bulk_lookup"}:
        parser.error("--only takes lookup_v2, bulk_lookup or both")
    args.sizes = args.sizes or ([10_000] if args.quick else [100_000, 1_000_000])
    args.seconds = args.seconds or (5 if args.quick else 10)
    args.warmup = args.warmup if args.warmup is not None else (2 if args.quick else 3)
    if args.plans:
        plans_only(args)
        return
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install wrk")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-vs-sydent-") as tmp:
        bench = Bench(args, Path(tmp))
        try:
            bench.run()
        finally:
            bench.close()
    if args.only:
        print(rounds_report(bench.results["rounds"], args, time.monotonic() - started))
        return
    section = report(bench.results, args, time.monotonic() - started)
    if not args.no_write:
        write_section("sydent", section)
    print(section)


if __name__ == "__main__":
    main()
