"""Memory of the whole service under gunicorn.conf.py: each process's proportional and
unique set size, idle, after a load, and after graceful reloads then the same load.

    .venv/bin/python benchmarks/bench_memory.py              # 5 s per endpoint
    .venv/bin/python benchmarks/bench_memory.py --seconds 2 --only sqlite --no-write
    .venv/bin/python benchmarks/bench_memory.py --minutes 10     # and a long mixed load

The service runs as bench_small_requests.py runs it (PostgreSQL with rate limits in
Redis db 11 or BENCH_REDIS_URL, and the embedded SQLite default with limits in memory;
10,000 bindings), under its default workers and threads. The load is wrk on the same
small requests, one endpoint after the other. PSS shares each page among the processes
mapping it, so the processes' PSS add up to the service's memory; USS (private clean +
private dirty) is what a process holds alone. Writes its section of docs/performance.md.

With `--minutes N`, then a long run on PostgreSQL with limits in Redis, on a directory
of `--bindings` (1,000,000 by default, loaded by COPY as bench_directory.py loads
them): N minutes of a mixed load, three wrk at once, the small requests in turn (8
connections, the access token sent), v2 lookups of 1,000 hashes (2 connections) and
requestToken for a new address each time (2 connections, the mail written to the log);
the whole service's PSS every minute and at the end.
"""

import argparse
import os
import re
import signal
import sys
import tempfile
import threading
import time
from functools import partial
from pathlib import Path

import psycopg
import redis
from bench_directory import load as load_directory
from bench_small_requests import BINDINGS
from bench_small_requests import CONNECTIONS
from bench_small_requests import REDIS_URL
from bench_small_requests import TOKEN
from bench_small_requests import WORKLOADS
from bench_small_requests import Server
from bench_small_requests import load
from bench_small_requests import on_each_setup
from bench_vs_sydent import PG
from bench_vs_sydent import V1
from bench_vs_sydent import V2
from bench_vs_sydent import write_requests
from bench_vs_sydent import wrk
from docs_section import markers
from docs_section import write_section

from testing.servers import migrate

START, END, NOTES = markers("memory")
HERE = Path(__file__).resolve().parent
RELOADS = 3
TARGET_MIB = 128  # twice Sydent 2.6.1's process (64 MiB, bench_vs_sydent.py)
LONG_TARGET_MIB = 160  # after a long mixed load (issue 23)


def memory(pid: int) -> tuple[float, float]:
    """(PSS, USS) of a process, in MiB."""
    rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()

    def kib(field: str) -> int:
        return int(re.search(rf"^{field}:\s+(\d+) kB", rollup, re.M).group(1))

    return kib("Pss") / 1024, (kib("Private_Clean") + kib("Private_Dirty")) / 1024


def snapshot(server: Server) -> list[tuple[float, float]]:
    """(PSS, USS) of the master, then of each worker."""
    return [memory(pid) for pid in [server.pid, *sorted(server.workers())]]


def run_load(server: Server, tmp: Path, seconds: int) -> None:
    for n, (paths, token) in enumerate(WORKLOADS.values()):
        lines = tmp / f"load{n}.txt"
        lines.write_text("\n".join(paths) + "\n")
        load(server, lines, token, seconds)


def reload(server: Server) -> None:
    """SIGHUP, then wait until every worker is a new one."""
    old = set(server.workers())
    count = len(old)
    server.signal(signal.SIGHUP)
    deadline = time.monotonic() + 120
    while set(server.workers()) & old or len(server.workers()) < count:
        if time.monotonic() > deadline:
            raise RuntimeError("the reload did not replace the workers within 120 s")
        time.sleep(0.1)


def measure(label: str, env: dict[str, str], tmp: Path, seconds: int) -> dict:
    print(f"-- {label}", file=sys.stderr, flush=True)
    with (tmp / f"{label}.log").open("w") as log:
        server = Server("app:create_app()", env, log)
        try:
            time.sleep(3)
            idle = snapshot(server)
            run_load(server, tmp, seconds)
            loaded = snapshot(server)
            for _ in range(RELOADS):
                reload(server)
                time.sleep(2)
            run_load(server, tmp, seconds)
            reloaded = snapshot(server)
        finally:
            server.stop()
    for name, rows in (("idle", idle), ("after load", loaded), ("reloads", reloaded)):
        print(f"   {name}: {sum(pss for pss, _ in rows):.0f} MiB", file=sys.stderr, flush=True)
    return {"idle": idle, "loaded": loaded, "reloaded": reloaded}


def table(result: dict) -> list[str]:
    columns = ("idle", "loaded", "reloaded")
    lines = [
        f"| process | idle PSS / USS | after load | after {RELOADS} reloads and the load again |",
        "|---|---:|---:|---:|",
    ]
    names = ["master"] + [f"worker {i}" for i in range(1, len(result["idle"]))]
    for i, name in enumerate(names):
        cells = []
        for column in columns:
            rows = result[column]
            cells.append(f"{rows[i][0]:.1f} / {rows[i][1]:.1f}" if i < len(rows) else "")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    totals = [f"**{sum(pss for pss, _ in result[column]):.0f}**" for column in columns]
    lines.append("| whole service (PSS) | " + " | ".join(totals) + " |")
    return lines


def total_pss(server: Server) -> float:
    return sum(pss for pss, _ in snapshot(server))


def long_run(args: argparse.Namespace, tmp: Path) -> dict:
    """`--minutes`: the mixed load on a directory of `args.bindings`, PostgreSQL and Redis."""
    database = f"bench_memory_{os.getpid()}"
    with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    try:
        redis.Redis.from_url(REDIS_URL).flushdb()
        env = {
            **os.environ,
            "IDENTITY_INSTANCE_PATH": str(tmp),
            "IDENTITY_SQLALCHEMY_DATABASE_URI": f"{PG}/{database}".replace(
                "postgresql://", "postgresql+psycopg://"
            ),
            "IDENTITY_RATELIMIT_STORAGE_URI": REDIS_URL,
            "IDENTITY_AUTO_MIGRATE": "false",
            "IDENTITY_DELIVERY_WORKER_ENABLED": "false",
            "IDENTITY_MAIL_PRINT_TO_LOG": "true",
            "IDENTITY_DEVELOPMENT_DEPLOYMENT": "true",
            "IDENTITY_LOG_LEVEL": "WARNING",
            # wrk is one client: counted on every request, never refused.
            "IDENTITY_RATELIMIT_PER_IP": "100000000/minute;1000000000/hour",
            "IDENTITY_RATELIMIT_PER_USER": "100000000/minute",
        }
        migrate(env)
        print(f"-- loading {args.bindings:,} bindings", file=sys.stderr, flush=True)
        load_directory(database, args.bindings)
        files = write_requests(tmp, args.bindings)
        small = tmp / "small.txt"
        paths = [path for lines, _ in WORKLOADS.values() for path in lines]
        paths += files["lookup_v1"].read_text().splitlines()
        small.write_text("\n".join(sorted(paths, key=hash)) + "\n")  # mixed
        seconds = args.minutes * 60
        loads = {
            "small requests": (f"{V2}", [str(HERE / "rotate_lines.lua"), str(small), "GET",
                                         TOKEN], CONNECTIONS // 2),
            "v2 lookups": (f"{V2}/lookup", [str(HERE / "rotate_lines.lua"),
                                            str(files["lookup_v2"]), "POST", TOKEN], 2),
            "requestToken": (f"{V1}/validate/email/requestToken",
                             [str(HERE / "request_token.lua"), "mem", "justice.fr"], 2),
        }  # fmt: skip
        results: dict = {"bindings": args.bindings, "minutes": args.minutes, "wrk": {}}
        with (tmp / "long.log").open("w") as log:
            server = Server("app:create_app()", env, log)
            try:
                time.sleep(3)
                results["idle"] = snapshot(server)
                results["load_before"] = os.getloadavg()[0]

                def run(name: str, url: str, script: list[str], connections: int) -> None:
                    results["wrk"][name] = wrk(server.base + url, script, connections, seconds)

                threads = [threading.Thread(target=run, args=(name, *load))
                           for name, load in loads.items()]  # fmt: skip
                for thread in threads:
                    thread.start()
                started = time.monotonic()
                minutes = []
                while any(thread.is_alive() for thread in threads):
                    time.sleep(1)
                    elapsed = time.monotonic() - started
                    if elapsed >= 60 * (len(minutes) + 1) and len(minutes) < args.minutes:
                        minutes.append(total_pss(server))
                        print(f"   minute {len(minutes)}: {minutes[-1]:.0f} MiB",
                              file=sys.stderr, flush=True)  # fmt: skip
                for thread in threads:
                    thread.join()
                results["minutes_pss"] = minutes
                results["loaded"] = snapshot(server)
                results["load_after"] = os.getloadavg()[0]
                results["workers_seen"] = len(server.seen_workers | set(server.workers()))
            finally:
                server.stop()
        return results
    finally:
        with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def long_report(result: dict) -> list[str]:
    idle, loaded = result["idle"], result["loaded"]
    lines = [
        f"### {result['minutes']} minutes of mixed load, {result['bindings']:,} bindings"
        " (PostgreSQL, rate limits in Redis)",
        "",
        f"`--minutes {result['minutes']}`: three wrk at once for {result['minutes']} minutes"
        " (load average before / after:"
        f" {result['load_before']:.1f} / {result['load_after']:.1f}): the small requests"
        " above in turn with v1 lookups of the directory's addresses (8 connections, the"
        " access token sent), v2 lookups of 1,000 hashes (2 connections), requestToken for"
        " a new address each time (2 connections, the mail written to the log). Target:"
        f" {LONG_TARGET_MIB} MiB.",
        "",
        "| load | requests | req/s | errors |",
        "|---|---:|---:|---:|",
        *(
            f"| {name} | {r['requests']:,} | {r['rps']:,.0f} | {r['errors']} |"
            for name, r in result["wrk"].items()
        ),
        "",
        "| process | idle PSS / USS | after the load |",
        "|---|---:|---:|",
    ]
    names = ["master"] + [f"worker {i}" for i in range(1, len(idle))]
    for i, name in enumerate(names):
        after = f"{loaded[i][0]:.1f} / {loaded[i][1]:.1f}" if i < len(loaded) else ""
        lines.append(f"| {name} | {idle[i][0]:.1f} / {idle[i][1]:.1f} | {after} |")
    lines.append(
        f"| whole service (PSS) | **{sum(p for p, _ in idle):.0f}**"
        f" | **{sum(p for p, _ in loaded):.0f}** |"
    )
    minutes = ", ".join(f"{pss:.0f}" for pss in result["minutes_pss"])
    lines += ["", f"Whole service PSS at the end of each minute (MiB): {minutes}. Worker"
              f" processes seen: {result['workers_seen']} (3: none was recycled).", ""]  # fmt: skip
    return lines


def report(runs: dict[str, dict], seconds: int, loads: list[str], long: dict | None = None) -> str:
    lines = [
        START,
        "## Memory of the whole service (`benchmarks/bench_memory.py`)",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores shared with other"
        f" work (load average before / after: {loads[0]} / {loads[1]}). gunicorn with"
        " `gunicorn.conf.py` and its default workers and threads, the environment of"
        f" `bench_small_requests.py`, {BINDINGS:,} bindings. Per process, PSS / USS in MiB"
        " (PSS shares each page among the processes that map it, so the PSS add up to the"
        " service's memory; USS is what a process holds alone): 3 s after the start, after"
        f" wrk (16 connections) on each of the {len(WORKLOADS)} small requests for"
        f" {seconds} s, and after {RELOADS} graceful reloads (SIGHUP) followed by the same"
        f" load. Target: {TARGET_MIB} MiB, twice Sydent 2.6.1's process.",
        "",
    ]
    for label, result in runs.items():
        lines += [f"### {label}", "", *table(result), ""]
    if long is not None:
        lines += long_report(long)
    lines += [NOTES, END]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--only", choices=["postgresql", "sqlite"])
    parser.add_argument("--no-write", action="store_true", help="print, do not edit the docs")
    parser.add_argument("--minutes", type=int, help="and a mixed load this long (PostgreSQL)")
    parser.add_argument("--bindings", type=int, default=1_000_000, help="directory of --minutes")
    args = parser.parse_args()
    runs, loads = on_each_setup(args.only, partial(measure, seconds=args.seconds))
    long = None
    if args.minutes:
        with tempfile.TemporaryDirectory() as tmp:
            long = long_run(args, Path(tmp))
    section = report(runs, args.seconds, loads, long)
    print(section)
    if not args.no_write:
        write_section("memory", section)


if __name__ == "__main__":
    main()
