"""Small requests against the floor: our service and a bare one-route Flask app under the
same gunicorn settings, in the same run, interleaved (bare, floor, ours, bare…); the
floor is the bare app making the Redis and database round trips ours makes.

    .venv/bin/python benchmarks/bench_small_requests.py            # 20 rounds of 3 s
    .venv/bin/python benchmarks/bench_small_requests.py --rounds 1 --seconds 3
    .venv/bin/python benchmarks/bench_small_requests.py --profile   # and where the CPU goes

Our service runs in its production configuration: gunicorn with gunicorn.conf.py,
PostgreSQL, rate limits on in Redis (db 11, or BENCH_REDIS_URL), access log and metrics on;
and on the embedded SQLite default (limits in memory). The bare apps
(benchmarks/bare_app.py) run with the same gunicorn.conf.py, so the same workers,
threads and access log. The per-IP limit is raised so that wrk, one address, is never
refused: every request still counts against it. Needs wrk, PostgreSQL and Redis as the
tests do. Writes its section of docs/performance.md (the small markers).

With --profile, one more run of each endpoint on each server measures where a request's
CPU goes (benchmarks/cpu_accounting.py: the processes' CPU time, and py-spy on the
workers by component), and the report gives it line by line.
"""

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import psycopg
import redis
from bench_vs_sydent import PG
from bench_vs_sydent import TOKEN
from bench_vs_sydent import address
from bench_vs_sydent import fill_our_sqlite
from bench_vs_sydent import fill_postgres
from bench_vs_sydent import wrk
from cpu_accounting import COMPONENTS
from cpu_accounting import OTHER
from cpu_accounting import profile
from docs_section import markers
from docs_section import write_section

from testing.servers import ROOT
from testing.servers import Gunicorn
from testing.servers import migrate

HERE = Path(__file__).resolve().parent

BINDINGS = 10_000
CONNECTIONS = 16
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/11")
START, END, NOTES = markers("small")
V1 = "/_matrix/identity/api/v1"
V2 = "/_matrix/identity/v2"
# name → (lines of path and query, taken in turn; whether the request carries the token)
WORKLOADS = {
    "status (`GET /v2`)": ([V2], False),
    "v1 lookup, bound address": (
        [f"{V1}/lookup?medium=email&address={address(i)}" for i in range(0, 2000, 3)],
        False,
    ),
    "v1 lookup, unknown address": (
        [f"{V1}/lookup?medium=email&address=nobody{i}@justice.fr" for i in range(700)],
        False,
    ),
    "`hash_details`": ([f"{V2}/hash_details"], True),
    "`/info`": ([f"{V1}/info?medium=email&address={address(i)}" for i in range(0, 2000, 3)], False),
}

# Run in this order in every round: the bare app, the bare app making the round trips
# ours makes (the floor), ours.
APPS = {
    "bare": "benchmarks.bare_app:create_app()",
    "floor": "benchmarks.bare_app:create_app(round_trips=True)",
    "ours": "app:create_app()",
}


class Server(Gunicorn):
    """gunicorn -c gunicorn.conf.py on `app`, output to a file."""

    def __init__(self, app: str, env: dict[str, str], log: Path) -> None:
        super().__init__(env, ("-c", str(ROOT / "gunicorn.conf.py")), log, app=app,
                         ready_path=V2, timeout=120)  # fmt: skip
        self.seen_workers: set[int] = set(self.workers())

    def pss_mib(self) -> float:
        """Proportional set size of the master and its workers, added up."""
        total = 0
        for pid in [self.pid, *self.workers()]:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
            total += int(re.search(r"^Pss:\s+(\d+) kB", rollup, re.M).group(1))
        return total / 1024


def load(server: Server, lines: Path, token: bool, seconds: float) -> dict[str, float]:
    script = [str(HERE / "rotate_lines.lua"), str(lines), "GET", *([TOKEN] if token else [])]
    result = wrk(server.base, script, CONNECTIONS, seconds)
    server.seen_workers.update(server.workers())
    if result["errors"]:
        raise RuntimeError(f"{server.base}: {result['errors']} failed requests")
    return result


def compare(servers: dict[str, Server], tmp: Path, args: argparse.Namespace) -> dict[str, dict]:
    """Each endpoint on each server (bare, floor, ours), in interleaved rounds."""
    results = {}
    for name, (paths, token) in WORKLOADS.items():
        lines = tmp / f"{abs(hash(name))}.txt"
        lines.write_text("\n".join(paths) + "\n")
        runs: dict[str, list] = {label: [] for label in servers}
        started_load = os.getloadavg()[0]
        for server in servers.values():  # warm-up, discarded
            load(server, lines, token, 1)
        for _ in range(args.rounds):
            for label, server in servers.items():
                runs[label].append(load(server, lines, token, args.seconds))
        results[name] = r = summary(runs)
        r["load"] = f"{started_load:.1f}–{os.getloadavg()[0]:.1f}"
        rounds = ", ".join(f"{x:.2f}" for x in r["ratios"])
        print(f"{name}: ours {r['ours']:,.0f} / floor {r['floor']:,.0f} / bare {r['bare']:,.0f}"
              f" req/s; ours / bare {r['ratio']:.2f} ({rounds}),"
              f" floor / bare {r['floor_ratio']:.2f}, ours / floor {r['ours_over_floor']:.2f};"
              f" p99 {r['ours_p99']:.1f} / {r['bare_p99']:.1f} ms", file=sys.stderr)  # fmt: skip
        if args.profile:
            results[name]["cpu"] = {
                label: profile(servers[label].workers(),
                               partial(load, servers[label], lines, token, args.seconds),
                               args.seconds, Path(tempfile.mkdtemp(dir=tmp)))
                for label in ("bare", "ours")
            }  # fmt: skip
    return results


def summary(runs: dict[str, list[dict]]) -> dict:
    """Means of requests/s, medians of p99, and ratios between servers: the median over
    the rounds, each run set against the other server's run of the same round."""

    def ratios(a: str, b: str, key: str = "rps") -> list[float]:
        return [x[key] / y[key] for x, y in zip(runs[a], runs[b], strict=True)]

    per_round = ratios("ours", "bare")
    return {
        **{label: statistics.mean(r["rps"] for r in rounds) for label, rounds in runs.items()},
        "bare_p99": statistics.median(r["p99"] for r in runs["bare"]),
        "floor_p99": statistics.median(r["p99"] for r in runs["floor"]),
        "ours_p99": statistics.median(r["p99"] for r in runs["ours"]),
        "ratios": per_round,
        "ratio": statistics.median(per_round),
        "floor_ratio": statistics.median(ratios("floor", "bare")),
        "ours_over_floor": statistics.median(ratios("ours", "floor")),
        "p99_ratio": statistics.median(ratios("ours", "bare", "p99")),
        "p99_over_floor": statistics.median(ratios("ours", "floor", "p99")),
        "ours_over_floor_rounds": ratios("ours", "floor"),
    }


def run(label: str, env: dict[str, str], tmp: Path, args: argparse.Namespace) -> dict:
    print(f"-- {label}", file=sys.stderr, flush=True)
    migrate(env)
    servers: dict[str, Server] = {}
    try:
        for name, app in APPS.items():
            servers[name] = Server(app, env, tmp / f"{name}-{label}.log")
        results = compare(servers, tmp, args)
        memory = {name: servers[name].pss_mib() for name in ("ours", "bare")}
        started = {name: len(servers[name].seen_workers) for name in ("ours", "bare")}
        return {"results": results, "memory": memory, "workers_seen": started}
    finally:
        for server in servers.values():
            server.stop()


def report(runs: dict[str, dict], args: argparse.Namespace, loads: list[str]) -> str:
    lines = [
        START,
        "## Small requests against a bare Flask app (`benchmarks/bench_small_requests.py`)",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores shared with other"
        f" work (load average before / after: {loads[0]} / {loads[1]}). The three servers run"
        " under gunicorn with `gunicorn.conf.py` (same workers, threads, access log): the bare"
        " app answers `{}` on any path; the floor is the bare app making the round trips ours"
        " cannot do without, the plain way (`benchmarks/bare_app.py`: one Redis command when"
        " the limits are in Redis, one read of a binding but for status); ours. wrk, 2"
        " threads, 16 connections, requests taken in turn from a file (`rotate_lines.lua`);"
        f" {args.rounds} rounds of {args.seconds} s per endpoint, the three servers in turn,"
        " after a 1 s warm-up of each. ours / bare = median of the rounds' requests/s of ours"
        " / bare (each round's in brackets: the host's speed drifts between rounds, so each"
        " run is set against the runs next to it); the other ratios likewise (ours / floor:"
        " each round's in brackets); req/s are means and p99 medians of the rounds; load:"
        " the 1-minute load average at the start and at the end of the endpoint's rounds."
        f" {BINDINGS:,} bindings. Targets (issue 23): ours / floor at least 0.90, p99 / floor"
        " at most 1.5.",
        "",
    ]
    for label, run_ in runs.items():
        lines += [f"### {label}", "",
                  "| endpoint | bare req/s | floor req/s | ours req/s | ours / bare"
                  " | floor / bare | ours / floor | bare p99 ms | floor p99 ms | ours p99 ms"
                  " | p99 / bare | p99 / floor | load |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
        for name, r in run_["results"].items():
            rounds = ", ".join(f"{x:.2f}" for x in r["ratios"])
            over_floor = ", ".join(f"{x:.2f}" for x in r["ours_over_floor_rounds"])
            lines.append(
                f"| {name} | {r['bare']:,.0f} | {r['floor']:,.0f} | {r['ours']:,.0f}"
                f" | **{r['ratio']:.2f}** ({rounds}) | {r['floor_ratio']:.2f}"
                f" | **{r['ours_over_floor']:.2f}** ({over_floor}) | {r['bare_p99']:.1f}"
                f" | {r['floor_p99']:.1f} | {r['ours_p99']:.1f} | {r['p99_ratio']:.2f}"
                f" | **{r['p99_over_floor']:.2f}** | {r['load']} |"
            )
        if all("cpu" in r for r in run_["results"].values()):
            lines += cpu_table(run_["results"])
        memory, seen = run_["memory"], run_["workers_seen"]
        lines += ["", f"Memory after the runs (PSS of master and workers, added up): ours"
                  f" {memory['ours']:.0f} MiB, bare app {memory['bare']:.0f} MiB. Worker"
                  f" processes seen during the runs (3 means none was recycled): ours"
                  f" {seen['ours']}, bare {seen['bare']}.", ""]  # fmt: skip
    lines += [NOTES, END]
    return "\n".join(lines)


def cpu_table(results: dict[str, dict]) -> list[str]:
    """µs of CPU per request, ours (bare), by process and by component of the workers."""
    names = list(results)
    lines = ["", "CPU per request in µs, ours (bare app), from one more run of each endpoint"
             " (`--profile`): by process (/proc), then the workers' time split by component in the"
             " proportions of py-spy's samples (threads holding the GIL; a sample goes to its"
             " innermost frame's component).", "",
             "| | " + " | ".join(names) + " |", "|---" + "|---:" * len(names) + "|"]  # fmt: skip

    def row(label: str, value) -> str:
        cells = []
        for name in names:
            cpu = results[name]["cpu"]
            cells.append(f"{value(cpu['ours']):.0f} ({value(cpu['bare']):.0f})")
        return f"| {label} | " + " | ".join(cells) + " |"

    for process in ("workers", "redis-server", "postgres"):
        lines.append(row(f"**{process}**", lambda c, p=process: c["processes"][p]))
    for component in [name for name, _ in COMPONENTS] + [OTHER]:
        lines.append(row(component, lambda c, k=component: c["components"].get(k, 0.0)))
    return lines


def production_setups(tmp: Path, only: str | None) -> Iterator[tuple[str, str, dict[str, str]]]:
    """(label, name, environment) of each set-up measured, its database filled with the
    bindings: PostgreSQL with limits in Redis, dropped after its measurement; then the
    embedded SQLite with limits in memory. `only` names one of them."""
    base_env = {
        **os.environ,
        "IDENTITY_INSTANCE_PATH": str(tmp),  # the server makes its signing key there
        "IDENTITY_AUTO_MIGRATE": "false",
        "IDENTITY_DELIVERY_WORKER_ENABLED": "false",
        "IDENTITY_MAIL_PRINT_TO_LOG": "true",
        # Loopback servers: gunicorn refuses a loopback public URL otherwise.
        "IDENTITY_DEVELOPMENT_DEPLOYMENT": "true",
        "IDENTITY_LOG_LEVEL": "WARNING",
        # wrk is one client: counted on every request, never refused.
        "IDENTITY_RATELIMIT_PER_IP": "100000000/minute;1000000000/hour",
        "IDENTITY_RATELIMIT_PER_USER": "100000000/minute",
    }
    if only != "sqlite":
        database = f"bench_{os.getpid()}"
        with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{database}"')
        try:
            redis.Redis.from_url(REDIS_URL).flushdb()
            env = {**base_env, "IDENTITY_SQLALCHEMY_DATABASE_URI": f"{PG}/{database}"
                   .replace("postgresql://", "postgresql+psycopg://"),
                   "IDENTITY_RATELIMIT_STORAGE_URI": REDIS_URL}  # fmt: skip
            migrate(env)
            fill_postgres(database, BINDINGS)
            yield "PostgreSQL, rate limits in Redis", "postgresql", env
        finally:
            with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    if only != "postgresql":
        sqlite = tmp / "identity.sqlite3"
        env = {**base_env, "IDENTITY_SQLALCHEMY_DATABASE_URI": f"sqlite:///{sqlite}"}
        migrate(env)
        fill_our_sqlite(sqlite, BINDINGS)
        yield "Embedded SQLite, rate limits in memory", "sqlite", env


def on_each_setup(
    only: str | None, measure: Callable[[str, dict[str, str], Path], dict]
) -> tuple[dict[str, dict], list[str]]:
    """`measure(name, environment, directory)` on each set-up (`production_setups`): the
    results by label, and the load averages before and after."""
    loads = [f"{os.getloadavg()[0]:.1f}"]
    runs = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for label, name, env in production_setups(tmp, only):
            runs[label] = measure(name, env, tmp)
    loads.append(f"{os.getloadavg()[0]:.1f}")
    return runs, loads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--only", choices=["postgresql", "sqlite"])
    parser.add_argument("--no-write", action="store_true", help="print, do not edit the docs")
    parser.add_argument("--profile", action="store_true", help="and where the CPU goes")
    args = parser.parse_args()
    runs, loads = on_each_setup(args.only, partial(run, args=args))
    section = report(runs, args, loads)
    print(section)
    if not args.no_write:
        write_section("small", section)


if __name__ == "__main__":
    main()
