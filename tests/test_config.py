"""Configuration layers (defaults, TOML file, IDENTITY_* variables) and start-up checks."""

from pathlib import Path

import pytest

from app import create_app
from identity.config import DEFAULTS
from identity.config import ConfigError


@pytest.fixture
def base(tmp_path):
    return {
        "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "SIGNING_KEY_PATH": str(tmp_path / "signing.key"),
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
