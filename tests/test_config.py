"""Configuration layers (defaults, TOML file, IDENTITY_* variables) and start-up checks."""

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import click
import pytest
import requests

from app import create_app
from identity.config import DEFAULTS
from identity.config import ConfigError
from testing.processes import free_port
from testing.servers import Gunicorn

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def base(tmp_path):
    return {
        "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "SIGNING_KEY_PATH": str(tmp_path / "signing.key"),
        "INSTANCE_PATH": str(tmp_path),
        "DELIVERY_WORKER_ENABLED": False,
    }


def test_toml_file_then_environment_variables(tmp_path, monkeypatch, base):
    toml = tmp_path / "identity.toml"
    toml.write_text('PUBLIC_BASE_URL = "https://id.example.fr"\nMAIL_PORT = 2525\n')
    monkeypatch.setenv("IDENTITY_CONFIG", str(toml))
    monkeypatch.setenv("IDENTITY_MAIL_PORT", "587")
    monkeypatch.setenv("IDENTITY_FEDERATION_VERIFY_TLS", "false")
    app = create_app(base)
    assert app.config["PUBLIC_BASE_URL"] == "https://id.example.fr"
    assert app.config["MAIL_PORT"] == 587
    assert app.config["FEDERATION_VERIFY_TLS"] is False
    assert app.config["SERVER_NAME_FOR_SIGNING"] == "id.example.fr"


@pytest.mark.parametrize(
    ("variable", "value", "key"),
    [
        ("IDENTITY_MAIL_PORT", "smtp", "MAIL_PORT"),
        ("IDENTITY_RATELIMIT_ENABLED", "maybe", "RATELIMIT_ENABLED"),
        ("IDENTITY_FEDERATION_IP_ALLOWLIST", '["10.0.0.0/33"]', "FEDERATION_IP_ALLOWLIST"),
        ("IDENTITY_PUBLIC_BASE_URL", "ftp://id.example.fr", "PUBLIC_BASE_URL"),
        ("IDENTITY_SESSION_LIFETIME_SECONDS", "-5", "SESSION_LIFETIME_SECONDS"),
    ],
)
def test_bad_value_stops_start_up_naming_the_key(monkeypatch, base, variable, value, key):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=key):
        create_app(base)


def test_unreadable_config_file_names_identity_config(tmp_path, monkeypatch, base):
    bad = tmp_path / "bad.toml"
    bad.write_text("this is = = not toml")
    monkeypatch.setenv("IDENTITY_CONFIG", str(bad))
    with pytest.raises(ConfigError, match="IDENTITY_CONFIG"):
        create_app(base)


def test_signing_key_in_sydent_format_is_kept(tmp_path, base):
    import signedjson.key

    key = signedjson.key.generate_signing_key("0")
    seed = signedjson.key.encode_signing_key_base64(key)
    (tmp_path / "signing.key").write_text(f"ed25519 0 {seed}\n")
    runner = create_app(base).test_cli_runner()
    result = runner.invoke(args=["keys", "show"])
    assert result.output.strip() == "ed25519:0 " + signedjson.key.encode_verify_key_base64(
        key.verify_key
    )


def test_keys_generate_refuses_to_overwrite_without_force(tmp_path, base):
    runner = create_app(base).test_cli_runner()
    first = runner.invoke(args=["keys", "generate"])
    assert first.exit_code == 0 and "ed25519:0" in first.output
    again = runner.invoke(args=["keys", "generate"])
    assert again.exit_code != 0 and "--force" in again.output
    forced = runner.invoke(args=["keys", "generate", "--force"])
    assert forced.exit_code == 0


def test_every_key_is_documented():
    documented = (Path(__file__).parent.parent / "docs" / "configuration.md").read_text()
    missing = [key for key in DEFAULTS if f"`{key}`" not in documented]
    assert missing == []


# -- Through the real entry points: `flask` and `gunicorn` in a subprocess ----------------


def _env(tmp_path, **variables: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("IDENTITY_")}
    return {
        **env,
        "IDENTITY_SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "IDENTITY_SIGNING_KEY_PATH": str(tmp_path / "signing.key"),
        "IDENTITY_INSTANCE_PATH": str(tmp_path),
        "IDENTITY_DELIVERY_WORKER_ENABLED": "false",
        **variables,
    }


def flask(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "flask", "--app", "app", *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def gunicorn(env: dict[str, str]) -> subprocess.CompletedProcess:
    """Start gunicorn as production does, expecting it to refuse (it would serve on)."""
    env = {**env, "IDENTITY_BIND": f"127.0.0.1:{free_port()}", "IDENTITY_WORKERS": "2"}
    command = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "app:create_app()"]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def _problem_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if "MAIL_PORT" in line or "MAIL_SERVER" in line]


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("IDENTITY_MAIL_PORT", "smtp", "MAIL_PORT: expected a whole number, got 'smtp'"),
        ("IDENTITY_LOG_LEVEL", "LOUD", "LOG_LEVEL: expected DEBUG, INFO"),
        ("IDENTITY_MAIL_TIMEOUT", "soon", "MAIL_TIMEOUT: expected a whole number"),
        ("IDENTITY_DELIVERY_POLL_SECONDS", "often", "DELIVERY_POLL_SECONDS: expected a number"),
    ],
)
def test_a_bad_value_stops_a_command_with_one_line(tmp_path, variable, value, expected):
    result = flask(_env(tmp_path, **{variable: value}), "sessions", "purge-expired")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"Error: {expected}")


def test_a_bad_value_stops_gunicorn_with_one_line(tmp_path):
    result = gunicorn(_env(tmp_path, IDENTITY_MAIL_PORT="smtp", IDENTITY_MAIL_SERVER="localhost"))
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Traceback" not in output and "Worker failed to boot" not in output
    assert len(_problem_lines(output)) == 1
    assert "MAIL_PORT: expected a whole number, got 'smtp'" in output


def test_gunicorn_refuses_to_print_mails_unless_asked(tmp_path):
    result = gunicorn(_env(tmp_path))
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "Traceback" not in output
    [line] = _problem_lines(output)
    assert "MAIL_PRINT_TO_LOG" in line


def test_unknown_keys_are_warned_about_one_line_each(tmp_path):
    toml = tmp_path / "identity.toml"
    toml.write_text('MAIL_SERVR = "smtp.example.fr"\nMAIL_PORT = 2525\n')
    env = _env(tmp_path, IDENTITY_CONFIG=str(toml), IDENTITY_MAIL_SEVER="smtp.example.fr",
               IDENTITY_LOG_FORMAT="text")  # fmt: skip
    result = flask(env, "sessions", "purge-expired")
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "Unknown configuration key" in line]
    assert len(warnings) == 2
    # Each says where the key was set, and what it is most likely a typo of.
    [variable] = [line for line in warnings if "MAIL_SEVER" in line]
    assert "from the environment variable IDENTITY_MAIL_SEVER (a typo of MAIL_SERVER?)" in variable
    [in_file] = [line for line in warnings if "MAIL_SERVR" in line]
    assert f"from the file {toml} (a typo of MAIL_SERVER?)" in in_file


def test_a_broken_domains_file_leaves_commands_working(tmp_path):
    broken = tmp_path / "domains.yaml"
    broken.write_text("platforms: [unclosed\n")
    env = _env(tmp_path, IDENTITY_DOMAINS_PATH=str(broken), IDENTITY_LOG_FORMAT="text")
    purge = flask(env, "sessions", "purge-expired")
    assert purge.returncode == 0, purge.stderr
    assert "Traceback" not in purge.stderr
    check = flask(env, "domains", "check")
    assert check.returncode == 1
    assert "Traceback" not in check.stderr
    assert f"{broken} is invalid" in check.stderr and "YAML" in check.stderr


def test_commands_say_nothing_of_alembic_unless_a_migration_runs(tmp_path):
    env = _env(tmp_path, IDENTITY_LOG_FORMAT="text")
    first = flask(env, "sessions", "purge-expired")
    assert first.returncode == 0 and "Running upgrade" in first.stderr
    again = flask(env, "sessions", "purge-expired")
    assert again.returncode == 0
    assert "Context impl" not in again.stderr and "transactional DDL" not in again.stderr
    assert "alembic" not in again.stderr


def test_logs_are_text_in_a_terminal_and_json_otherwise(tmp_path):
    env = _env(tmp_path, IDENTITY_MAIL_SEVER="x")  # a typo, for a warning to read
    piped = flask(env, "sessions", "purge-expired")
    [line] = [line for line in piped.stderr.splitlines() if "MAIL_SEVER" in line]
    assert json.loads(line)["level"] == "WARNING"
    # The same command with stderr on a terminal.
    primary, secondary = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "flask", "--app", "app", "sessions",
                                "purge-expired"], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=secondary)  # fmt: skip
    os.close(secondary)
    output = b""
    while True:
        try:
            chunk = os.read(primary, 65536)
        except OSError:  # the terminal closes when the command exits
            break
        if not chunk:
            break
        output += chunk
    os.close(primary)
    assert process.wait(timeout=60) == 0
    [line] = [line for line in output.decode().splitlines() if "MAIL_SEVER" in line]
    assert not line.startswith("{") and "WARNING" in line and "\x1b" not in line


# -- The signing key: only the embedded mode's first start creates it -------------------


def test_a_command_never_creates_a_signing_key(tmp_path):
    """`flask keys show` on a mistyped SIGNING_KEY_PATH (or before any server started in
    the embedded mode) says so in one line, and creates nothing: a new key would be a
    second identity for the service."""
    mistyped = tmp_path / "signing.kye"
    env = _env(tmp_path, IDENTITY_SIGNING_KEY_PATH=str(mistyped))
    result = flask(env, "keys", "show")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    [line] = _lines_naming(result.stderr, "SIGNING_KEY_PATH")  # the others: the migration's
    assert line.startswith(f"Error: SIGNING_KEY_PATH: no signing key at {mistyped}")
    assert "flask keys generate" in line
    assert not mistyped.exists()
    embedded = _env(tmp_path, IDENTITY_INSTANCE_PATH=str(tmp_path / "instance"))
    del embedded["IDENTITY_SIGNING_KEY_PATH"]
    result = flask(embedded, "keys", "show")
    assert result.returncode == 1 and "no signing key at" in result.stderr
    assert not (tmp_path / "instance" / "signing.key").exists()
    # Created on purpose, it is shown.
    assert flask(env, "keys", "generate").returncode == 0
    shown = flask(env, "keys", "show")
    assert shown.returncode == 0 and shown.stdout.startswith("ed25519:0 ")


def _production_env(tmp_path, **variables: str) -> dict[str, str]:
    """A production set-up on public names; a variable given as "" is left unset."""
    public = {"IDENTITY_MAIL_PRINT_TO_LOG": "true",
              "IDENTITY_PUBLIC_BASE_URL": "https://id.tchap.example",
              "IDENTITY_SERVER_NAME_FOR_SIGNING": "id.tchap.example"}  # fmt: skip
    env = _env(tmp_path, **{**public, **variables})
    return {name: value for name, value in env.items() if value != ""}


def _lines_naming(output: str, key: str) -> list[str]:
    return [line for line in output.splitlines() if key in line]


def test_gunicorn_refuses_a_missing_key_outside_the_embedded_mode(tmp_path):
    key = tmp_path / "keys" / "signing.key"  # not the instance folder's
    result = gunicorn(_production_env(tmp_path, IDENTITY_SIGNING_KEY_PATH=str(key)))
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "Traceback" not in output, output
    [line] = _lines_naming(output, "SIGNING_KEY_PATH")
    assert f"no signing key at {key}" in line
    assert not key.exists()


# -- Production refuses to name this machine's loopback to the world ----------------------


@pytest.mark.parametrize(
    ("variables", "key", "expected"),
    [
        ({"IDENTITY_PUBLIC_BASE_URL": ""}, "PUBLIC_BASE_URL", "PUBLIC_BASE_URL: not set"),
        ({"IDENTITY_PUBLIC_BASE_URL": "http://localhost:5000"}, "PUBLIC_BASE_URL",
         "PUBLIC_BASE_URL: http://localhost:5000 is this machine's loopback"),
        ({"IDENTITY_PUBLIC_BASE_URL": "http://127.0.0.1:8090"}, "PUBLIC_BASE_URL",
         "PUBLIC_BASE_URL: http://127.0.0.1:8090 is this machine's loopback"),
        ({"IDENTITY_SERVER_NAME_FOR_SIGNING": ""}, "SERVER_NAME_FOR_SIGNING",
         "SERVER_NAME_FOR_SIGNING: not set"),
        ({"IDENTITY_SERVER_NAME_FOR_SIGNING": "[::1]:8090"}, "SERVER_NAME_FOR_SIGNING",
         "SERVER_NAME_FOR_SIGNING: [::1]:8090 is a loopback name"),
    ],
)  # fmt: skip
def test_gunicorn_refuses_an_unset_or_loopback_public_name(tmp_path, variables, key, expected):
    result = gunicorn(_production_env(tmp_path, **variables))
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "Traceback" not in output, output
    [line] = _lines_naming(output, key)
    assert expected in line and "DEVELOPMENT_DEPLOYMENT=true" in line
    assert not (tmp_path / "signing.key").exists()


def test_gunicorn_serves_a_public_name_or_a_declared_development_deployment(tmp_path):
    """The refusals above are not blanket: public names start, and so does a loopback
    deployment that says it is one (tests, a trial on one host)."""
    for name, variables in (
        ("public", {"IDENTITY_DEVELOPMENT_DEPLOYMENT": "false"}),
        ("trial", {"IDENTITY_DEVELOPMENT_DEPLOYMENT": "true", "IDENTITY_PUBLIC_BASE_URL": "",
                   "IDENTITY_SERVER_NAME_FOR_SIGNING": ""}),
    ):  # fmt: skip
        here = tmp_path / name
        env = {**_production_env(here, **variables), "IDENTITY_INSTANCE_PATH": str(here),
               "IDENTITY_WORKERS": "1", "IDENTITY_AUTO_MIGRATE": "true"}  # fmt: skip
        del env["IDENTITY_SIGNING_KEY_PATH"]  # the embedded key, created at first start
        with Gunicorn(env, ("-c", "gunicorn.conf.py")) as server:
            r = requests.get(f"{server.base}/_matrix/identity/v2/pubkey/ed25519:0", timeout=30)
            assert r.status_code == 200, r.text
        assert (here / "signing.key").exists()


# -- Commands an operator meets ------------------------------------------------------------


def test_flask_db_offers_operators_upgrade_and_warns_about_the_rest(tmp_path):
    env = _env(tmp_path, IDENTITY_LOG_FORMAT="text")
    listed = flask(env, "db", "--help")
    assert listed.returncode == 0 and "upgrade" in listed.stdout
    for authoring in ("migrate", "revision", "downgrade", "stamp", "merge", "edit", "init"):
        assert f"  {authoring} " not in listed.stdout
    assert flask(env, "db", "upgrade").returncode == 0
    before = flask(env, "db", "current").stdout
    # Without a terminal to confirm on, a downgrade changes nothing.
    downgrade = flask(env, "db", "downgrade")
    assert downgrade.returncode == 1, downgrade.stderr
    assert "Warning: `flask db downgrade` rewrites the schema version" in downgrade.stderr
    assert "Aborted" in downgrade.stderr
    assert flask(env, "db", "current").stdout == before and "(head)" in before
    authoring = flask(env, "db", "revision", "--help")
    assert authoring.returncode == 0  # still there for developers, only hidden


def test_every_command_option_says_what_it_does():
    from identity.cli import GROUPS

    for group in GROUPS:
        for name, command in group.commands.items():
            assert command.help, f"flask {group.name} {name}"
            for option in command.params:
                if not isinstance(option, click.Argument):
                    assert option.help, f"flask {group.name} {name} --{option.name}"


def test_domains_check_lists_the_problems_of_a_broken_file_once(tmp_path):
    broken = tmp_path / "domains.yaml"
    broken.write_text("platforms:\n  a:\n    server: 1\n")
    env = _env(tmp_path, IDENTITY_DOMAINS_PATH=str(broken), IDENTITY_LOG_FORMAT="text")
    check = flask(env, "domains", "check")
    assert check.returncode == 1
    assert check.stderr.count("server 1 is not a server name") == 1, check.stderr
    assert "`flask domains check` lists its problems" in check.stderr
