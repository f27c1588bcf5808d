"""The small requests in instructions: our app and the floor (benchmarks/bare_app.py with
its round trips) called as WSGI apps in one process on the embedded SQLite set-up, each
request's CPU instructions counted by valgrind's callgrind.

    .venv/bin/python benchmarks/bench_instructions.py               # 300 requests each
    .venv/bin/python benchmarks/bench_instructions.py --requests 100 --no-write
    .venv/bin/python benchmarks/bench_instructions.py --worker      # and whole workers

Timings on a shared two-core machine drift by ±10% from one run to the next; the count
of instructions a request executes does not (the same figure to within 1% run after
run, whatever else the machine does), so a change of a few microseconds shows. What it
does not count: the time of system calls and of waiting, and what running among other
threads costs (bench_small_requests.py measures those, bench_in_process.py the latter).
With --worker, each app also runs as it is deployed: gunicorn with gunicorn.conf.py (one
worker, its threads, the access log on) under valgrind, loaded by wrk; the worker's
instructions per answered request then include gunicorn's HTTP parsing, the response
headers it checks and writes, the access log and the threads' hand-overs (about two
thirds of a small request's). Needs valgrind (Debian's package), and wrk for --worker.
Writes its section of docs/performance.md (the instructions markers).
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
from bench_small_requests import APPS
from bench_small_requests import TOKEN
from bench_small_requests import V2
from bench_small_requests import WORKLOADS
from bench_small_requests import production_setups
from bench_vs_sydent import wrk
from docs_section import markers
from docs_section import publish
from requests import Session

from testing.processes import answers
from testing.processes import free_port
from testing.processes import wait_until

START, _, _ = markers("instructions")
HERE = Path(__file__).resolve().parent
WARM_UP = 300  # requests before counting: caches filled, connections open
WORKER_SECONDS = 20  # of wrk under valgrind, counted (500 to 800 answers)


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
    return _total(out, f"{kind}, {workload}") / requests


def _total(dump: Path, what: str) -> int:
    """The instructions a callgrind output file counted."""
    totals = re.findall(r"^(?:totals|summary): (\d+)", dump.read_text(), re.M)
    if not totals or not int(totals[-1]):
        raise RuntimeError(f"{what}: no instructions counted ({dump})")
    return int(totals[-1])


def count_worker(kind: str, workload: str, env: dict[str, str], tmp: Path) -> float:
    """Instructions per answered request of one gunicorn worker serving `workload`."""
    port = free_port()
    out = Path(tempfile.mkdtemp(dir=tmp))
    env = {**env, "IDENTITY_BIND": f"127.0.0.1:{port}", "IDENTITY_WORKERS": "1"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # gunicorn.conf.py makes the master's own
    command = ["valgrind", "--tool=callgrind", "--trace-children=yes", "--instr-atstart=no",
               f"--callgrind-out-file={out}/%p", sys.executable, "-m", "gunicorn",
               "--no-control-socket", "-c", "gunicorn.conf.py", APPS[kind]]  # fmt: skip
    master = subprocess.Popen(command, env=env, cwd=HERE.parent, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(answers(base + V2, timeout=30), timeout=600, interval=1,
                   what=f"{kind} under valgrind")  # fmt: skip
        paths, token = WORKLOADS[workload]
        lines = tmp / "worker-lines.txt"
        lines.write_text("\n".join(paths) + "\n")
        script = [str(HERE / "rotate_lines.lua"), str(lines), "GET", *([TOKEN] if token else [])]
        # Warm-up: each line once (the worker's caches filled), then wrk (threads started).
        with Session() as session:
            headers = {"Authorization": f"Bearer {TOKEN}"} if token else {}
            for path in paths:
                session.get(base + path, headers=headers, timeout=60).raise_for_status()
        wrk(base, script, 4, 3)
        (worker,) = Path(f"/proc/{master.pid}/task/{master.pid}/children").read_text().split()
        control = ["callgrind_control", "-i", "on", worker]
        subprocess.run(control, check=True, capture_output=True)
        answered = wrk(base, script, 4, WORKER_SECONDS)["requests"]
        for step in (["-i", "off"], ["-d"]):  # counting off, then the counts written
            subprocess.run(["callgrind_control", *step, worker], check=True, capture_output=True)
    finally:
        master.terminate()
        master.wait(timeout=120)
    (dump,) = out.glob(f"{worker}.*")  # the one dump, made while counting was off
    return _total(dump, f"{kind}, {workload}, the worker") / answered


def _row(workload: str, floor: float, ours: float) -> str:
    extra, ratio = ours - floor, ours / floor
    row = f"| {workload} | {floor:,.0f} | {ours:,.0f} | **{extra:,.0f}** | {ratio:.2f} |"
    print(row, file=sys.stderr, flush=True)
    return row


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
    parser.add_argument("--worker", action="store_true", help="and whole gunicorn workers")
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
    workers = [
        "",
        f"With `--worker`: each app as deployed, gunicorn with `gunicorn.conf.py` (one worker,"
        " its threads, the access log on) under valgrind, loaded by wrk (4 connections) for"
        f" {WORKER_SECONDS} s after each line of the workload was asked once; the worker's"
        " instructions per answered request: gunicorn's HTTP parsing, the response headers"
        " it checks and writes, the access log and the threads' hand-overs included.",
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
                lines.append(_row(workload, floor, ours))
                if args.worker:
                    floor = count_worker("floor", workload, env, tmp)
                    ours = count_worker("ours", workload, env, tmp)
                    workers.append(_row(workload, floor, ours))
    if args.worker:
        lines += workers
    publish("instructions", lines, write=not args.no_write)


if __name__ == "__main__":
    main()
