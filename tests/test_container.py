"""The Containerfile: built with buildah, then run as an operator runs it.

No registry is reachable from the test machines: the base is a Debian made with
mmdebstrap (cached in ~/.cache/tchap-identity), passed as BASE; pip reaches the index
through the machine's CA bundle and pip settings, given to the builder stage only, in
a base of its own (BUILDER_BASE). The image runs with `buildah run --isolation chroot`,
which shares the host's network: the server reaches the test PostgreSQL, Redis and SMTP
sink on loopback. Everything lives in a buildah storage of the test's own, removed at
the end. About two minutes with the base cached (docs/deployment.md).
"""

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
import redis
import requests
import signedjson.key
import signedjson.sign

from testing.processes import OWNER
from testing.processes import OWNER_VARIABLE
from testing.processes import ServerProcess
from testing.processes import answers
from testing.processes import free_port
from tests.conftest import IN_CI
from tests.conftest import throwaway_postgres
from tests.helpers import V1
from tests.helpers import code_from_mail
from tests.helpers import link_from_mail

pytestmark = [pytest.mark.container, pytest.mark.postgres]

ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = Path(os.environ.get("TCHAP_IDENTITY_CACHE", "~/.cache/tchap-identity")).expanduser()
# The base: Debian's Python, its venv module and the CA certificates (federation and
# SMTP over TLS), without documentation. Its file name changes with these arguments.
MMDEBSTRAP_ARGS = (
    "--variant=minbase",
    "--include=python3,python3-venv,ca-certificates",
    "--dpkgopt=path-exclude=/usr/share/doc/*",
    "--dpkgopt=path-exclude=/usr/share/man/*",
    "--dpkgopt=path-exclude=/usr/share/locale/*",
    "bookworm",
)
SYSTEM_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
PUBLIC_BASE_URL = "https://id.example.test"
ADDRESS = "marie.dupont@ac-versailles.fr"
MXID = "@marie.dupont-ac-versailles.fr:agent.education.tchap.gouv.fr"


def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"The container test is required in CI: {reason}")
    pytest.skip(reason)


def _ensure_tools() -> None:
    """buildah and mmdebstrap, installed from Debian's packages when missing (as root)."""
    if os.geteuid() != 0:
        _unavailable("building and running an image with buildah needs root here")
    if shutil.which("buildah") and shutil.which("mmdebstrap"):
        return
    if not shutil.which("apt-get"):
        _unavailable("buildah or mmdebstrap is missing and apt-get is not there to install them")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"],
                    ["apt-get", "install", "-y", "-qq", "--no-install-recommends",
                     "buildah", "mmdebstrap"]):  # fmt: skip
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            _unavailable(f"cannot install buildah and mmdebstrap: {done.stderr.strip()[-500:]}")


@dataclass
class Buildah:
    """buildah on a storage of its own (vfs: no overlay mounts needed)."""

    root: Path

    def command(self, *args: str) -> list[str]:
        return ["buildah", "--root", str(self.root / "storage"),
                "--runroot", str(self.root / "run"), "--storage-driver", "vfs",
                *args]  # fmt: skip

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(self.command(*args), capture_output=True, text=True)
        if check and done.returncode != 0:
            raise AssertionError(f"buildah {' '.join(args[:2])} failed:\n{done.stderr[-3000:]}")
        return done

    def image_config(self, image: str) -> dict:
        return json.loads(self("inspect", "--type", "image", image).stdout)["Docker"]["config"]


def _base_tarball() -> Path:
    """The mmdebstrap base, made once and kept in the cache (about a minute to make)."""
    digest = hashlib.sha256(" ".join(MMDEBSTRAP_ARGS).encode()).hexdigest()[:12]
    path = CACHE_DIR / "container" / f"debian-{digest}.tar"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.stem}.{uuid.uuid4().hex}.partial.tar")
        try:
            subprocess.run(["mmdebstrap", "--quiet", "--format=tar", *MMDEBSTRAP_ARGS,
                            str(partial)], check=True, capture_output=True)  # fmt: skip
            partial.rename(path)  # whole or absent, whoever makes it at the same time
        finally:
            partial.unlink(missing_ok=True)
    return path


def _pip_conf() -> str:
    """This machine's pip settings that reach an index over the network, and its CA bundle
    (the index may be behind a TLS proxy whose authority only the bundle holds)."""
    listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"],
                            capture_output=True, text=True).stdout  # fmt: skip
    lines = ["[global]", f"cert = {SYSTEM_CA_BUNDLE}"]
    for line in listed.splitlines():
        key, _, value = line.partition("=")
        name = key.rpartition(".")[2]
        value = value.strip("'\"")
        # Local indexes (file:, a directory) are not in the build's file system.
        urls = [url for url in value.split() if url.startswith(("http:", "https:"))]
        if name in ("index-url", "extra-index-url") and urls:
            lines.append(f"{name} = {' '.join(urls)}")
        elif name == "trusted-host":
            lines.append(f"{name} = {value}")
    return "\n".join(lines) + "\n"


def _make_bases(buildah: Buildah, tag: str, work: Path) -> tuple[str, str]:
    """(BASE, BUILDER_BASE): the Debian from the tarball, and the same with this
    machine's CA bundle and pip settings for the builder stage."""
    base, builder = f"localhost/tchap-test-base:{tag}", f"localhost/tchap-test-builder:{tag}"
    container = buildah("from", "scratch").stdout.strip()
    buildah("add", container, str(_base_tarball()), "/")  # a tarball is unpacked
    buildah("commit", "--quiet", "--rm", container, base)
    pip_conf = work / "pip.conf"
    pip_conf.write_text(_pip_conf())
    container = buildah("from", base).stdout.strip()
    buildah("copy", container, str(SYSTEM_CA_BUNDLE), str(SYSTEM_CA_BUNDLE))
    buildah("copy", container, str(pip_conf), "/etc/pip.conf")
    buildah("commit", "--quiet", "--rm", container, builder)
    return base, builder


@dataclass
class Image:
    buildah: Buildah
    name: str


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Iterator[Image]:
    _ensure_tools()
    work = tmp_path_factory.mktemp("container")
    buildah = Buildah(work)
    tag = uuid.uuid4().hex[:8]
    name = f"localhost/tchap-identity:test-{tag}"
    try:
        base, builder = _make_bases(buildah, tag, work)
        # --format docker: the OCI format has no HEALTHCHECK.
        buildah("bud", "--isolation", "chroot", "--format", "docker",
                "--build-arg", f"BASE={base}", "--build-arg", f"BUILDER_BASE={builder}",
                "--file", str(ROOT / "Containerfile"), "--tag", name, str(ROOT))  # fmt: skip
        yield Image(buildah, name)
    finally:
        # vfs copies every layer: hundreds of megabytes per image, none left behind.
        buildah("rm", "--all", check=False)
        buildah("rmi", "--all", "--force", check=False)
        shutil.rmtree(work, ignore_errors=True)


@dataclass
class Container:
    buildah: Buildah
    id: str
    env: dict[str, str]

    def run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.buildah(*self.run_args(*command), check=check)

    def run_args(self, *command: str) -> list[str]:
        options = [f"--env={key}={value}" for key, value in self.env.items()]
        return ["run", "--isolation", "chroot", *options, self.id, "--", *command]


@pytest.fixture
def database() -> Iterator[str]:
    """A database of its own: the session's may have been migrated by other tests."""
    with throwaway_postgres() as url:
        yield url


@pytest.fixture
def container(image, database, redis_url, smtp) -> Iterator[Container]:
    port = free_port()
    env = {
        "IDENTITY_SQLALCHEMY_DATABASE_URI": database,
        "IDENTITY_RATELIMIT_STORAGE_URI": redis_url,
        "IDENTITY_MAIL_SERVER": smtp.host,
        "IDENTITY_MAIL_PORT": str(smtp.port),
        "IDENTITY_PUBLIC_BASE_URL": PUBLIC_BASE_URL,
        "IDENTITY_SERVER_NAME_FOR_SIGNING": PUBLIC_BASE_URL.removeprefix("https://"),
        "IDENTITY_BIND": f"127.0.0.1:{port}",
        "IDENTITY_WORKERS": "2",
        "IDENTITY_THREADS": "2",
        # What the test starts is found and stopped by testing.processes, inside too.
        OWNER_VARIABLE: OWNER,
    }
    name = image.buildah("from", image.name).stdout.strip()
    try:
        yield Container(image.buildah, name, env)
    finally:
        image.buildah("rm", name, check=False)


def test_the_image_serves_a_whole_round_trip(image, container, smtp, redis_url, tmp_path):
    config = container.buildah.image_config(image.name)
    assert config["User"] == "identity"
    assert config["Entrypoint"] == ["gunicorn", "-c", "gunicorn.conf.py"]
    healthcheck = config["Healthcheck"]["Test"]
    assert healthcheck[0] == "CMD"

    # Neither a compiler nor the builder's pip settings reached the final image.
    found = container.run("sh", "-c", "command -v cc gcc clang make || true").stdout
    assert found.strip() == ""
    assert container.run("test", "-e", "/etc/pip.conf", check=False).returncode == 1
    assert container.run("id", "-u").stdout.strip() == "10001"

    # The documented one-shot, before the servers start.
    migrated = container.run("flask", "db", "upgrade")
    assert "Running upgrade" in migrated.stdout + migrated.stderr
    database = container.env["IDENTITY_SQLALCHEMY_DATABASE_URI"]
    with psycopg.connect(database.replace("postgresql+psycopg://", "postgresql://")) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone()

    assert container.run(*healthcheck[1:], check=False).returncode != 0  # nothing serves yet
    base = f"http://{container.env['IDENTITY_BIND']}"
    command = container.buildah.command(*container.run_args(*config["Entrypoint"], *config["Cmd"]))
    log = tmp_path / "container.log"
    with ServerProcess(command, cwd=ROOT, env=os.environ, log=log, what="the container").start(
        answers(f"{base}/health", status=200), timeout=180
    ):
        assert container.run(*healthcheck[1:], check=False).returncode == 0
        # The key was created at start by the server, as its user, in the volume.
        key = container.run("stat", "-c", "%u %a", "/var/lib/tchap-identity/signing.key")
        assert key.stdout.split() == ["10001", "600"]

        secret = uuid.uuid4().hex
        body = {"client_secret": secret, "email": ADDRESS, "send_attempt": 1}
        r = requests.post(f"{base}{V1}/validate/email/requestToken", json=body, timeout=30)
        assert r.status_code == 200, r.text
        sid = r.json()["sid"]
        mail = smtp.last()
        assert mail.recipients == [ADDRESS]
        assert link_from_mail(mail).startswith(f"{PUBLIC_BASE_URL}/_matrix/identity/")
        body = {"sid": sid, "client_secret": secret, "token": code_from_mail(mail)}
        r = requests.post(f"{base}{V1}/validate/email/submitToken", json=body, timeout=30)
        assert r.json() == {"success": True}, r.text

        body = {"sid": sid, "client_secret": secret, "mxid": MXID}
        r = requests.post(f"{base}{V1}/3pid/bind", json=body, timeout=30)
        assert r.status_code == 200, r.text
        association = r.json()
        assert (association["address"], association["mxid"]) == (ADDRESS, MXID)
        public = requests.get(f"{base}{V1}/pubkey/ed25519:0", timeout=30).json()["public_key"]
        verify_key = signedjson.key.decode_verify_key_base64("ed25519", "0", public)
        signedjson.sign.verify_signed_json(association, "id.example.test", verify_key)

        query = {"medium": "email", "address": ADDRESS}
        r = requests.get(f"{base}{V1}/lookup", params=query, timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["mxid"] == MXID
        signedjson.sign.verify_signed_json(r.json(), "id.example.test", verify_key)

        # The rate limits were counted in the test's Redis database.
        client = redis.Redis.from_url(redis_url)
        with contextlib.closing(client):
            assert client.dbsize() > 0

    output = log.read_text()
    assert "Listening at: http://127.0.0.1:" in output
    assert ADDRESS not in output  # addresses are never logged in full
