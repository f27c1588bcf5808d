"""Running the service as production does, in a subprocess: migrations, then gunicorn."""

import os
import subprocess
import sys
from pathlib import Path
from typing import IO

from testing.processes import ServerProcess
from testing.processes import answers
from testing.processes import free_port

ROOT = Path(__file__).resolve().parent.parent


def service_env(database_url: str, directory: Path, **settings: str) -> dict[str, str]:
    """The environment of a service process: this process's, with the database,
    `directory` as the instance folder (the server creates its signing key there on
    first start) and `settings` (configuration keys) as IDENTITY_* variables."""
    return {
        **os.environ,
        "IDENTITY_SQLALCHEMY_DATABASE_URI": database_url,
        "IDENTITY_INSTANCE_PATH": str(directory),
        **{f"IDENTITY_{key}": value for key, value in settings.items()},
    }


def migrate(env: dict[str, str]) -> None:
    """`flask db upgrade` once, before the workers start, as a deployment does."""
    subprocess.run([sys.executable, "-m", "flask", "--app", "app", "db", "upgrade"],
                   cwd=ROOT, env=env, check=True, capture_output=True)  # fmt: skip


class Gunicorn(ServerProcess):
    """`gunicorn app:create_app()` on a loopback port, started and ready (/health answers).

    :param options: gunicorn's options, e.g. ("-c", "gunicorn.conf.py") or ("-w", "2").
    :param log: where its output goes (nowhere by default): a file or an open file object.
    :param port: the port (a free one by default).
    :param ca_file: served over TLS (with --certfile/--keyfile in `options`) for `localhost`,
        with a certificate of this CA.
    :param ready_status: the status `ready_path` must answer to be ready (any by default).
    :param app: the WSGI application gunicorn serves (another one for a benchmark's baseline).
    :param root: the source tree it runs from (another one for a benchmark's baseline).
    """

    def __init__(self, env: dict[str, str], options: tuple[str, ...],
                 log: Path | IO | None = None, *, port: int | None = None,
                 ca_file: str | None = None, ready_status: int | None = None,
                 timeout: float = 60, app: str = "app:create_app()",
                 ready_path: str = "/health", root: Path = ROOT) -> None:  # fmt: skip
        self.port = port or free_port()
        self.base = f"https://localhost:{self.port}" if ca_file else f"http://127.0.0.1:{self.port}"
        # Migrations run before, as a deployment does (unless the test asks otherwise).
        env = {"IDENTITY_AUTO_MIGRATE": "false", **env, "IDENTITY_BIND": f"127.0.0.1:{self.port}"}
        if not env.get("IDENTITY_MAIL_SERVER"):
            env.setdefault("IDENTITY_MAIL_PRINT_TO_LOG", "true")  # else gunicorn refuses
        # A loopback server: gunicorn refuses loopback public URLs and signing names else.
        env.setdefault("IDENTITY_DEVELOPMENT_DEPLOYMENT", "true")
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # each master makes its own
        bind = () if "-c" in options else ("-b", f"127.0.0.1:{self.port}")
        # gunicorn's control socket has one path per user: instances would share it.
        command = [sys.executable, "-m", "gunicorn", "--no-control-socket", *options, *bind,
                   app]  # fmt: skip
        super().__init__(command, cwd=root, env=env, log=log, what="gunicorn")
        ready = answers(f"{self.base}{ready_path}", status=ready_status, verify=ca_file or True,
                        timeout=5)  # fmt: skip
        self.start(ready, timeout=timeout)

    def workers(self) -> list[int]:
        """The pids of the worker processes."""
        children = Path(f"/proc/{self.pid}/task/{self.pid}/children")
        return [int(pid) for pid in children.read_text().split()]
