"""The app's services: every edge object and per-app policy, built once by `build`.

Only delivery code (identity.api, identity.pages, identity.cli, identity.worker) and
app.py read them, through `services()`, and pass the pieces a domain function needs as
plain arguments; domain modules and edges never import this module (docs/architecture.md).
"""

import threading
from dataclasses import dataclass
from dataclasses import field

from flask import Flask
from flask import current_app

from identity import binding
from identity import invitations
from identity import limits
from identity import routing
from identity import terms
from identity import validation
from identity.clock import Clock
from identity.config import Settings
from identity.deliveries import WorkerSettings
from identity.federation.client import FederationClient
from identity.federation.client import Policy as FederationPolicy
from identity.keys import SigningKeyHolder
from identity.limits import Limits
from identity.limits import LimitSettings
from identity.mailer import Mailer
from identity.mailer import MailSettings
from identity.routing.source import RoutingSource
from identity.storage.schema import Revisions
from identity.terms import Terms

EXTENSION = "identity"


@dataclass
class Services:
    """Everything `build` makes for one app, typed."""

    settings: Settings
    mailer: Mailer
    clock: Clock
    routing: RoutingSource
    federation: FederationClient
    terms: Terms
    limits: Limits
    deliveries: WorkerSettings
    revisions: Revisions  # the migrations the code ships (/health, start-up checks)
    keys: SigningKeyHolder
    validation: validation.Policy
    # Set once this process's delivery thread runs (identity.worker.start).
    deliveries_stop: threading.Event | None = None
    deliveries_thread: threading.Thread | None = None
    # The invitation policy and the key it was derived from (see `invitation_policy`).
    _invitation_policy: tuple[object, invitations.Policy] | None = field(default=None, repr=False)
    _signer: binding.Signer | None = field(default=None, repr=False)

    def signer(self) -> binding.Signer:
        """The signer of what the service asserts, one per signing key: v1 lookups
        remember their signed answers by signer (identity.lookup)."""
        key = self.keys.key()
        if self._signer is None or self._signer.key is not key:
            self._signer = binding.Signer(self.settings.server_name, key)
        return self._signer

    def invitation_policy(self) -> invitations.Policy:
        """The deployment's invitation policy (store-invite and the landing page), derived
        once per signing key: its landing secret costs a key derivation."""
        key = self.keys.key()
        cached = self._invitation_policy
        if cached is None or cached[0] is not key:
            cached = self._invitation_policy = (
                key,
                invitations.Policy.from_settings(self.settings, key),
            )
        return cached[1]


def build(
    app: Flask,
    *,
    clock: Clock,
    revisions: Revisions,
    strict_routing: bool,
    list_routing_problems: bool,
) -> Services:
    """Build the app's services from its configuration (after `mail.init_app(app)`).

    :param strict_routing: refuse to start on invalid routing rules (routing.open_source).
    :raises ConfigError: naming the bad key.
    """
    config = app.config
    settings = Settings.from_config(config)
    app_limits = limits.build(LimitSettings.from_config(config))
    return Services(
        settings=settings,
        mailer=Mailer(MailSettings.from_config(config), app.extensions["mail"], app_limits),
        clock=clock,
        federation=FederationClient(FederationPolicy.from_config(config)),
        terms=terms.build(config["TERMS_PATH"]),
        routing=routing.open_source(
            settings.domains_path,
            check_seconds=config["DOMAINS_CHECK_SECONDS"],
            instance_path=app.instance_path,
            strict=strict_routing,
            list_problems=list_routing_problems,
        ),
        limits=app_limits,
        deliveries=WorkerSettings.from_config(config),
        revisions=revisions,
        keys=SigningKeyHolder(settings.signing_key_path, create_on_first_use=app.testing),
        validation=validation.Policy(
            lifetime=settings.session_lifetime,
            max_attempts=settings.token_max_attempts,
            next_link_hosts=settings.next_link_domain_allowlist,
            refuse_special_use_domains=settings.refuse_special_use_domains,
        ),
    )


def init_app(app: Flask, built: Services) -> None:
    app.extensions[EXTENSION] = built


def services(app: Flask | None = None) -> Services:
    """The services of `app`, or of the current app."""
    if app is None:
        # The proxy resolved once: each attribute read through it costs about 2 µs, and
        # every request asks for its services several times.
        app = current_app._get_current_object()  # type: ignore[attr-defined]
    return app.extensions[EXTENSION]
