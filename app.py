"""Application factory: the only place that wires the service together.

Run with `flask --app app run` or `gunicorn 'app:create_app()'`.
"""

import os
from collections.abc import Mapping
from typing import Any

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from identity import deliveries
from identity import federation
from identity import limits
from identity import metrics
from identity import routing
from identity import terms
from identity.api import register_api
from identity.cli import register_cli
from identity.clock import Clock
from identity.clock import SystemClock
from identity.config import DEFAULTS
from identity.config import Settings
from identity.config import check_config
from identity.config import load_file
from identity.extensions import db
from identity.extensions import mail
from identity.extensions import migrate
from identity.logs import init_logging
from identity.logs import init_request_ids
from identity.pages import bp as pages_bp
from identity.storage import models  # noqa: F401  (registers the tables)

HERE = os.path.dirname(os.path.abspath(__file__))
MIGRATIONS_DIR = os.path.join(HERE, "migrations")


def create_app(config: Mapping[str, Any] | None = None, *, clock: Clock | None = None) -> Flask:
    """Build the service: configuration, extensions, API, pages and commands."""
    app = Flask(__name__, instance_relative_config=True)
    _load_config(app, config)
    init_logging(app.config["LOG_LEVEL"], app.config["LOG_FORMAT"])

    db.init_app(app)
    migrate.init_app(app, db, directory=MIGRATIONS_DIR)
    mail.init_app(app)
    federation.init_app(app)
    terms.init_app(app)
    routing.init_app(app)
    deliveries.init_app(app)
    limits.init_app(app)
    app.extensions["identity.clock"] = clock or SystemClock()
    app.extensions["identity.settings"] = Settings.from_config(app.config)

    init_request_ids(app)
    metrics.init_app(app)
    register_api(app)
    app.register_blueprint(pages_bp)
    register_cli(app)
    if app.config["TRUSTED_PROXY_COUNT"]:
        # Client IPs (rate limits, trusted networks) come from the proxies' X-Forwarded-For.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=app.config["TRUSTED_PROXY_COUNT"])
    if app.config["AUTO_MIGRATE"]:
        _upgrade_schema(app)
    return app


def _load_config(app: Flask, config: Mapping[str, Any] | None) -> None:
    app.config.from_mapping(DEFAULTS)
    if path := os.environ.get("IDENTITY_CONFIG"):
        load_file(app.config, path)
    app.config.from_prefixed_env("IDENTITY")
    app.config.update(config or {})
    os.makedirs(app.instance_path, exist_ok=True)
    if not app.config["SQLALCHEMY_DATABASE_URI"]:
        app.config["SQLALCHEMY_DATABASE_URI"] = "sqlite:///" + os.path.join(
            app.instance_path, "identity.sqlite3"
        )
    if not app.config["SIGNING_KEY_PATH"]:
        app.config["SIGNING_KEY_PATH"] = os.path.join(app.instance_path, "signing.key")
    if not app.config["DOMAINS_PATH"]:
        app.config["DOMAINS_PATH"] = os.path.join(HERE, "domains.yaml")
    options = dict(app.config["SQLALCHEMY_ENGINE_OPTIONS"])
    # Bound parameters (sids, client secrets, codes, addresses) never reach a log, even
    # when an operator passes engine options of their own.
    options["hide_parameters"] = True
    if app.config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite"):
        # A file has no connection to lose: pinging it before each request is waste.
        options.pop("pool_pre_ping", None)
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = options
    if app.config.get("AUTO_MIGRATE") is None:
        # The embedded SQLite mode needs no set-up step; PostgreSQL deployments run
        # `flask db upgrade` before starting, as any migration should be run once.
        app.config["AUTO_MIGRATE"] = app.config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite")
    check_config(app.config)
    app.config["MAX_CONTENT_LENGTH"] = app.config["MAX_REQUEST_BYTES"]


def _upgrade_schema(app: Flask) -> None:
    from flask_migrate import upgrade

    with app.app_context():
        upgrade(directory=MIGRATIONS_DIR)
