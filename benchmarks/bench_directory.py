"""A national directory: v2 lookups at 10,000,000 bindings against PostgreSQL's own time.

    .venv/bin/python benchmarks/bench_directory.py                      # 10,000,000 bindings
    .venv/bin/python benchmarks/bench_directory.py --bindings 1000000 --rounds 5
    .venv/bin/python benchmarks/bench_directory.py --baseline /tmp/old  # and an older tree

Needs wrk (apt-get install wrk) and the PostgreSQL server at 127.0.0.1:5432 (user
postgres, trust auth); no Redis (rate limits off). About 15 minutes at 10,000,000.

1. Loads the bindings into a new database (`flask db upgrade`, then one COPY in the
   transaction of `identity.storage.bulk.indexes_after_load`: the indexes are built
   after the rows), then `VACUUM ANALYZE`; reports the rate and the bytes per binding,
   table and each index.
2. Runs our service under gunicorn with gunicorn.conf.py and measures `POST /v2/lookup`
   of 1,000 hashes, half of them bound (24 different bodies in turn), at 1 connection
   (p50, p99) and at 8 (requests/s), against PostgreSQL's execution time of the very
   statement our storage layer sends for each body (`EXPLAIN (ANALYZE, TIMING OFF)` of
   `associations._BY_HASH`, compiled as SQLAlchemy sends it), in rounds that take
   turns, so that the machine's other load falls on each alike: ratios are the figures
   to read. With `--baseline ROOT`, a second service runs from the source tree at ROOT
   (an older commit, `git archive`d there) on the same database, in the same rounds.
3. In each round, after the hot bodies, fresh hashes: bodies of 1,000 hashes no
   request has asked before (half bound, at random among all the bindings), each sent
   once, at 1 connection (p50, p99), against PostgreSQL's execution time of the same
   statement for other fresh bodies (`EXPLAIN (ANALYZE, BUFFERS)`): pages outside
   shared_buffers, read from the system's page cache (the run does not empty it: the
   machine is shared), with the blocks found in shared_buffers and those read.

Writes its section of docs/performance.md (between the directory markers) and prints
it; the database is dropped at the end.
"""

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC
from datetime import datetime
from pathlib import Path

import psycopg
from bench_vs_sydent import BATCH
from bench_vs_sydent import PEPPER
from bench_vs_sydent import PG
from bench_vs_sydent import TOKEN
from bench_vs_sydent import V2
from bench_vs_sydent import _our_metadata
from bench_vs_sydent import address
from bench_vs_sydent import call
from bench_vs_sydent import log
from bench_vs_sydent import machine
from bench_vs_sydent import mxid
from bench_vs_sydent import settle
from bench_vs_sydent import write_requests
from bench_vs_sydent import wrk
from docs_section import markers
from docs_section import write_section
from sqlalchemy import create_engine
from sqlalchemy.dialects.postgresql.psycopg import dialect as psycopg_dialect

from identity.lookup import lookup_hash
from identity.storage.associations import _BY_HASH  # the statement, to time it as sent
from identity.storage.bulk import indexes_after_load
from testing.servers import ROOT
from testing.servers import Gunicorn
from testing.servers import migrate

HERE = Path(__file__).resolve().parent
START, END, NOTES = markers("directory")
COLUMNS = "id, medium, address, lookup_hash, mxid, created_at, not_before, not_after"
CREATED, NOT_AFTER = "2024-01-01 00:00:00+00", "2123-12-08 00:00:00+00"
# Fresh hashes: bodies written per second of a run at 1 connection (a lookup at 10,000,000
# bindings takes more than 7 ms), and bodies whose database time is taken, per service
# and round.
FRESH_PER_SECOND = 140
COLD_BODIES = 24


def rows(count: int) -> Iterator[tuple]:
    for i in range(count):
        addr = address(i)
        yield (i + 1, "email", addr, lookup_hash("email", addr, PEPPER), mxid(i),
               CREATED, CREATED, NOT_AFTER)  # fmt: skip


def load(database: str, count: int) -> dict[str, float]:
    """COPY `count` bindings into the empty table, its indexes built after; seconds of
    each step."""
    engine = create_engine(f"postgresql+psycopg://postgres@127.0.0.1:5432/{database}")
    times = {}
    started = time.monotonic()
    with engine.begin() as connection:
        with indexes_after_load(connection, "association") as empty:
            assert empty, "the association table must be empty"
            raw = connection.connection.driver_connection
            with raw.cursor() as cur, cur.copy(f"COPY association ({COLUMNS}) FROM STDIN") as copy:
                for row in rows(count):
                    copy.write_row(row)
            times["copy"] = time.monotonic() - started
        times["indexes"] = time.monotonic() - started - times["copy"]
        with raw.cursor() as cur:
            cur.execute("SELECT setval(pg_get_serial_sequence('association', 'id'), %s)", (count,))
            _our_metadata(cur, "%s", CREATED)
    times["load"] = time.monotonic() - started
    engine.dispose()
    with psycopg.connect(f"{PG}/{database}", autocommit=True) as conn:
        vacuum = time.monotonic()
        conn.execute("VACUUM ANALYZE")
        times["vacuum"] = time.monotonic() - vacuum
    return times


def sizes(database: str) -> dict[str, int]:
    """Bytes of the table (with its TOAST and free space maps) and of each index."""
    with psycopg.connect(f"{PG}/{database}") as conn:
        found = dict(
            conn.execute(
                "SELECT c.relname, pg_relation_size(i.indexrelid) FROM pg_index i"
                " JOIN pg_class c ON c.oid = i.indexrelid"
                " WHERE i.indrelid = 'association'::regclass ORDER BY 2 DESC"
            ).fetchall()
        )
        table, total = conn.execute(
            "SELECT pg_table_size('association'), pg_total_relation_size('association')"
        ).fetchone()
    return {"table": table, **found, "total": total}


def database_times(database: str, bodies: list[dict]) -> float:
    """PostgreSQL's execution time (ms) of the lookup statement of each body, median."""
    return explain(database, bodies)["ms"]


def explain(database: str, bodies: list[dict]) -> dict[str, float]:
    """Medians over `bodies` of the lookup statement's execution time (ms) and of the
    blocks it found in shared_buffers (hit) and read from the system (read)."""
    compiled = _BY_HASH["postgresql", 0].compile(dialect=psycopg_dialect())
    now = datetime.now(UTC)
    found: dict[str, list[float]] = {"ms": [], "hit": [], "read": []}
    with psycopg.connect(f"{PG}/{database}") as conn:
        for body in bodies:
            values = {"hashes": json.dumps(body["addresses"]), "now": now}
            params = compiled.construct_params(values)
            plan = conn.execute(
                f"EXPLAIN (ANALYZE, BUFFERS, TIMING OFF, FORMAT JSON) {compiled}", params
            ).fetchone()[0][0]
            found["ms"].append(plan["Execution Time"])
            found["hit"].append(plan["Plan"]["Shared Hit Blocks"])
            found["read"].append(plan["Plan"]["Shared Read Blocks"])
    return {key: statistics.median(values) for key, values in found.items()}


def fresh_bodies(count: int, hot: list[dict], rounds: int, per_round: int) -> list[list[dict]]:
    """For each round, `per_round` bodies of hashes no other body holds: half bound
    (bindings drawn at random among all `count`, none of the hot bodies'), half not.
    Below 2 × the bindings drawn, the bound hashes are drawn at random, repeats allowed."""
    rng = random.Random(count + 1)
    taken = {h for body in hot for h in body["addresses"]}
    half = BATCH // 2
    # A small directory has too few bindings for every body's to be new: they may repeat.
    exclusive = len(taken) + rounds * per_round * half <= count // 2
    rounds_bodies = []
    for _ in range(rounds):
        bodies = []
        for _ in range(per_round):
            picked: list[int] = []
            while len(picked) < half:
                i = rng.randrange(count)
                digest = lookup_hash("email", address(i), PEPPER)
                if not exclusive or digest not in taken:
                    taken.add(digest)
                    picked.append(i)
            unbound = count + rng.randrange(10**9)
            hashes = [lookup_hash("email", address(i), PEPPER) for i in picked]
            hashes += [lookup_hash("email", address(unbound + n), PEPPER) for n in range(half)]
            rng.shuffle(hashes)
            bodies.append({"addresses": hashes, "algorithm": "sha256", "pepper": PEPPER})
        rounds_bodies.append(bodies)
    return rounds_bodies


def measure_fresh(service: "Service", lines: Path, seconds: float) -> dict[str, float]:
    """p50 and p99 at 1 connection, each body of `lines` sent once (more bodies than
    the run asks for)."""
    url = f"{service.gunicorn.base}{V2}/lookup"
    result = wrk(url, [str(HERE / "rotate_lines.lua"), str(lines), "POST", TOKEN], 1, seconds)
    settle(service.gunicorn.base)
    repeated = max(0, result["requests"] - sum(1 for _ in lines.open()))
    if repeated:
        log(f"{lines.name}: {repeated} requests of {result['requests']} repeated a body")
    return {"p50": result["p50"], "p99": result["p99"], "errors": result["errors"],
            "requests": result["requests"], "repeated": repeated}  # fmt: skip


class Service:
    """Our service under gunicorn with gunicorn.conf.py, from this tree or another."""

    def __init__(self, name: str, env: dict[str, str], tmp: Path, root: Path) -> None:
        self.name = name
        log(f"starting {name} ({root})")
        self.gunicorn = Gunicorn(env, ("-c", "gunicorn.conf.py"), log=tmp / f"{name}.log",
                                 root=root)  # fmt: skip

    def stop(self) -> None:
        self.gunicorn.stop(timeout=40)


def measure(service: Service, files: dict[str, Path], seconds: float) -> dict[str, float]:
    url = f"{service.gunicorn.base}{V2}/lookup"
    script = [str(HERE / "rotate_lines.lua"), str(files["lookup_v2"]), "POST", TOKEN]
    alone = wrk(url, script, 1, seconds)
    settle(service.gunicorn.base)
    loaded = wrk(url, script, 8, seconds * 2)
    settle(service.gunicorn.base)
    return {"p50": alone["p50"], "p99": alone["p99"], "rps": loaded["rps"],
            "p99_8": loaded["p99"], "errors": alone["errors"] + loaded["errors"]}  # fmt: skip


def run(args: argparse.Namespace, tmp: Path) -> dict:
    database = f"bench_directory_{os.getpid()}"
    with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {database}")
    try:
        env = {
            **os.environ,
            "IDENTITY_SQLALCHEMY_DATABASE_URI": f"postgresql+psycopg://postgres@127.0.0.1:5432/{database}",
            # A server makes its signing key in its instance folder only (not at a path given).
            "IDENTITY_INSTANCE_PATH": str(tmp),
            "IDENTITY_AUTO_MIGRATE": "false",
            "IDENTITY_RATELIMIT_ENABLED": "false",
            "IDENTITY_DELIVERY_WORKER_ENABLED": "false",
            "IDENTITY_MAIL_PRINT_TO_LOG": "true",
        }
        migrate(env)
        log(f"loading {args.bindings:,} bindings")
        times = load(database, args.bindings)
        log(f"loaded: {times}")
        results: dict = {"load": times, "sizes": sizes(database), "rounds": []}
        files = write_requests(tmp, args.bindings)
        bodies = [json.loads(line) for line in files["lookup_v2"].read_text().splitlines()]
        # Fresh bodies: those the services are sent (more than a run at 1 connection
        # asks), then as many as the database's times are taken of, for each service.
        per_service = args.seconds * FRESH_PER_SECOND
        names = ["ours"] + (["baseline"] if args.baseline else [])
        log("writing the fresh bodies")
        fresh = fresh_bodies(args.bindings, bodies, args.rounds,
                             len(names) * (per_service + COLD_BODIES))  # fmt: skip
        services = [Service("ours", env, tmp, ROOT)]
        if args.baseline:
            services.append(Service("baseline", env, tmp, Path(args.baseline)))
        try:
            for service in services:
                found = call(service.gunicorn.base, f"{V2}/lookup", bodies[0], TOKEN)["mappings"]
                assert len(found) == len(bodies[0]["addresses"]) // 2, (service.name, len(found))
            database_times(database, bodies)  # warms the pages read
            for number in range(args.rounds):
                measured = {"database": database_times(database, bodies),
                            "load": os.getloadavg()[0]}  # fmt: skip
                order = services if number % 2 == 0 else services[::-1]
                for service in order:
                    measured[service.name] = measure(service, files, args.seconds)
                unused = iter(fresh[number])
                for service in order:
                    cold = [next(unused) for _ in range(COLD_BODIES)]
                    lines = tmp / f"fresh-{service.name}-{number}.txt"
                    with lines.open("w") as out:
                        for _ in range(per_service):
                            out.write(json.dumps(next(unused)) + "\n")
                    measured[f"{service.name} fresh"] = {
                        **measure_fresh(service, lines, args.seconds),
                        "database": explain(database, cold),
                    }
                results["rounds"].append(measured)
        finally:
            for service in services:
                service.stop()
        return results
    finally:
        with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")


def median_of(rounds: list[dict], name: str, key: str) -> float:
    return statistics.median(r[name][key] for r in rounds)


def report(results: dict, args: argparse.Namespace, elapsed: float) -> str:
    count, times, found = args.bindings, results["load"], results["sizes"]
    rounds = results["rounds"]
    loads = ", ".join(f"{r['load']:.1f}" for r in rounds)
    database = statistics.median(r["database"] for r in rounds)
    names = ["ours"] + (["baseline"] if args.baseline else [])
    lines = [
        START,
        "## A national directory (`benchmarks/bench_directory.py`)",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d} on {machine()}. Full run:"
        f" {elapsed / 60:.0f} minutes. The machine was shared with other work during the run"
        f" (1-minute load average at the start of each round: {loads}): absolute times are"
        " noisy, the ratios within a round are the figures to read.",
        "",
        f"**Load** of {count:,} bindings (one COPY, indexes built after it in the same"
        f" transaction): {count / times['load']:,.0f} bindings/s ({times['copy']:.0f} s of"
        f" COPY, {times['indexes']:.0f} s of index builds), then `VACUUM ANALYZE`"
        f" {times['vacuum']:.0f} s.",
        "",
        f"**Bytes per binding**: {found['total'] / count:.0f} in all.",
        "",
        "| relation | MB | bytes per binding |",
        "|---|---:|---:|",
        *(
            f"| {name} | {size / 1e6:,.0f} | {size / count:.0f} |"
            for name, size in found.items()
            if name != "total"
        ),
        "",
        f"**`POST /v2/lookup` of 1,000 hashes** (half bound; 24 bodies in turn), medians of"
        f" {len(rounds)} interleaved rounds; at 1 connection for {args.seconds} s, at 8 for"
        f" {args.seconds * 2} s. The database's time is PostgreSQL's execution time of the"
        " statement sent for each body (`EXPLAIN (ANALYZE, TIMING OFF)`), median of the 24.",
        "",
        "| server | p50 ms (1 conn) | p99 ms (1 conn) | req/s (8 conns) | p99 ms (8 conns) |"
        " database ms | p50 / database |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in names:
        p50 = median_of(rounds, name, "p50")
        lines.append(
            f"| {name} | {p50:.1f} | {median_of(rounds, name, 'p99'):.1f}"
            f" | {median_of(rounds, name, 'rps'):.0f} | {median_of(rounds, name, 'p99_8'):.0f}"
            f" | {database:.1f} | {p50 / database:.2f} |"
        )
    lines += ["", "Per round (p50 ms at 1 connection, req/s at 8, database ms):", ""]
    for number, r in enumerate(rounds, 1):
        parts = [f"{name} {r[name]['p50']:.1f} / {r[name]['rps']:.0f}" for name in names]
        lines.append(
            f"- round {number}: {', '.join(parts)}, database {r['database']:.1f}"
            f" (load average {r['load']:.1f})"
        )
    lines += [
        "",
        f"**Fresh hashes**: in each round, {args.seconds * FRESH_PER_SECOND} bodies of 1,000"
        " hashes asked by no request before (half bound, drawn at random among all the"
        f" bindings), each sent once, at 1 connection for {args.seconds} s; the database's"
        " time is that of the same statement for"
        f" {COLD_BODIES} other fresh bodies (`EXPLAIN (ANALYZE, BUFFERS, TIMING OFF)`), with"
        " the blocks it found in shared_buffers (hit) and asked the system for (read):"
        " pages outside shared_buffers, from the system's page cache (the run does not"
        " empty it). Medians of the rounds.",
        "",
        "| server | p50 ms (1 conn) | p99 ms (1 conn) | database ms (cold) | p50 / database |"
        " blocks hit / read per lookup | hot p50 ms | fresh / hot p50 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in names:
        key = f"{name} fresh"
        p50 = median_of(rounds, key, "p50")
        cold = {
            k: statistics.median(r[key]["database"][k] for r in rounds)
            for k in ("ms", "hit", "read")
        }
        hot = median_of(rounds, name, "p50")
        lines.append(
            f"| {name} | {p50:.1f} | {median_of(rounds, key, 'p99'):.1f} | {cold['ms']:.1f}"
            f" | {p50 / cold['ms']:.2f} | {cold['hit']:,.0f} / {cold['read']:,.0f}"
            f" | {hot:.1f} | {p50 / hot:.2f} |"
        )
    lines += ["", "Per round, fresh (p50 ms, database ms cold):", ""]
    for number, r in enumerate(rounds, 1):
        fresh = [r[f"{name} fresh"] for name in names]
        parts = [f"{name} {f['p50']:.1f} / {f['database']['ms']:.1f} ({f['requests']}"
                 f" requests, {f['repeated']} of them a body sent before)"
                 for name, f in zip(names, fresh, strict=True)]  # fmt: skip
        lines.append(f"- round {number}: {', '.join(parts)}")
    return "\n".join([*lines, "", NOTES, END])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bindings", type=int, default=10_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=5, help="at 1 connection (8: twice)")
    parser.add_argument("--baseline", help="the source tree of a second service to compare")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-directory-") as tmp:
        results = run(args, Path(tmp))
    section = report(results, args, time.monotonic() - started)
    if not args.no_write:
        write_section("directory", section)
    print(section)


if __name__ == "__main__":
    main()
