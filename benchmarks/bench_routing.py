"""Routing speed: resolution against 10 to 100,000 rules, and /info under gunicorn.

    .venv/bin/python benchmarks/bench_routing.py        # needs wrk (apt-get install wrk)

Writes its section of docs/performance.md (between the routing markers) and prints it.
"""

import argparse
import json
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from docs_section import markers
from docs_section import write_section

from identity.routing.schema import load_text
from testing.processes import free_port
from testing.servers import Gunicorn
from testing.servers import migrate

START, END, _ = markers("routing")
SIZES = (10, 10_000, 100_000)
LOOKUPS = 20_000


def rules_yaml(count: int, rng: random.Random) -> tuple[str, list[str]]:
    """A domains.yaml with `count` rules (half exact, half with subdomains), and the
    domains it names."""
    platforms = [f"p{i}" for i in range(17)]
    lines = ["platforms:"]
    lines += [f"  {p}: {{server: {p}.tchap.example}}" for p in platforms]
    lines += ["default: p0", "domains:"]
    domains = []
    for i in range(count):
        domain = f"admin{i}-{rng.randrange(10**6)}.example.fr"
        domains.append(domain)
        spelling = domain if i % 2 else "." + domain
        lines.append(f"  {spelling}: {rng.choice(platforms)}")
    return "\n".join(lines) + "\n", domains


def addresses(domains: list[str], rng: random.Random) -> list[str]:
    """Realistic queries: known domains, their subdomains, and unknown domains."""
    picked = []
    for i in range(LOOKUPS):
        kind = i % 3
        if kind == 0:
            picked.append(f"agent{i}@{rng.choice(domains)}")
        elif kind == 1:
            picked.append(f"agent{i}@service.direction.{rng.choice(domains)}")
        else:
            picked.append(f"agent{i}@inconnu{i}.example.com")
    return picked


def resolution() -> dict[int, float]:
    """Nanoseconds per resolution (best of 7 runs) for each table size."""
    results = {}
    for size in SIZES:
        rng = random.Random(size)
        text, domains = rules_yaml(size, rng)
        table = load_text(text)
        queries = addresses(domains, random.Random(1))
        best = float("inf")
        for _ in range(7):
            start = time.perf_counter_ns()
            for address in queries:
                table.resolve(address)
            best = min(best, (time.perf_counter_ns() - start) / len(queries))
        results[size] = best
    return results


def serve(tmp: Path, workers: int) -> Gunicorn:
    env = {
        **os.environ,
        "IDENTITY_SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp / 'bench.sqlite3'}",
        "IDENTITY_INSTANCE_PATH": str(tmp),  # the server makes its signing key there
        "IDENTITY_DELIVERY_WORKER_ENABLED": "false",
        "IDENTITY_LOG_LEVEL": "WARNING",
        # wrk comes from one address: the per-IP limit would answer 429s.
        "IDENTITY_RATELIMIT_ENABLED": "false",
        # No mail is sent here; gunicorn refuses to start without a mail server otherwise.
        "IDENTITY_MAIL_PRINT_TO_LOG": "true",
    }
    migrate(env)
    # The settings below only, not gunicorn.conf.py (gunicorn reads it by default).
    port = free_port()
    options = ("-c", os.devnull, "-w", str(workers), "-b", f"127.0.0.1:{port}",
               "--log-level", "warning")  # fmt: skip
    return Gunicorn(env, options, log=tmp / "gunicorn.log", port=port)


def wrk(url: str, seconds: int, connections: int, domain: str | None = None) -> dict[str, float]:
    """Load `url`; with `domain`, each request asks about a new address of that domain."""
    command = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency"]
    if domain is not None:
        command += ["-s", str(Path(__file__).parent / "distinct_addresses.lua"), url, "--", domain]
    else:
        command.append(url)
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 0.001, "ms": 1, "s": 1000}[p99.group(2)]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non_2xx:
        raise RuntimeError(f"{url}: {non_2xx.group(1)} failed requests")
    return {"rps": rps, "p99_ms": float(p99.group(1)) * scale}


def http(seconds: int, workers: int, connections: int) -> dict[str, dict[str, float]]:
    with tempfile.TemporaryDirectory() as tmp:
        server = serve(Path(tmp), workers)
        base = server.base
        try:
            info = f"{base}/_matrix/identity/api/v1/info?medium=email&address="
            trivial = f"{base}/_matrix/identity/versions"
            wrk(trivial, 2, connections)  # warm-up
            # The trivial endpoint is also loaded through the Lua script /info needs (its
            # query string is ignored): on shared cores, wrk's own cost per request must
            # be the same on both sides of the ratio.
            return {
                "trivial JSON (/versions)": wrk(
                    f"{trivial}?client=", seconds, connections, "example.org"
                ),
                "trivial JSON (/versions), plain wrk": wrk(trivial, seconds, connections),
                "/info, agent domain": wrk(info, seconds, connections, "ac-versailles.fr"),
                "/info, unknown domain (invitation checked)": wrk(
                    info, seconds, connections, "partenaire.example"
                ),
            }
        finally:
            server.stop()


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        model = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text()).group(1)
        cpu = model
    except (OSError, AttributeError):
        pass
    python = platform.python_version()
    return f"{os.cpu_count()} cores ({cpu}), Python {python}, {platform.system()}"


def report(resolve: dict[int, float], served: dict, args: argparse.Namespace) -> str:
    ratio = resolve[SIZES[-1]] / resolve[SIZES[0]]
    trivial = served["trivial JSON (/versions)"]["rps"]
    plain = served["trivial JSON (/versions), plain wrk"]["rps"]
    lines = [
        START,
        "## Routing (`benchmarks/bench_routing.py`)",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {machine()}.",
        "",
        f"**Resolution** of {LOOKUPS:,} addresses (a third on a ruled domain, a third on a"
        " subdomain of one, a third unknown) against generated rules, half exact and half with"
        " subdomains; best of 7 runs, in-process:",
        "",
        "| rules | ns per address |",
        "|---:|---:|",
        *[f"| {size:,} | {ns:,.0f} |" for size, ns in resolve.items()],
        "",
        f"Ratio {SIZES[-1]:,} rules / {SIZES[0]} rules: **{ratio:.2f}** (target at most 1.5):"
        " the lookup walks the address's labels through hash tables, whatever the rule count.",
        "",
        f"**`/info` under gunicorn** ({args.workers} sync workers, SQLite), wrk with 2 threads and"
        f" {args.connections} connections for {args.seconds} s per endpoint, on the same"
        " machine (the load generator shares its cores). Every `/info` request asks about"
        " a different address (`benchmarks/distinct_addresses.lua`):",
        "",
        "| endpoint | requests/s | p99 (ms) | ratio to trivial | ratio to plain wrk |",
        "|---|---:|---:|---:|---:|",
        *[
            f"| {name} | {r['rps']:,.0f} | {r['p99_ms']:.1f} | {r['rps'] / trivial:.2f}"
            f" | {r['rps'] / plain:.2f} |"
            for name, r in served.items()
        ],
        "",
        "Target: `/info` at least 0.8 of the trivial endpoint. `/info` reads the address's"
        " binding (for `new_hs`), and for invitation-only platforms its pending invitations."
        " The ratio is taken against the trivial endpoint loaded the same way (wrk running"
        " the same Lua script, which costs wrk CPU on the cores the server shares); the"
        " last column compares with plain wrk, as an earlier version of this report did.",
        END,
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed for the HTTP part: apt-get install wrk")
    resolve = resolution()
    served = http(args.seconds, args.workers, args.connections)
    section = report(resolve, served, args)
    write_section("routing", section)
    print(section)
    print(json.dumps({"resolve_ns": resolve, "http": served}, indent=2))


if __name__ == "__main__":
    main()
