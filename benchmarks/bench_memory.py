"""Memory of the whole service under gunicorn.conf.py: each process's proportional and
unique set size, idle, after a load, and after graceful reloads then the same load.

    .venv/bin/python benchmarks/bench_memory.py              # 5 s per endpoint
    .venv/bin/python benchmarks/bench_memory.py --seconds 2 --only sqlite --no-write

The service runs as bench_small_requests.py runs it (PostgreSQL with rate limits in
Redis db 11 or BENCH_REDIS_URL, and the embedded SQLite default with limits in memory;
10,000 bindings), under its default workers and threads. The load is wrk on the same
small requests, one endpoint after the other. PSS shares each page among the processes
mapping it, so the processes' PSS add up to the service's memory; USS (private clean +
private dirty) is what a process holds alone. Writes its section of docs/performance.md.
"""

import argparse
import os
import re
import signal
import sys
import time
from functools import partial
from pathlib import Path

from bench_small_requests import BINDINGS
from bench_small_requests import WORKLOADS
from bench_small_requests import Server
from bench_small_requests import load
from bench_small_requests import on_each_setup
from docs_section import markers
from docs_section import write_section

START, END, NOTES = markers("memory")
RELOADS = 3
TARGET_MIB = 128  # twice Sydent 2.6.1's process (64 MiB, bench_vs_sydent.py)


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


def report(runs: dict[str, dict], seconds: int, loads: list[str]) -> str:
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
    lines += [NOTES, END]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--only", choices=["postgresql", "sqlite"])
    parser.add_argument("--no-write", action="store_true", help="print, do not edit the docs")
    args = parser.parse_args()
    runs, loads = on_each_setup(args.only, partial(measure, seconds=args.seconds))
    section = report(runs, args.seconds, loads)
    print(section)
    if not args.no_write:
        write_section("memory", section)


if __name__ == "__main__":
    main()
