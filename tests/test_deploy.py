"""deploy/: the systemd unit passes systemd's checks, the nginx example serves the API.

The nginx example runs as written, but for its ports, certificate (a trustme CA's),
upstream (our gunicorn) and networks; nginx is Debian's, unpacked into the cache when
it is not installed (nothing is started or enabled on the machine).
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests
import signedjson.key
import trustme
import yaml

from identity.routing.schema import load_file
from testing.processes import ServerProcess
from testing.processes import answers
from testing.processes import free_port
from testing.servers import Gunicorn
from testing.servers import migrate
from testing.servers import service_env
from tests.conftest import IN_CI
from tests.helpers import V1
from tests.interop.synapse import ensure_synapse

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
CACHE_DIR = Path(os.environ.get("TCHAP_IDENTITY_CACHE", "~/.cache/tchap-identity")).expanduser()
UNITS = ("tchap-identity.service", "tchap-identity-migrate.service")


def _substituted(text: str, replacements: dict[str, str]) -> str:
    """`text` with each key replaced; a key the example no longer holds fails the test."""
    for old, new in replacements.items():
        assert old in text, f"the example no longer holds {old!r}"
        text = text.replace(old, new)
    return text


@pytest.mark.parametrize("name", UNITS)
def test_the_systemd_units_pass_systemds_checks(name, tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # The unit as installed, with this checkout and its virtualenv for /srv/tchap-identity.
    venv = Path(sys.prefix)
    text = (DEPLOY / "systemd" / name).read_text()
    text = text.replace("/srv/tchap-identity/.venv", str(venv))
    text = text.replace("/srv/tchap-identity", str(ROOT))
    unit = tmp_path / name
    unit.write_text(text)
    done = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                          cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr
    done = subprocess.run([analyze, "security", "--offline=true", str(unit)],
                          capture_output=True, text=True, cwd=tmp_path)  # fmt: skip
    level = re.search(r"Overall exposure level for \S+: ([\d.]+) (\w+)", done.stdout)
    assert level, done.stdout + done.stderr
    # systemd's scale: 0 (locked down) to 10 (exposed); "OK" is below 2.
    assert float(level.group(1)) < 2, done.stdout


def test_the_service_unit_reloads_gracefully_and_runs_gunicorn_as_its_user():
    unit = (DEPLOY / "systemd" / "tchap-identity.service").read_text()
    settings = [line.partition("=") for line in unit.splitlines() if "=" in line]
    values = {key: value for key, _, value in settings if not key.startswith("#")}
    assert values["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert values["User"] == "tchap-identity" and values["StateDirectory"] == "tchap-identity"
    assert values["ExecStart"].endswith("gunicorn -c gunicorn.conf.py 'app:create_app()'")
    sysusers = (DEPLOY / "systemd" / "tchap-identity.sysusers.conf").read_text()
    assert re.search(r"^u tchap-identity ", sysusers, re.MULTILINE)


def _nginx() -> str:
    """Debian's nginx: installed, or unpacked from its package into the cache."""
    for path in (shutil.which("nginx"), "/usr/sbin/nginx"):
        if path and os.access(path, os.X_OK):
            return path
    unpacked = CACHE_DIR / "nginx"
    binary = unpacked / "usr" / "sbin" / "nginx"
    if not binary.exists():
        if not shutil.which("apt-get"):
            _unavailable("nginx is not installed and apt-get is not there to fetch it")
        download = CACHE_DIR / "nginx-download"
        download.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["apt-get", "download", "nginx"], cwd=download,
                              capture_output=True, text=True)  # fmt: skip
        packages = sorted(download.glob("nginx_*.deb"))
        if done.returncode != 0 or not packages:
            _unavailable(f"cannot fetch Debian's nginx: {done.stderr.strip()[-500:]}")
        subprocess.run(["dpkg-deb", "-x", str(packages[-1]), str(unpacked)], check=True)
    return str(binary)


def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture
def gunicorn(tmp_path):
    env = service_env(
        f"sqlite:///{tmp_path / 'db.sqlite3'}",
        tmp_path,
        WORKERS="1",
        THREADS="2",
        DELIVERY_WORKER_ENABLED="false",
        PUBLIC_BASE_URL="https://id.example.test",
        TRUSTED_PROXY_COUNT="1",
        RATELIMIT_PER_IP="5/minute",
        INFO_TRUSTED_NETWORKS='["127.0.0.1/32"]',
    )
    migrate(env)
    with Gunicorn(env, ("-c", "gunicorn.conf.py"), log=tmp_path / "gunicorn.log") as server:
        yield server


@pytest.fixture
def nginx(gunicorn, tmp_path):
    """The example in front of `gunicorn`; returns (https base, http base, CA file)."""
    binary = _nginx()
    ca = trustme.CA()
    cert = ca.issue_cert("id.example.gouv.fr", "localhost")
    cert.cert_chain_pems[0].write_to_path(tmp_path / "fullchain.pem")
    for blob in cert.cert_chain_pems[1:]:
        blob.write_to_path(tmp_path / "fullchain.pem", append=True)
    cert.private_key_pem.write_to_path(tmp_path / "privkey.pem")
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(ca_file)
    https_port, http_port = free_port(), free_port()
    upstream = gunicorn.base.removeprefix("http://")
    site = _substituted((DEPLOY / "nginx" / "tchap-identity.conf").read_text(), {
        "    listen 80;\n": f"    listen 127.0.0.1:{http_port};\n",
        "    listen [::]:80;\n": "",
        "    listen 443 ssl http2;\n": f"    listen 127.0.0.1:{https_port} ssl http2;\n",
        "    listen [::]:443 ssl http2;\n": "",
        "/etc/ssl/tchap-identity/": f"{tmp_path}/",
        "server 127.0.0.1:8090;": f"server {upstream};",
    })  # fmt: skip
    (tmp_path / "site.conf").write_text(site)
    temp = tmp_path / "nginx-temp"
    temp.mkdir()
    # Only what a distribution's nginx.conf holds around conf.d/. The proxy connects from
    # another loopback address than the client's: the service must tell them apart.
    main = f"""
        daemon off;
        worker_processes 1;
        pid {tmp_path}/nginx.pid;
        error_log {tmp_path}/nginx-error.log info;
        events {{}}
        http {{
            access_log {tmp_path}/nginx-access.log;
            client_body_temp_path {temp}/body;
            proxy_temp_path {temp}/proxy;
            fastcgi_temp_path {temp}/fastcgi;
            uwsgi_temp_path {temp}/uwsgi;
            scgi_temp_path {temp}/scgi;
            proxy_bind 127.0.0.2;
            include {tmp_path}/site.conf;
        }}
    """
    (tmp_path / "nginx.conf").write_text(main)
    if os.geteuid() == 0:
        # Workers would run as nobody, who cannot enter pytest's temporary directories.
        (tmp_path / "nginx.conf").write_text("user root;\n" + main)
    command = [binary, "-p", str(tmp_path), "-e", str(tmp_path / "nginx-error.log"),
               "-c", str(tmp_path / "nginx.conf")]  # fmt: skip
    checked = subprocess.run([*command, "-t"], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    # nginx 1.25 and later deprecate `listen … http2`, which 1.22 (bookworm) needs.
    warnings = [line for line in checked.stderr.splitlines()
                if "[warn]" in line and "http2" not in line]  # fmt: skip
    assert not warnings, checked.stderr
    base = f"https://localhost:{https_port}"
    server = ServerProcess(command, cwd=tmp_path, env=os.environ, log=tmp_path / "nginx.log",
                           what="nginx", also_show=[tmp_path / "nginx-error.log"])  # fmt: skip
    with server.start(answers(f"{base}/health", verify=str(ca_file))):
        yield base, f"http://127.0.0.1:{http_port}", str(ca_file)


def test_the_nginx_example_serves_the_api(nginx):
    base, plain, ca_file = nginx
    r = requests.get(f"{plain}/_matrix/identity/v2", allow_redirects=False, timeout=10)
    assert r.status_code == 301 and r.headers["Location"].startswith("https://")

    r = requests.get(f"{base}/_matrix/identity/v2", verify=ca_file, timeout=10)
    assert r.status_code == 200, r.text
    # One copy, the proxy's (the service's own is hidden: a browser heeds the first).
    assert r.headers["Strict-Transport-Security"] == "max-age=63072000"
    # nginx's $request_id (32 hex digits) reaches the service, which answers with it.
    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["X-Request-ID"])
    # Only the service's paths.
    assert requests.get(f"{base}/", verify=ca_file, timeout=10).status_code == 404
    r = requests.get(f"{base}/metrics", verify=ca_file, timeout=10)
    assert r.status_code == 403 and "identity_" not in r.text


def test_the_nginx_example_passes_the_largest_lookups_and_the_services_own_413(nginx):
    base, _, ca_file = nginx
    # The most a bulk lookup may carry: 10,000 entries of about 300 bytes, above 3 MB.
    threepids = [["email", f"{i:05d}{'x' * 270}@example.fr"] for i in range(10_000)]
    body = json.dumps({"threepids": threepids})
    assert len(body) > 3_000_000
    r = requests.post(f"{base}{V1}/bulk_lookup", data=body, verify=ca_file, timeout=60,
                      headers={"Content-Type": "application/json"})  # fmt: skip
    assert r.status_code == 200, r.text
    assert r.json() == {"threepids": []}
    # Beyond MAX_REQUEST_BYTES elsewhere: the service's Matrix error, not nginx's page.
    padding = "x" * 100_000
    r = requests.post(f"{base}{V1}/validate/email/requestToken", verify=ca_file, timeout=10,
                      json={"client_secret": "s", "email": "a@b.fr", "send_attempt": 1,
                            "padding": padding})  # fmt: skip
    assert (r.status_code, r.json()["errcode"]) == (413, "M_TOO_LARGE")


def test_the_service_sees_the_clients_address_not_the_proxys_nor_a_forged_one(nginx):
    base, _, ca_file = nginx
    query = {"medium": "email", "address": "jean.martin@ssi.gouv.fr"}
    # Only 127.0.0.1, the client's address, is told the protected homeserver; nginx
    # connects from 127.0.0.2.
    r = requests.get(f"{base}{V1}/info", params=query, verify=ca_file, timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["hs"] == "agent.ssi.tchap.gouv.fr"
    # A client naming other addresses in X-Forwarded-For is still itself: its requests
    # count against one address (5 a minute), and it is refused past them.
    statuses = []
    for i in range(8):
        forged = {"X-Forwarded-For": f"198.51.100.{i}"}
        r = requests.get(f"{base}{V1}/info", params=query, headers=forged, verify=ca_file,
                         timeout=10)  # fmt: skip
        statuses.append(r.status_code)
    assert 429 in statuses, statuses
    # The internal API is closed to all but the homeservers' networks, by nginx itself.
    r = requests.get(f"{base}{V1}/internal-info", params=query, verify=ca_file, timeout=10)
    assert r.status_code == 403 and "<html>" in r.text


# Run by Synapse's Python: load a homeserver.yaml as Synapse does (a bad value is a
# ConfigError), then print what Synapse makes of it and its /.well-known/matrix/client.
SYNAPSE_READS = """
import asyncio, json, os, sys
import synapse.config
from synapse.config.homeserver import HomeServerConfig
from synapse.rest.well_known import WellKnownBuilder

config = HomeServerConfig.load_config("check", ["-c", sys.argv[1]])
hs = type("HomeServer", (), {"config": config, "get_auth": lambda self: None})()
sources = ""
folder = os.path.dirname(synapse.config.__file__)
for name in sorted(os.listdir(folder)):
    if name.endswith(".py"):
        with open(os.path.join(folder, name)) as f:
            sources += f.read()
print(json.dumps({
    "well_known": asyncio.run(WellKnownBuilder(hs).get_well_known()),
    "email": {
        "smtp_host": config.email.email_smtp_host,
        "invite_client_location": config.email.invite_client_location,
    },
    "registrations_require_3pid": config.registration.registrations_require_3pid,
    "ip_range_whitelist": [str(n) for n in config.server.ip_range_allowlist.iter_cidrs()],
    "sources": sources,
}))
"""


@pytest.mark.interop
def test_synapse_reads_the_snippet_and_serves_the_well_known(tmp_path):
    python = ensure_synapse()
    snippet = yaml.safe_load((DEPLOY / "synapse" / "homeserver.yaml").read_text())
    signing_key = tmp_path / "signing.key"
    with signing_key.open("w") as f:
        signedjson.key.write_signing_keys(f, [signedjson.key.generate_signing_key("a_test")])
    config = {
        "server_name": "agent.education.tchap.gouv.fr",
        "report_stats": False,
        "signing_key_path": str(signing_key),
        "media_store_path": str(tmp_path / "media"),
        "database": {"name": "sqlite3", "args": {"database": str(tmp_path / "hs.db")}},
        **snippet,
    }
    (tmp_path / "homeserver.yaml").write_text(yaml.safe_dump(config))
    done = subprocess.run([str(python), "-c", SYNAPSE_READS, str(tmp_path / "homeserver.yaml")],
                          capture_output=True, text=True, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    read = json.loads(done.stdout.splitlines()[-1])

    # Synapse ignores the keys it does not know: each one must be among those it reads.
    names = [*snippet, *(f"email.{key}" for key in snippet["email"])]
    unknown = [n for n in names if f'"{n.rpartition(".")[2]}"' not in read["sources"]]
    assert not unknown, f"keys Synapse does not read: {unknown}"
    assert read["email"] == {
        "smtp_host": snippet["email"]["smtp_host"],
        "invite_client_location": snippet["email"]["invite_client_location"],
    }
    assert read["registrations_require_3pid"] == ["email"]
    # (Synapse adds each IPv4 range's IPv6-mapped twin.)
    assert set(snippet["ip_range_whitelist"]) <= set(read["ip_range_whitelist"])

    # The file a web server serves is the one Synapse itself serves with this snippet.
    well_known = json.loads((DEPLOY / "well-known" / "matrix" / "client").read_text())
    assert read["well_known"] == well_known
    assert well_known["m.identity_server"]["base_url"] == snippet["default_identity_server"]


def test_the_snippets_registration_patterns_follow_domains_yaml():
    """The example homeserver admits at registration only addresses that the shipped
    domains.yaml routes to it."""
    snippet = yaml.safe_load((DEPLOY / "synapse" / "homeserver.yaml").read_text())
    patterns = [re.compile(rule["pattern"]) for rule in snippet["allowed_local_3pids"]]
    table = load_file(str(ROOT / "domains.yaml"))
    server = "agent.education.tchap.gouv.fr"  # the homeserver the snippet configures
    admitted = ["a.b@education.gouv.fr", "a@ac-versailles.fr", "a@dgesco.education.gouv.fr",
                "a@enseignementsup-recherche.gouv.fr"]  # fmt: skip
    refused = ["a@interieur.gouv.fr", "a@ac-normandie.fr", "a@education.gouv.fr.example.com",
               "a@noteducation.gouv.fr", "a@gmail.com"]  # fmt: skip
    for address in admitted + refused:
        matches = any(pattern.search(address) for pattern in patterns)
        assert matches == (address in admitted), address
        routed_here = table.resolve(address).platform.server == server
        assert matches == routed_here, address
