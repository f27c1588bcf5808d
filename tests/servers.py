"""Running the service as production does, in a subprocess: migrations, then gunicorn."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import requests

from tests.support import free_port

ROOT = Path(__file__).resolve().parent.parent


def migrate(env: dict[str, str]) -> None:
    """`flask db upgrade` once, before the workers start, as a deployment does."""
    subprocess.run([sys.executable, "-m", "flask", "--app", "app", "db", "upgrade"],
                   cwd=ROOT, env=env, check=True, capture_output=True)  # fmt: skip


class Gunicorn:
    """`gunicorn app:create_app()` on a free loopback port, started and ready.

    :param options: gunicorn's options, e.g. ("-c", "gunicorn.conf.py") or ("-w", "2").
    :param log: where its output goes (nowhere by default).
    """

    def __init__(self, env: dict[str, str], options: tuple[str, ...], log: IO | None = None):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        # Migrations run before, as a deployment does (unless the test asks otherwise).
        env = {"IDENTITY_AUTO_MIGRATE": "false", **env, "IDENTITY_BIND": f"127.0.0.1:{self.port}"}
        if not env.get("IDENTITY_MAIL_SERVER"):
            env.setdefault("IDENTITY_MAIL_PRINT_TO_LOG", "true")  # else gunicorn refuses
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # each master makes its own
        bind = () if "-c" in options else ("-b", f"127.0.0.1:{self.port}")
        output = log if log is not None else subprocess.DEVNULL
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", *options, *bind, "app:create_app()"],
            cwd=ROOT, env=env, stdout=output, stderr=output, start_new_session=True,
        )  # fmt: skip
        self._wait_until_ready()

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + 60
        while True:
            try:
                requests.get(f"{self.base}/health", timeout=5)
                return
            except requests.RequestException:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise
                time.sleep(0.1)

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def kill(self) -> None:
        """SIGKILL the master and its workers at once: no chance to finish anything."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=30)
