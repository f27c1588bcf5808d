"""Application factory: the only place that wires the service together.

Run with `flask --app app run` or `gunicorn -c gunicorn.conf.py 'app:create_app()'`.
"""

import logging
import os
from collections.abc import Mapping
from typing import Any

import click
from flask import Flask
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.middleware.proxy_fix import ProxyFix

from identity import i18n
from identity import keys
from identity import outages
from identity import worker
from identity.api import metrics
from identity.api import register_api
from identity.cli import register_cli
from identity.cli.db import guard_authoring_commands
from identity.clock import Clock
from identity.clock import SystemClock
from identity.config import DEFAULTS
from identity.config import ConfigError
from identity.config import check_config
from identity.config import known_key_like
from identity.config import load_file
from identity.config import unknown_keys
from identity.extensions import db
from identity.extensions import init_migrations
from identity.extensions import mail
from identity.headers import ResponseHeaders
from identity.headers import response_headers
from identity.logs import init_logging
from identity.pages import bp as pages_bp
from identity.pages import inline_styles
from identity.schema_upgrade import upgrade_schema
from identity.services import build as build_services
from identity.services import init_app as init_services
from identity.services import services
from identity.storage import models  # noqa: F401  (registers the tables)
from identity.storage.schema import AHEAD
from identity.storage.schema import BEHIND
from identity.storage.schema import Revisions
from identity.storage.schema import applied_revisions
from identity.storage.timeouts import DatabaseTimeouts
from identity.wsgi import Application
from identity.wsgi import ResponseEnvelope

HERE = os.path.dirname(os.path.abspath(__file__))
MIGRATIONS_DIR = os.path.join(HERE, "migrations")

logger = logging.getLogger(__name__)

# Set by gunicorn.conf.py for its workers once it has checked the configuration.
CHECKED_AT_START = "_IDENTITY_CHECKED_AT_START"

# Room in a lookup's body for each hash or address it may carry: an address of the
# longest legal length (254 bytes), its medium, quotes, separators and some escapes.
LOOKUP_ENTRY_BYTES = 320


def create_app(config: Mapping[str, Any] | None = None, *, clock: Clock | None = None) -> Flask:
    """Build the service: configuration, extensions, API, pages and commands.

    :raises ConfigError: naming the bad key (for a `flask` command, a one-line error).
    """
    try:
        return _create_app(config, clock)
    except ConfigError as e:
        if click.get_current_context(silent=True) is not None:
            # A `flask` command: one line and exit status 1, not a traceback.
            raise click.ClickException(str(e)) from None
        raise


def _create_app(config: Mapping[str, Any] | None, clock: Clock | None) -> Flask:
    app = Application(__name__, instance_relative_config=True)
    given = _load_config(app, config)
    init_logging(app.config["LOG_LEVEL"], app.config["LOG_FORMAT"])
    # A gunicorn worker whose master has checked the configuration and the rules.
    checked = bool(os.environ.get(CHECKED_AT_START))
    if not checked:
        for key in unknown_keys(given, flask_keys=Flask.default_config):
            near = known_key_like(key, flask_keys=Flask.default_config)
            logger.warning(
                "Unknown configuration key %s, from %s (a typo%s?): ignored",
                key,
                given[key],
                f" of {near}" if near else "",
            )
    serving = _serving()

    db.init_app(app)
    # `_end_session` ends the session in its place: the extension's own teardown would
    # look the session up twice more at the end of every request, most of which (the
    # hot reads) never open one.
    app.teardown_appcontext_funcs.remove(db._teardown_session)
    app.teardown_appcontext(_end_session)
    if not serving:
        # `flask db …`. A server never needs Alembic unless AUTO_MIGRATE (upgrade_schema).
        init_migrations(app, MIGRATIONS_DIR)
        guard_authoring_commands()
    mail.init_app(app)
    i18n.init_app(app)
    init_services(
        app,
        build_services(
            app,
            clock=clock or SystemClock(),
            revisions=Revisions.of_directory(MIGRATIONS_DIR),
            # A server refuses to start on invalid rules. Its later workers (a reload, a
            # recycled worker) and admins' commands start on the last good ones instead.
            strict_routing=not checked and (serving or not _running_a_command()),
            list_routing_problems=not _running_a_command(),
        ),
    )
    worker.init_app(app)

    _limit_body_sizes(app)
    metrics.init_app(app)
    register_api(app)
    app.register_blueprint(pages_bp)
    register_cli(app)
    # Request ids and the headers each kind of response carries (identity/wsgi.py).
    app.wsgi_app = ResponseEnvelope(  # type: ignore[method-assign]
        app.wsgi_app, _response_headers(app), observe=metrics.count_answer
    )
    if app.config["TRUSTED_PROXY_COUNT"]:
        # Client IPs (rate limits, trusted networks) come from the proxies' X-Forwarded-For.
        # Flask's documented way to wrap the WSGI app, which mypy sees as a method.
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=app.config["TRUSTED_PROXY_COUNT"]
        )
    if app.config["AUTO_MIGRATE"]:
        upgrade_schema(app, MIGRATIONS_DIR)
    elif serving and not checked:
        _refuse_another_schema(app)
    if serving:
        # Loaded at start, not on the first request that signs. Only a first start in the
        # embedded mode creates it: anywhere else a missing key is a mistyped path or a
        # lost file, and a new key would be a second identity (docs/operations.md).
        embedded = keys.embedded_path(app.instance_path)
        holder = services(app).keys
        holder.load_now(create=holder.path == embedded)
    return app


def _refuse_another_schema(app: Flask) -> None:
    """A server does not start on a database whose schema is not the code's: every
    request would fail while a load balancer saw it up.

    :raises ConfigError: naming the command to run.
    """
    with app.app_context():
        try:
            state = services(app).revisions.state_of(applied_revisions())
        except SQLAlchemyError as e:
            # Down for now: start, answer 503 until it is back (/health says why).
            logger.warning("Could not check the database schema at start: %s", type(e).__name__)
            return
        finally:
            db.session.remove()
    if state == BEHIND:
        raise ConfigError(
            "The database schema is behind the code: run `flask --app app db upgrade`"
            " (with the same configuration), then start again"
        )
    if state == AHEAD:
        raise ConfigError(
            "The database schema is ahead of the code: a newer version migrated it;"
            " run that version (docs/operations.md, upgrades)"
        )


def _response_headers(app: Flask) -> ResponseHeaders:
    settings = services(app).settings
    return response_headers(
        public_base_url=settings.public_base_url,
        hsts_max_age_seconds=settings.hsts_max_age_seconds,
        page_styles=inline_styles(app),
    )


def _under_gunicorn() -> bool:
    """Whether this process is gunicorn's (its master, a worker): production serving."""
    return os.environ.get("SERVER_SOFTWARE", "").startswith("gunicorn/")


def _end_session(error: BaseException | None) -> None:
    """End the request's session: roll back what it left open. A database gone since
    the answer was made costs the connection (dropped from the pool), not a 500."""
    if not db.session.registry.has():  # no session this request (the hot reads use none)
        return
    try:
        db.session.remove()
    except SQLAlchemyError as e:
        if outages.unavailable_dependency(e) is None:
            raise
        outages.warn(outages.DATABASE, e, effect="requests answered, their connections dropped")
        db.session.remove()  # the connection invalidated: nothing left to roll back


def _serving() -> bool:
    """Whether this process is starting a server: gunicorn (its master or a worker) or
    `flask run`; not a `flask` command, not a test building apps."""
    if _under_gunicorn():
        return True
    context = click.get_current_context(silent=True)
    return context is not None and context.info_name == "run"


def _running_a_command() -> bool:
    return click.get_current_context(silent=True) is not None


def _load_config(app: Flask, config: Mapping[str, Any] | None) -> dict[str, str]:
    """Load the layers into `app.config`; return the keys the file and environment set,
    each with where it was set (for an operator looking for a typo)."""
    app.config.from_mapping(DEFAULTS)
    given = {}
    if path := os.environ.get("IDENTITY_CONFIG"):
        given.update({key: f"the file {path}" for key in load_file(app.config, path)})
    app.config.from_prefixed_env("IDENTITY")
    given.update(
        {
            name.removeprefix("IDENTITY_"): f"the environment variable {name}"
            for name in os.environ
            if name.startswith("IDENTITY_")
        }
    )
    app.config.update(config or {})
    if app.config["INSTANCE_PATH"]:
        app.instance_path = os.path.abspath(app.config["INSTANCE_PATH"])
    os.makedirs(app.instance_path, exist_ok=True)
    if not app.config["SQLALCHEMY_DATABASE_URI"]:
        app.config["SQLALCHEMY_DATABASE_URI"] = "sqlite:///" + os.path.join(
            app.instance_path, "identity.sqlite3"
        )
    if not app.config["SIGNING_KEY_PATH"]:
        app.config["SIGNING_KEY_PATH"] = keys.embedded_path(app.instance_path)
    if not app.config["DOMAINS_PATH"]:
        app.config["DOMAINS_PATH"] = os.path.join(HERE, "domains.yaml")
    if app.config.get("AUTO_MIGRATE") is None:
        # The embedded SQLite mode needs no set-up step; PostgreSQL deployments run
        # `flask db upgrade` before starting, as any migration should be run once.
        app.config["AUTO_MIGRATE"] = app.config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite")
    check_config(app.config, production=_under_gunicorn())
    options = dict(app.config["SQLALCHEMY_ENGINE_OPTIONS"])
    # Bound parameters (sids, client secrets, codes, addresses) never reach a log, even
    # when an operator passes engine options of their own.
    options["hide_parameters"] = True
    if app.config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite"):
        # A file has no connection to lose: pinging it before each request is waste.
        options.pop("pool_pre_ping", None)
    timeouts = DatabaseTimeouts.from_config(app.config, serving=_serving())
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = timeouts.engine_options(
        app.config["SQLALCHEMY_DATABASE_URI"], options
    )
    app.config["MAX_CONTENT_LENGTH"] = app.config["MAX_REQUEST_BYTES"]
    return given


def _limit_body_sizes(app: Application) -> None:
    """MAX_REQUEST_BYTES for every request, except lookups: room for their maximum
    number of entries (LOOKUP_MAX_ADDRESSES, BULK_LOOKUP_MAX_THREEPIDS)."""
    base = app.config["MAX_REQUEST_BYTES"]
    larger = {
        "/_matrix/identity/v2/lookup": app.config["LOOKUP_MAX_ADDRESSES"],
        "/_matrix/identity/api/v1/bulk_lookup": app.config["BULK_LOOKUP_MAX_THREEPIDS"],
    }
    app.body_limits = {
        path: base + entries * LOOKUP_ENTRY_BYTES for path, entries in larger.items()
    }
