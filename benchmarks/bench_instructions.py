"""The small requests in instructions: our app and the floor (benchmarks/bare_app.py with
its round trips) called as WSGI apps in one process on the embedded SQLite set-up, each
request's CPU instructions counted by valgrind's callgrind.

    .venv/bin/python benchmarks/bench_instructions.py               # 300 requests each
    .venv/bin/python benchmarks/bench_instructions.py --requests 100 --no-write

Timings on a shared two-core machine drift by ±10% from one run to the next; the count
of instructions a request executes does not (the same figure to within 1% run after
run, whatever else the machine does), so a change of a few microseconds shows. What it
does not count: the time of system calls and of waiting, and what running among other
threads costs (bench_small_requests.py measures those, bench_in_process.py the latter).
Needs valgrind (Debian's package). Writes its section of docs/performance.md (the
instructions markers).
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_in_process import _serve
from bench_in_process import environ
from bench_small_requests import WORKLOADS
from bench_small_requests import production_setups
from docs_section import markers
from docs_section import publish

START, _, _ = markers("instructions")
HERE = Path(__file__).resolve().parent
WARM_UP = 300  # requests before counting: caches filled, connections open


def serve(kind: str, workload: str, requests: int, go: Path) -> None:
    """In the process valgrind runs: build the app, warm it up, and once `go` exists,
    answer `requests` requests of `workload` (instrumentation is on meanwhile)."""
    os.environ["SERVER_SOFTWARE"] = "gunicorn/bench"  # as a worker builds the app
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp()
    if kind == "floor":
        from bare_app import create_app as create_bare_app

        app = create_bare_app(round_trips=True)
    else:
        from app import create_app

        app = create_app()
    paths, token = WORKLOADS[workload]
    environs = [environ(path, token) for path in paths]
    _serve(app, environs, WARM_UP)
    print("ready", flush=True)
    while not go.exists():
        time.sleep(0.05)
    _serve(app, environs, requests)
    print("done", flush=True)
    while go.exists():  # counting stops before this process does
        time.sleep(0.05)


def count(kind: str, workload: str, requests: int, env: dict[str, str], tmp: Path) -> float:
    """Instructions per request of one app on one workload."""
    out, go = tmp / f"callgrind.{kind}.{abs(hash(workload))}", tmp / "go"
    go.unlink(missing_ok=True)
    command = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
               f"--callgrind-out-file={out}", sys.executable, __file__,
               "--serve", kind, workload, str(requests), str(go)]  # fmt: skip
    child = subprocess.Popen(command, env=env, cwd=HERE.parent, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        _await_line(child, "ready", f"{kind}, {workload}: the app did not start under valgrind")
        subprocess.run(["callgrind_control", "-i", "on", str(child.pid)], check=True,
                       capture_output=True)  # fmt: skip
        go.touch()
        _await_line(child, "done", f"{kind}, {workload}: the requests did not complete")
        subprocess.run(["callgrind_control", "-i", "off", str(child.pid)], check=True,
                       capture_output=True)  # fmt: skip
        go.unlink()
        child.wait(timeout=600)
    finally:
        if child.poll() is None:
            child.kill()
    totals = re.findall(r"^(?:totals|summary): (\d+)", out.read_text(), re.M)
    if not totals or not int(totals[-1]):
        raise RuntimeError(f"{out}: no instructions counted")
    return int(totals[-1]) / requests


def _await_line(child: subprocess.Popen, line: str, failure: str) -> None:
    """Read the child's output up to `line` (the app may print before it)."""
    assert child.stdout is not None
    for printed in child.stdout:
        if printed.strip() == line:
            return
    raise RuntimeError(failure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--no-write", action="store_true", help="print, do not edit the docs")
    parser.add_argument("--serve", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        kind, workload, requests, go = args.serve
        return serve(kind, workload, int(requests), Path(go))
    lines = [
        START,
        "## Small requests in instructions (`benchmarks/bench_instructions.py`)",
        "",
        f"Measured {time.strftime('%Y-%m-%d')}. Our app and the floor (`bare_app.py` making"
        " its round trips) called as WSGI apps in one process on the embedded SQLite set-up"
        " of `bench_small_requests.py`, one thread; CPU instructions per request counted by"
        f" callgrind over {args.requests} requests after {WARM_UP} of warm-up (the same"
        " figure to within 1% from run to run). extra = ours − floor.",
        "",
        "| endpoint | floor | ours | extra | ours / floor |",
        "|---|---:|---:|---:|---:|",
    ]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for _, _, env in production_setups(tmp, "sqlite"):
            env = {**env, "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parent)])}
            for workload in WORKLOADS:
                floor = count("floor", workload, args.requests, env, tmp)
                ours = count("ours", workload, args.requests, env, tmp)
                lines.append(f"| {workload} | {floor:,.0f} | {ours:,.0f} | **{ours - floor:,.0f}**"
                             f" | {ours / floor:.2f} |")  # fmt: skip
                print(lines[-1], file=sys.stderr, flush=True)
    publish("instructions", lines, write=not args.no_write)


if __name__ == "__main__":
    main()
