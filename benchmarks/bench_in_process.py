"""The small requests without gunicorn: our app, the bare one and the floor (the bare one
making our round trips) called as WSGI apps in this process, alone on one thread, then
on four threads at once (as a gthread worker runs them), in CPU time per request.

    .venv/bin/python benchmarks/bench_in_process.py
    .venv/bin/python benchmarks/bench_in_process.py --only sqlite --threads 1 2 4

What it separates: the Python work a request costs beyond the round trips (ours − floor;
one thread: nothing else runs), and what running it among other threads adds (every
blocking call, a SQLite step, a socket read, lets another thread take the interpreter,
and each hand-over costs both threads CPU). The same workloads and set-ups as
bench_small_requests.py, with the same environment (metrics in multiprocess mode, rate
limits counted). Writes its section of docs/performance.md (the in-process markers).
"""

import argparse
import io
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench_small_requests import TOKEN
from bench_small_requests import WORKLOADS
from bench_small_requests import production_setups
from docs_section import markers
from docs_section import publish

START, _, _ = markers("in-process")
BATCH = 1000  # requests per measured batch; the best batch of each is kept
BATCHES = 12


def environ(path: str, token: bool) -> dict:
    path_info, _, query = path.partition("?")
    env = {
        "REQUEST_METHOD": "GET", "PATH_INFO": path_info, "QUERY_STRING": query,
        "SERVER_NAME": "localhost", "SERVER_PORT": "8090", "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "localhost", "REMOTE_ADDR": "127.0.0.1", "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""), "wsgi.errors": sys.stderr, "wsgi.multithread": True,
        "wsgi.multiprocess": True, "wsgi.run_once": False,
    }  # fmt: skip
    if token:
        env["HTTP_AUTHORIZATION"] = f"Bearer {TOKEN}"
    return env


def _serve(app, environs: list[dict], count: int) -> None:
    statuses = []

    def start_response(status, headers, exc_info=None):
        statuses.append(status)

    for i in range(count):
        body = app(dict(environs[i % len(environs)]), start_response)
        for _ in body:
            pass
        if hasattr(body, "close"):
            body.close()
    if not all(status.startswith("200") for status in statuses):
        raise RuntimeError(f"unexpected answers: {set(statuses)}")


def cpu_per_request(app, environs: list[dict], threads: int) -> float:
    """µs of this process's CPU per request, `threads` threads serving at once."""
    per_thread = BATCH // threads
    workers = [threading.Thread(target=_serve, args=(app, environs, per_thread))
               for _ in range(threads)]  # fmt: skip
    started = time.process_time()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return (time.process_time() - started) / (per_thread * threads) * 1e6


def measure(apps: dict, environs: list[dict], threads: int) -> dict[str, float]:
    """The best batch of each app, batches of the apps alternating."""
    for app in apps.values():
        _serve(app, environs, 200)  # warm-up
    runs: dict[str, list[float]] = {name: [] for name in apps}
    for _ in range(BATCHES):
        for name, app in apps.items():
            runs[name].append(cpu_per_request(app, environs, threads))
    return {name: min(batches) for name, batches in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=["postgresql", "sqlite"])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--no-write", action="store_true", help="print, do not edit the docs")
    args = parser.parse_args()
    lines = [
        START,
        "## Small requests in-process (`benchmarks/bench_in_process.py`)",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores. Our app, the bare"
        " app and the floor (the bare app making the same round trips as ours,"
        " `bare_app.py`) called as WSGI apps in one process (no gunicorn, no sockets but"
        " those to PostgreSQL and Redis), with the environment of `bench_small_requests.py`;"
        f" CPU time of the process per request (all its threads), the best of {BATCHES}"
        f" batches of {BATCH:,}, batches of the three apps alternating. extra = ours − floor:"
        " what our code costs beyond the round trips.",
    ]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for label, _, env in production_setups(tmp, args.only):
            os.environ.clear()
            os.environ.update(env)  # its own: nothing left from the set-up before
            os.environ["SERVER_SOFTWARE"] = "gunicorn/bench"  # as a worker builds the app
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(dir=tmp)
            from bare_app import create_app as create_bare_app

            from app import create_app  # after the environment: metrics read it on import

            apps = {"ours": create_app(), "floor": create_bare_app(round_trips=True),
                    "bare": create_bare_app()}  # fmt: skip
            columns = [f"{n} thread{'s' * (n > 1)}: ours / floor / bare / extra µs"
                       for n in args.threads]  # fmt: skip
            lines += ["", f"### {label}", "", "| endpoint | " + " | ".join(columns) + " |",
                      "|---" + "|---:" * len(columns) + "|"]  # fmt: skip
            for name, (paths, token) in WORKLOADS.items():
                environs = [environ(path, token) for path in paths]
                cells = []
                for threads in args.threads:
                    cpu = measure(apps, environs, threads)
                    cells.append(f"{cpu['ours']:.0f} / {cpu['floor']:.0f} / {cpu['bare']:.0f}"
                                 f" / **{cpu['ours'] - cpu['floor']:.0f}**")  # fmt: skip
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
                print(lines[-1], file=sys.stderr, flush=True)
            with apps["ours"].app_context():
                from identity.extensions import db

                db.engine.dispose()
    publish("in-process", lines, write=not args.no_write)


if __name__ == "__main__":
    main()
