"""`flask sydent import` on a generated Sydent 2.6.1 database, on SQLite and PostgreSQL.

    .venv/bin/python benchmarks/bench_sydent_import.py              # 10,000 bindings
    .venv/bin/python benchmarks/bench_sydent_import.py --count 100000

Sydent creates its own database (its cached virtualenv, as the interop tests use:
testing/sydent.py); the rows are then written with bulk SQL in that schema: every
binding in the global table and half of them in the local one too, as Sydent keeps its
own binds; one account (with an access token and an accepted terms URL), one pending
invitation and one ephemeral key per ten bindings. Three runs, each on a fresh database
of ours but the second:

* into an empty service;
* the same database again (every row already present);
* into a service already holding as many bindings of its own under another pepper,
  which the import hashes again with Sydent's.

Prints the timings (it writes no section of docs/performance.md).
"""

import argparse
import contextlib
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC
from datetime import datetime
from pathlib import Path

import psycopg

from app import create_app
from identity.extensions import db
from testing.processes import free_port
from testing.sydent import Sydent
from testing.sydent import ensure_venv

PG = "postgresql://postgres@127.0.0.1:5432"


class _FixedClock:
    """The service's clock, stopped at the moment the generated data is set in."""

    def __init__(self, at: datetime) -> None:
        self.at = at

    def now(self) -> datetime:
        return self.at


NOW_MS = 1_790_000_000_000  # 2026-09-21, the clock of our side
CREATED_MS = NOW_MS - 365 * 86_400_000
NOT_AFTER_MS = CREATED_MS + 100 * 365 * 86_400_000  # Sydent's 100 years
PUBLIC_KEY = "A" * 43  # 32 bytes in unpadded base64


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def make_sydent_database(workdir: Path) -> tuple[Path, Path]:
    """Let Sydent create its schema (and its config, with a signing key); stop it."""
    sydent = Sydent(ensure_venv(), workdir, "127.0.0.1", free_port())
    sydent.start()
    sydent.stop()
    return sydent.db_path, sydent.config_path


def fill(db_path: Path, count: int, *, prefix: str, pepper: str) -> None:
    """`count` bindings (addresses starting with `prefix`) and what goes with them."""
    conn = sqlite3.connect(db_path)
    conn.execute("PRAGMA synchronous = OFF")
    with conn:
        for table in (
            "global_threepid_associations", "local_threepid_associations", "invite_tokens",
            "ephemeral_public_keys", "accounts", "tokens", "accepted_terms_urls",
        ):  # fmt: skip
            conn.execute(f"DELETE FROM {table}")  # noqa: S608 (our table names)
        conn.executemany(
            "INSERT INTO global_threepid_associations (medium, address, mxid, ts, notBefore,"
            " notAfter, originServer, originId, sgAssoc) VALUES ('email', ?, ?, ?, ?, ?,"
            " 'sydent.test', ?, '{}')",
            (
                (address(prefix, i), mxid(prefix, i), CREATED_MS, CREATED_MS, NOT_AFTER_MS, i)
                for i in range(count)
            ),
        )
        conn.executemany(
            "INSERT INTO local_threepid_associations (medium, address, mxid, ts, notBefore,"
            " notAfter) VALUES ('email', ?, ?, ?, ?, ?)",
            (
                (address(prefix, i), mxid(prefix, i), CREATED_MS, CREATED_MS, NOT_AFTER_MS)
                for i in range(0, count, 2)
            ),
        )
        tenth = range(0, count, 10)
        conn.executemany(
            "INSERT INTO accounts (user_id, created_ts) VALUES (?, ?)",
            ((mxid(prefix, i), CREATED_MS) for i in tenth),
        )
        conn.executemany(
            "INSERT INTO tokens (token, user_id) VALUES (?, ?)",
            ((f"{prefix}token{i:012d}", mxid(prefix, i)) for i in tenth),
        )
        conn.executemany(
            "INSERT INTO accepted_terms_urls (user_id, url) VALUES (?, ?)",
            ((mxid(prefix, i), "https://tchap.test/cgu.html") for i in tenth),
        )
        conn.executemany(
            "INSERT INTO invite_tokens (medium, address, room_id, sender, token, received_ts)"
            " VALUES ('email', ?, '!room:agent.test', '@sender:agent.test', ?, ?)",
            ((f"guest{i}@{prefix}.example", f"{prefix}invite{i}", NOW_MS // 1000) for i in tenth),
        )
        conn.executemany(
            "INSERT INTO ephemeral_public_keys (public_key, verify_count, persistence_ts)"
            " VALUES (?, 0, ?)",
            ((f"{prefix[:1]}{i:011d}" + PUBLIC_KEY[12:], NOW_MS // 1000) for i in tenth),
        )
        conn.execute("DELETE FROM hashing_metadata")
        conn.execute("INSERT INTO hashing_metadata (id, lookup_pepper) VALUES (1, ?)", (pepper,))
    conn.close()


def address(prefix: str, i: int) -> str:
    return f"{prefix}.agent{i}@interieur.gouv.fr"


def mxid(prefix: str, i: int) -> str:
    return f"@{prefix}.agent{i}-interieur.gouv.fr:agent.tchap.gouv.fr"


@contextlib.contextmanager
def our_databases(tmp: Path) -> Iterator[Iterator[tuple[str, str]]]:
    """Yield a generator of fresh (label, URI) pairs; drop the PostgreSQL ones after."""
    created: list[str] = []

    def fresh() -> Iterator[tuple[str, str]]:
        n = 0
        while True:
            n += 1
            yield "SQLite", f"sqlite:///{tmp / f'ours{n}.sqlite3'}"
            name = f"bench_sydent_import_{n}"
            with psycopg.connect(PG, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
                conn.execute(f'CREATE DATABASE "{name}"')
            created.append(name)
            yield "PostgreSQL", f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"

    try:
        yield fresh()
    finally:
        with psycopg.connect(PG, autocommit=True) as conn:
            for name in created:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def our_app(uri: str, tmp: Path, n: int):
    return create_app(
        {
            "SQLALCHEMY_DATABASE_URI": uri,
            "AUTO_MIGRATE": True,
            "SIGNING_KEY_PATH": str(tmp / f"signing{n}.key"),
            "RATELIMIT_ENABLED": False,
            "DELIVERY_WORKER_ENABLED": False,
        },
        clock=_FixedClock(datetime.fromtimestamp(NOW_MS / 1000, UTC)),
    )


def timed_import(app, db_path: Path, config_path: Path) -> float:
    runner = app.test_cli_runner()
    started = time.perf_counter()
    result = runner.invoke(args=["sydent", "import", str(db_path), "--config", str(config_path)])
    elapsed = time.perf_counter() - started
    if result.exit_code != 0:
        raise RuntimeError(result.output + repr(result.exception))
    log(result.output.strip().splitlines()[-1])
    return elapsed


def run(count: int, tmp: Path) -> list[tuple[str, str, float]]:
    sydent_db, sydent_conf = make_sydent_database(tmp / "sydent")
    fill(sydent_db, count, prefix="sydent", pepper="sydentPepper")
    # The service's own bindings, brought in under another pepper before the timed run.
    own_db = tmp / "own.db"
    shutil.copy(sydent_db, own_db)
    fill(own_db, count, prefix="own", pepper="ownPepper")
    results = []
    with our_databases(tmp) as fresh:
        for n in range(2):
            label, uri = next(fresh)
            app = our_app(uri, tmp, n)
            results.append((label, "empty service", timed_import(app, sydent_db, sydent_conf)))
            results.append((label, "again", timed_import(app, sydent_db, sydent_conf)))
            dispose(app)
        for n in range(2, 4):
            label, uri = next(fresh)
            app = our_app(uri, tmp, n)
            timed_import(app, own_db, sydent_conf)
            results.append(
                (label, f"{count:,} bindings rehashed", timed_import(app, sydent_db, sydent_conf))
            )
            dispose(app)
    return results


def dispose(app) -> None:
    with app.app_context():
        db.engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000, help="bindings in Sydent's database")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-sydent-import-"))
    try:
        results = run(args.count, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"| engine | run ({args.count:,} bindings) | seconds |\n|---|---|---:|")
    for label, what, seconds in results:
        print(f"| {label} | {what} | {seconds:.2f} |")


if __name__ == "__main__":
    main()
