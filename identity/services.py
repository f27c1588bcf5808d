"""The app's services: one typed object, built once by create_app.

Views, commands and the background worker read the pieces they need from
`services()` and pass them to domain functions as plain arguments; domain modules
never import this module.
"""

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from flask import Flask
from flask import current_app

if TYPE_CHECKING:
    from signedjson.types import SigningKey

    from identity.clock import Clock
    from identity.config import Settings
    from identity.deliveries import WorkerSettings
    from identity.federation.client import FederationClient
    from identity.limits import Limits
    from identity.mailer import MailSettings
    from identity.routing.source import RoutingSource
    from identity.storage.schema import Revisions
    from identity.terms import Terms

EXTENSION = "identity"


@dataclass
class Services:
    """Everything create_app builds for one app, typed."""

    settings: "Settings"
    mail: "MailSettings"
    clock: "Clock"
    routing: "RoutingSource"
    federation: "FederationClient"
    terms: "Terms"
    limits: "Limits"
    deliveries: "WorkerSettings"
    revisions: "Revisions"  # the migrations the code ships (/health, start-up checks)
    # Loaded at start by a server, on first use by commands and tests (keys.py).
    signing_key: "SigningKey | None" = None
    # Whether a missing key is generated on first use: only in an app a test builds
    # (a server creates it at start, in the embedded mode only; a command never).
    create_signing_key: bool = False
    # Set once this process's delivery thread runs (deliveries.start).
    deliveries_stop: threading.Event | None = None
    deliveries_thread: threading.Thread | None = None


def init_app(app: Flask, built: Services) -> None:
    app.extensions[EXTENSION] = built


def services(app: Flask | None = None) -> Services:
    """The services of `app`, or of the current app."""
    return (app if app is not None else current_app).extensions[EXTENSION]
