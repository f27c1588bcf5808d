"""Configuration: built-in defaults, then a TOML file, then IDENTITY_* variables.

Every key is documented in docs/configuration.md. `check_config` runs at start-up
and refuses a bad value with a message naming the key.
"""

import difflib
import ipaddress
import tomllib
from dataclasses import dataclass
from datetime import UTC
from datetime import date
from datetime import datetime
from datetime import time
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULTS: dict[str, Any] = {
    # The folder of the embedded mode's files (SQLite database, signing key) and of the
    # last valid copy of domains.yaml; `instance/` beside app.py when unset.
    "INSTANCE_PATH": None,
    # Storage: an SQLite file in the instance folder unless told otherwise.
    "SQLALCHEMY_DATABASE_URI": None,
    # hide_parameters: a database error never carries a statement's values (sids,
    # client secrets, codes, addresses) into a log; app.py enforces it whatever is set.
    "SQLALCHEMY_ENGINE_OPTIONS": {"pool_pre_ping": True, "hide_parameters": True},
    # Run migrations at start-up; by default only in the embedded SQLite mode.
    "AUTO_MIGRATE": None,
    # When a dependency fails, a request answers 503 in bounded time instead of hanging
    # (docs/operations.md, "When a dependency fails"). Seconds, all well under
    # gunicorn's worker timeout.
    "DATABASE_CONNECT_TIMEOUT_SECONDS": 3,
    # Each statement of a serving process: on the server (statement_timeout) and in the
    # client, which also covers a server that stopped answering altogether.
    "DATABASE_STATEMENT_TIMEOUT_SECONDS": 5,
    "DATABASE_POOL_TIMEOUT_SECONDS": 3,
    "REDIS_TIMEOUT_SECONDS": 1,
    # What a 503 tells clients to wait (Retry-After).
    "UNAVAILABLE_RETRY_AFTER_SECONDS": 5,
    "LOG_LEVEL": "INFO",
    # "json" lines for log pipelines, "text" for a person, "auto": text when stderr is
    # a terminal, JSON otherwise.
    "LOG_FORMAT": "auto",
    # Mail. An empty MAIL_SERVER prints messages to the log instead of sending them;
    # under gunicorn only if MAIL_PRINT_TO_LOG says so (the mails carry codes).
    "MAIL_SERVER": "",
    "MAIL_PRINT_TO_LOG": False,
    # Printed mails are summed up in one line (recipient masked, subject, codes and
    # links); true prints the whole MIME message instead, to check a template.
    "MAIL_PRINT_RAW": False,
    "MAIL_PORT": 25,
    "MAIL_USE_TLS": False,
    "MAIL_USE_SSL": False,
    "MAIL_USERNAME": None,
    "MAIL_PASSWORD": None,
    "MAIL_DEFAULT_SENDER": "Tchap <noreply@tchap.localhost>",
    "MAIL_TIMEOUT": 10,
    # Requests of one process that may wait on the SMTP server at once; more answer
    # M_EMAIL_SEND_ERROR at once, so a stuck mail server never holds every thread.
    "MAIL_MAX_CONCURRENT": 2,
    # A CA bundle to trust for the SMTP server's certificate (else the system's).
    "MAIL_CA_FILE": None,
    # Rate limits (counted with the `limits` library; RATELIMIT_* as Flask-Limiter names them).
    "RATELIMIT_ENABLED": True,
    "RATELIMIT_STORAGE_URI": "memory://",
    # Limits in the `limits` notation ("30/minute;500/hour").
    "RATELIMIT_PER_IP": "120/minute;2000/hour",
    "RATELIMIT_PER_USER": "300/minute",
    # Mails one address may receive, whatever asks for them (codes and invitations).
    "MAIL_LIMIT_PER_ADDRESS": "10/hour",
    # Posts to one invitation's refusal and report pages (beside the per-IP limit, which
    # mailbox providers' one-click posts share).
    "RATELIMIT_PER_GUEST_LINK": "10/minute;30/day",
    # Reverse proxies in front of the service whose X-Forwarded-For is trusted.
    "TRUSTED_PROXY_COUNT": 0,
    # Service identity.
    "SERVER_NAME_FOR_SIGNING": None,
    # Unset: http://localhost:5000 for `flask run`; gunicorn refuses to start without it.
    "PUBLIC_BASE_URL": None,
    # A deployment on one host (a trial, tests, benchmarks): gunicorn then accepts a
    # loopback or unset PUBLIC_BASE_URL and SERVER_NAME_FOR_SIGNING.
    "DEVELOPMENT_DEPLOYMENT": False,
    "SIGNING_KEY_PATH": None,
    "TERMS_PATH": None,
    "TEMPLATES_PATH": None,
    "DEFAULT_BRAND": "tchap",
    "DOMAINS_PATH": None,
    "MAX_REQUEST_BYTES": 64 * 1024,
    # Browsers: how long they keep to https once told (sent only when PUBLIC_BASE_URL
    # is https; 0 sends nothing), and /.well-known/security.txt (RFC 9116), served
    # only when a contact is set: "mailto:…" or "https://…" URIs, an expiry date, and
    # optionally the URL of the disclosure policy.
    "HSTS_MAX_AGE_SECONDS": 365 * 24 * 3600,
    "SECURITY_TXT_CONTACT": [],
    "SECURITY_TXT_EXPIRES": None,
    "SECURITY_TXT_POLICY": None,
    # Validation sessions.
    "SESSION_LIFETIME_SECONDS": 24 * 3600,
    # Expired invitations are kept this long after their expiry, then deleted.
    "INVITE_RETENTION_DAYS": 30,
    # How often each instance purges what is past its retention; 0 leaves it to cron.
    "PURGE_INTERVAL_SECONDS": 3600,
    "TOKEN_MAX_ATTEMPTS": 10,
    "NEXT_LINK_DOMAIN_ALLOWLIST": None,
    # Refuse addresses at special-use domains (.test, .localhost, …) where mail is sent.
    "REFUSE_SPECIAL_USE_DOMAINS": False,
    # Lookups.
    "LOOKUP_MAX_ADDRESSES": 10_000,
    "BULK_LOOKUP_MAX_THREEPIDS": 10_000,
    # Outbound calls to homeservers.
    "FEDERATION_VERIFY_TLS": True,
    # A CA bundle trusted for homeservers' certificates, instead of the system's.
    "FEDERATION_CA_FILE": None,
    "FEDERATION_IP_ALLOWLIST": [],
    "FEDERATION_IP_BLOCKLIST": [],
    "FEDERATION_TIMEOUT_SECONDS": 10,
    "FEDERATION_MAX_RESPONSE_BYTES": 1024 * 1024,
    # Invitations.
    "INVITE_VALIDITY_SECONDS": 30 * 24 * 3600,
    # An invitation admits one account: the first to get a signature or to bind the
    # address. False keeps Sydent's behaviour: anyone with the link gets a signature.
    "INVITE_SINGLE_USE": True,
    # Invitation mails per day: to one address (whoever sends), and from one sender.
    "INVITE_MAX_PER_ADDRESS_PER_DAY": 5,
    "INVITE_MAX_PER_SENDER_PER_DAY": 50,
    # Refused before anything is stored or sent: words in the request's text, sender's
    # or room's homeservers (and their subdomains), room IDs or aliases.
    "INVITE_BLOCKED_KEYWORDS": [],
    "INVITE_BLOCKED_HOMESERVERS": [],
    "INVITE_BLOCKED_ROOMS": [],
    # Reports of "I don't know this person": this many distinct reporters of one sender
    # within the window block its invitations until `flask invites reports clear`
    # (0: reports never block).
    "INVITE_REPORTS_BLOCK_THRESHOLD": 3,
    "INVITE_REPORTS_WINDOW_DAYS": 30,
    # Previous values of SECRET_KEY whose refusals and reports still count (the kept
    # hashes are keyed with it: docs/privacy.md).
    "GUEST_PREVIOUS_SECRETS": [],
    # Characters of the local part and of the domain the room sees before the guest joins.
    "INVITE_REVEAL_LOCAL": 3,
    "INVITE_REVEAL_DOMAIN": 3,
    # One reminder mail this long before a pending invitation expires (only for one
    # made longer than this before its expiry); 0 sends none.
    "INVITE_REMINDER_BEFORE_EXPIRY_SECONDS": 3 * 24 * 3600,
    # The mobile apps the landing page links to.
    "IOS_APP_URL": "https://apps.apple.com/fr/app/tchap/id1446253779",
    "ANDROID_APP_URL": "https://play.google.com/store/apps/details?id=fr.gouv.tchap.a",
    # Encrypts landing-page links; derived from the signing key when unset.
    "SECRET_KEY": None,
    # Where the landing page sends guests.
    "WEB_CLIENT_LOCATION": "https://www.tchap.gouv.fr",
    # Hosts a store-invite's org.matrix.web_client_location may name instead (https only).
    "WEB_CLIENT_LOCATION_ALLOWLIST": [],
    # The unauthenticated v1 API, family by family (Sydent's enable_v1_access); the v2
    # twins stay. Synapse uses v2 for all three.
    "V1_STORE_INVITE_ENABLED": True,
    "V1_LOOKUP_ENABLED": True,
    "V1_BIND_ENABLED": True,
    # Homeservers whose users may register (/v2/account/register); empty: any.
    "REGISTER_HOMESERVER_ALLOWLIST": [],
    # Routing (domains.yaml) and the internal API for homeservers.
    "INFO_TRUSTED_NETWORKS": [],
    "INTERNAL_API_TRUSTED_NETWORKS": [],
    "INTERNAL_API_SECRET": None,
    "RESTRICT_BINDS_TO_ROUTING": True,
    # How often (seconds) a worker looks whether domains.yaml was saved.
    "DOMAINS_CHECK_SECONDS": 1.0,
    "DELIVERY_MAX_BACKOFF_SECONDS": 3600,
    # Run the onbind delivery worker thread inside each web process.
    "DELIVERY_WORKER_ENABLED": True,
    "DELIVERY_POLL_SECONDS": 5,
}

_BOOL_KEYS = (
    "MAIL_USE_TLS",
    "MAIL_USE_SSL",
    "RATELIMIT_ENABLED",
    "FEDERATION_VERIFY_TLS",
    "DELIVERY_WORKER_ENABLED",
    "RESTRICT_BINDS_TO_ROUTING",
    "V1_STORE_INVITE_ENABLED",
    "V1_LOOKUP_ENABLED",
    "V1_BIND_ENABLED",
    "INVITE_SINGLE_USE",
    "MAIL_PRINT_TO_LOG",
    "MAIL_PRINT_RAW",
    "DEVELOPMENT_DEPLOYMENT",
    "REFUSE_SPECIAL_USE_DOMAINS",
)
_POSITIVE_INT_KEYS = (
    "MAIL_PORT",
    "MAIL_TIMEOUT",
    "MAIL_MAX_CONCURRENT",
    "UNAVAILABLE_RETRY_AFTER_SECONDS",
    "MAX_REQUEST_BYTES",
    "SESSION_LIFETIME_SECONDS",
    "TOKEN_MAX_ATTEMPTS",
    "LOOKUP_MAX_ADDRESSES",
    "BULK_LOOKUP_MAX_THREEPIDS",
    "FEDERATION_TIMEOUT_SECONDS",
    "FEDERATION_MAX_RESPONSE_BYTES",
    "INVITE_VALIDITY_SECONDS",
    "INVITE_RETENTION_DAYS",
    "INVITE_MAX_PER_ADDRESS_PER_DAY",
    "INVITE_MAX_PER_SENDER_PER_DAY",
    "INVITE_REPORTS_WINDOW_DAYS",
    "DELIVERY_MAX_BACKOFF_SECONDS",
)
_SECONDS_KEYS = (
    "DOMAINS_CHECK_SECONDS",
    "PURGE_INTERVAL_SECONDS",
    "DELIVERY_POLL_SECONDS",
    "DATABASE_CONNECT_TIMEOUT_SECONDS",
    "DATABASE_STATEMENT_TIMEOUT_SECONDS",
    "DATABASE_POOL_TIMEOUT_SECONDS",
    "REDIS_TIMEOUT_SECONDS",
)
_CIDR_LIST_KEYS = (
    "FEDERATION_IP_ALLOWLIST",
    "FEDERATION_IP_BLOCKLIST",
    "INFO_TRUSTED_NETWORKS",
    "INTERNAL_API_TRUSTED_NETWORKS",
)


_STRING_LIST_KEYS = (
    "INVITE_BLOCKED_KEYWORDS",
    "INVITE_BLOCKED_HOMESERVERS",
    "INVITE_BLOCKED_ROOMS",
    "WEB_CLIENT_LOCATION_ALLOWLIST",
    "REGISTER_HOMESERVER_ALLOWLIST",
    "SECURITY_TXT_CONTACT",
    "GUEST_PREVIOUS_SECRETS",
)


class ConfigError(ValueError):
    """A configuration value is missing or malformed; the message names the key."""


def load_file(config: Any, path: str) -> list[str]:
    """Merge the TOML file at `path` into `config`; return the keys it sets."""
    try:
        with open(path, "rb") as f:
            values = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"IDENTITY_CONFIG: cannot read {path}: {e}") from None
    config.from_mapping(values)
    return list(values)


DEVELOPMENT_BASE_URL = "http://localhost:5000"


def check_config(config: Any, *, production: bool = False) -> None:
    """Normalise and validate the configuration in place.

    :param production: the service starts under gunicorn: refuse what only suits a trial
        on one host (`check_production`).
    :raises ConfigError: naming the first bad key.
    """
    for key in _BOOL_KEYS:
        config[key] = _as_bool(key, config[key])
    for key in _POSITIVE_INT_KEYS:
        config[key] = _as_positive_int(key, config[key])
    for key in _CIDR_LIST_KEYS:
        config[key] = _as_networks(key, config[key])
    if config["MAIL_USE_TLS"] and config["MAIL_USE_SSL"]:
        raise ConfigError("MAIL_USE_TLS and MAIL_USE_SSL: choose one, not both")
    if production:
        check_production(config)
    if not config["PUBLIC_BASE_URL"]:
        config["PUBLIC_BASE_URL"] = DEVELOPMENT_BASE_URL
    base = urlsplit(str(config["PUBLIC_BASE_URL"]))
    if base.scheme not in ("http", "https") or not base.hostname:
        raise ConfigError("PUBLIC_BASE_URL: must be an http(s) URL")
    if config["LOG_FORMAT"] not in ("auto", "json", "text"):
        raise ConfigError(f"LOG_FORMAT: expected auto, json or text, got {config['LOG_FORMAT']!r}")
    config["LOG_LEVEL"] = _as_log_level(config["LOG_LEVEL"])
    config["SQLALCHEMY_DATABASE_URI"] = _as_database_url(config["SQLALCHEMY_DATABASE_URI"])
    for key in _SECONDS_KEYS:
        config[key] = _as_seconds(key, config)
    for key in (
        "TRUSTED_PROXY_COUNT",
        "INVITE_REVEAL_LOCAL",
        "INVITE_REVEAL_DOMAIN",
        "INVITE_REMINDER_BEFORE_EXPIRY_SECONDS",
        "INVITE_REPORTS_BLOCK_THRESHOLD",
    ):
        config[key] = _as_count(key, config[key])
    config["HSTS_MAX_AGE_SECONDS"] = _as_count(
        "HSTS_MAX_AGE_SECONDS", config["HSTS_MAX_AGE_SECONDS"]
    )
    for key in _STRING_LIST_KEYS:
        config[key] = _as_strings(key, config[key])
    _check_v1_closed_for_allowlist(config)
    _check_security_txt(config)
    config["PUBLIC_BASE_URL"] = str(config["PUBLIC_BASE_URL"]).rstrip("/")
    if not config["SERVER_NAME_FOR_SIGNING"]:
        config["SERVER_NAME_FOR_SIGNING"] = base.netloc
    allowlist = config["NEXT_LINK_DOMAIN_ALLOWLIST"]
    if isinstance(allowlist, str):
        config["NEXT_LINK_DOMAIN_ALLOWLIST"] = [d.strip() for d in allowlist.split(",") if d]


def check_production(config: Any) -> None:
    """Refuse, under gunicorn, what would serve wrongly without an error anywhere: mails
    printed to the log, and mail links or signatures naming this machine's loopback.

    :raises ConfigError: naming the key, with what to set.
    """
    if not config["MAIL_SERVER"] and not config["MAIL_PRINT_TO_LOG"]:
        # Printing mails suits `flask run` on a laptop; in production it would put
        # codes and client secrets in the logs.
        raise ConfigError(
            "MAIL_SERVER: not set, so mails (codes, links with secrets) would be printed"
            " to the log; set MAIL_SERVER, or MAIL_PRINT_TO_LOG=true for a test set-up"
        )
    if config["DEVELOPMENT_DEPLOYMENT"]:
        return
    trial = "or DEVELOPMENT_DEPLOYMENT=true for a deployment on this host only"
    url = config["PUBLIC_BASE_URL"]
    if not url:
        raise ConfigError(
            "PUBLIC_BASE_URL: not set; set the https URL users reach this service at"
            f" (mail links use it), {trial}"
        )
    if is_loopback(urlsplit(str(url)).hostname or ""):
        raise ConfigError(
            f"PUBLIC_BASE_URL: {url} is this machine's loopback, so links in mails would"
            f" lead nowhere; set the https URL users reach this service at, {trial}"
        )
    name = config["SERVER_NAME_FOR_SIGNING"]
    if not name:
        # Derived from the URL, it would change with it, and every signature with it.
        raise ConfigError(
            "SERVER_NAME_FOR_SIGNING: not set; set the name homeservers know this service"
            f" by (bindings are signed with it, it must never change), {trial}"
        )
    if is_loopback(urlsplit(f"//{name}").hostname or ""):
        raise ConfigError(
            f"SERVER_NAME_FOR_SIGNING: {name} is a loopback name, which no homeserver can"
            f" verify signatures against; set the service's public name, {trial}"
        )


def is_loopback(host: str) -> bool:
    """Whether `host` names this machine only: localhost, a loopback or unspecified IP."""
    host = host.lower().rstrip(".").strip("[]")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


def _check_v1_closed_for_allowlist(config: Any) -> None:
    """Refuse a homeserver allowlist that the open v1 API would get round (as Sydent does)."""
    open_v1 = [key for key in _V1_SWITCHES if config[key]]
    if config["REGISTER_HOMESERVER_ALLOWLIST"] and open_v1:
        raise ConfigError(
            "REGISTER_HOMESERVER_ALLOWLIST: anyone can use the unauthenticated v1 API;"
            f" set {', '.join(open_v1)} to false"
        )


_V1_SWITCHES = ("V1_STORE_INVITE_ENABLED", "V1_LOOKUP_ENABLED", "V1_BIND_ENABLED")


def _check_security_txt(config: Any) -> None:
    """Check the fields of security.txt; RFC 9116 requires Contact and Expires together."""
    contacts = config["SECURITY_TXT_CONTACT"]
    for contact in contacts:
        if not contact.startswith(("mailto:", "https://", "tel:")):
            raise ConfigError(
                f"SECURITY_TXT_CONTACT: expected mailto:, https:// or tel: URIs, got {contact!r}"
            )
    policy = config["SECURITY_TXT_POLICY"] or None
    if policy is not None and not str(policy).startswith("https://"):
        raise ConfigError(f"SECURITY_TXT_POLICY: expected an https:// URL, got {policy!r}")
    config["SECURITY_TXT_POLICY"] = policy
    expires = config["SECURITY_TXT_EXPIRES"]
    config["SECURITY_TXT_EXPIRES"] = _as_utc_time("SECURITY_TXT_EXPIRES", expires)
    if contacts and config["SECURITY_TXT_EXPIRES"] is None:
        raise ConfigError("SECURITY_TXT_EXPIRES: required with SECURITY_TXT_CONTACT (RFC 9116)")
    if not contacts and (policy or expires):
        raise ConfigError("SECURITY_TXT_CONTACT: required for security.txt (RFC 9116)")


def _as_utc_time(key: str, value: Any) -> datetime | None:
    """A date or date-time (TOML's own, or ISO 8601 text), as an aware UTC date-time."""
    if value is None or value == "":
        return None
    if isinstance(value, date) and not isinstance(value, datetime):
        value = datetime.combine(value, time(), tzinfo=UTC)
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ConfigError(
                f"{key}: expected a date such as 2027-06-30 or 2027-06-30T12:00:00Z, got {value!r}"
            ) from None
    if not isinstance(value, datetime):
        raise ConfigError(f"{key}: expected a date, got {value!r}")
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


# Keys read by Flask and its extensions rather than by us: known, so not typos.
_LIBRARY_KEYS = frozenset(
    {
        "MAX_CONTENT_LENGTH",
        "SQLALCHEMY_ECHO",
        "SQLALCHEMY_BINDS",
        "SQLALCHEMY_RECORD_QUERIES",
        "SQLALCHEMY_TRACK_MODIFICATIONS",
        "MAIL_DEBUG",
        "MAIL_MAX_EMAILS",
        "MAIL_SUPPRESS_SEND",
        "MAIL_ASCII_ATTACHMENTS",
    }
)
# IDENTITY_* variables that are not configuration keys: the configuration file and
# gunicorn.conf.py's settings (and the test suite's IDENTITY_TEST_*).
ENVIRONMENT_ONLY = frozenset(
    {
        "CONFIG",
        "BIND",
        "WORKERS",
        "THREADS",
        "FORWARDED_ALLOW_IPS",
        "TLS_CERT",
        "TLS_KEY",
    }
)


def unknown_keys(names: Any, *, flask_keys: Any = ()) -> list[str]:
    """The names, among `names`, that no part of the service reads (typos, most likely).

    :param flask_keys: Flask's own configuration keys (`Flask.default_config`).
    """
    known = set(DEFAULTS) | _LIBRARY_KEYS | ENVIRONMENT_ONLY | set(flask_keys)
    return sorted(name for name in set(names) if name not in known and not name.startswith("TEST_"))


def known_key_like(name: str, *, flask_keys: Any = ()) -> str | None:
    """The known key `name` most likely misspells, if one is close."""
    known = set(DEFAULTS) | _LIBRARY_KEYS | ENVIRONMENT_ONLY | set(flask_keys)
    return next(iter(difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.8)), None)


def _as_log_level(value: Any) -> str:
    level = str(value).strip().upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ConfigError(
            f"LOG_LEVEL: expected DEBUG, INFO, WARNING, ERROR or CRITICAL, got {value!r}"
        )
    return level


def _as_database_url(value: Any) -> Any:
    if value is None:
        return None
    try:
        make_url(value)
    except (ArgumentError, TypeError, ValueError):
        # Not the value itself: a database URL may carry a password.
        raise ConfigError(
            "SQLALCHEMY_DATABASE_URI: expected a database URL such as"
            " postgresql+psycopg://user@host/db"
        ) from None
    return value


def _as_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{key}: expected true or false, got {value!r}")


def _as_positive_int(key: str, value: Any) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: expected a whole number, got {value!r}") from None
    if number <= 0 or isinstance(value, bool):
        raise ConfigError(f"{key}: expected a positive whole number, got {value!r}")
    return number


def _as_count(key: str, value: Any) -> int:
    """A whole number, zero allowed."""
    return 0 if value in (0, "0") else _as_positive_int(key, value)


def _as_strings(key: str, value: Any) -> list[str]:
    if isinstance(value, str):
        value = [item.strip() for item in value.split(",")]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{key}: expected a list of strings, got {value!r}")
    return [item for item in value if item.strip()]


def _as_seconds(key: str, config: Any) -> float:
    try:
        seconds = float(config[key])
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: expected a number of seconds, got {config[key]!r}") from None
    if seconds < 0:
        raise ConfigError(f"{key}: expected zero or more seconds, got {config[key]!r}")
    return seconds


def _as_networks(key: str, value: Any) -> list[Network]:
    if isinstance(value, str):
        value = [item.strip() for item in value.split(",") if item.strip()]
    if not isinstance(value, list | tuple):
        raise ConfigError(f"{key}: expected a list of CIDR ranges, got {value!r}")
    try:
        return [ipaddress.ip_network(str(item), strict=False) for item in value]
    except ValueError as e:
        raise ConfigError(f"{key}: {e}") from None


@dataclass(frozen=True)
class Settings:
    """The values domain code needs, taken once from the Flask config."""

    server_name: str
    public_base_url: str
    # A validation session is refused, then deleted, this long after its last change.
    session_lifetime: timedelta
    token_max_attempts: int
    next_link_domain_allowlist: tuple[str, ...] | None
    invite_validity_seconds: int
    invite_single_use: bool
    lookup_max_addresses: int
    bulk_lookup_max_threepids: int
    web_client_location: str
    web_client_location_allowlist: tuple[str, ...]
    v1_store_invite_enabled: bool
    v1_lookup_enabled: bool
    v1_bind_enabled: bool
    register_homeserver_allowlist: tuple[str, ...]
    restrict_binds_to_routing: bool
    info_trusted_networks: tuple[Network, ...]
    internal_api_trusted_networks: tuple[Network, ...]
    internal_api_secret: str | None
    secret_key: str | None
    invite_retention_days: int
    purge_interval_seconds: float
    ios_app_url: str
    android_app_url: str
    invite_max_per_address_per_day: int | None
    invite_max_per_sender_per_day: int | None
    invite_blocked_keywords: tuple[str, ...]
    invite_blocked_homeservers: tuple[str, ...]
    invite_blocked_rooms: tuple[str, ...]
    invite_reveal_local: int
    invite_reveal_domain: int
    # Zero: no reminders.
    invite_reminder_before_expiry: timedelta = timedelta(0)
    invite_reports_block_threshold: int = 3
    invite_reports_window_days: int = 30
    guest_previous_secrets: tuple[str, ...] = ()
    signing_key_path: str = ""
    hsts_max_age_seconds: int = 0
    security_txt_contact: tuple[str, ...] = ()
    security_txt_expires: datetime | None = None
    security_txt_policy: str | None = None
    domains_path: str = ""
    refuse_special_use_domains: bool = False
    unavailable_retry_after_seconds: int = 5

    @classmethod
    def from_config(cls, config: Any) -> "Settings":
        allowlist = config["NEXT_LINK_DOMAIN_ALLOWLIST"]
        return cls(
            server_name=config["SERVER_NAME_FOR_SIGNING"],
            public_base_url=config["PUBLIC_BASE_URL"],
            session_lifetime=timedelta(seconds=config["SESSION_LIFETIME_SECONDS"]),
            token_max_attempts=config["TOKEN_MAX_ATTEMPTS"],
            next_link_domain_allowlist=tuple(allowlist) if allowlist is not None else None,
            invite_validity_seconds=config["INVITE_VALIDITY_SECONDS"],
            invite_single_use=config["INVITE_SINGLE_USE"],
            lookup_max_addresses=config["LOOKUP_MAX_ADDRESSES"],
            bulk_lookup_max_threepids=config["BULK_LOOKUP_MAX_THREEPIDS"],
            web_client_location=str(config["WEB_CLIENT_LOCATION"]).rstrip("/"),
            web_client_location_allowlist=tuple(
                host.lower() for host in config["WEB_CLIENT_LOCATION_ALLOWLIST"]
            ),
            v1_store_invite_enabled=config["V1_STORE_INVITE_ENABLED"],
            v1_lookup_enabled=config["V1_LOOKUP_ENABLED"],
            v1_bind_enabled=config["V1_BIND_ENABLED"],
            unavailable_retry_after_seconds=config["UNAVAILABLE_RETRY_AFTER_SECONDS"],
            register_homeserver_allowlist=tuple(
                name.lower() for name in config["REGISTER_HOMESERVER_ALLOWLIST"]
            ),
            restrict_binds_to_routing=config["RESTRICT_BINDS_TO_ROUTING"],
            info_trusted_networks=tuple(config["INFO_TRUSTED_NETWORKS"]),
            internal_api_trusted_networks=tuple(config["INTERNAL_API_TRUSTED_NETWORKS"]),
            internal_api_secret=config["INTERNAL_API_SECRET"] or None,
            secret_key=config["SECRET_KEY"] or None,
            invite_retention_days=config["INVITE_RETENTION_DAYS"],
            purge_interval_seconds=config["PURGE_INTERVAL_SECONDS"],
            ios_app_url=config["IOS_APP_URL"],
            android_app_url=config["ANDROID_APP_URL"],
            # RATELIMIT_ENABLED=false switches every limit off, these quotas included.
            invite_max_per_address_per_day=(
                config["INVITE_MAX_PER_ADDRESS_PER_DAY"] if config["RATELIMIT_ENABLED"] else None
            ),
            invite_max_per_sender_per_day=(
                config["INVITE_MAX_PER_SENDER_PER_DAY"] if config["RATELIMIT_ENABLED"] else None
            ),
            invite_blocked_keywords=tuple(config["INVITE_BLOCKED_KEYWORDS"]),
            invite_blocked_homeservers=tuple(config["INVITE_BLOCKED_HOMESERVERS"]),
            invite_blocked_rooms=tuple(config["INVITE_BLOCKED_ROOMS"]),
            invite_reveal_local=config["INVITE_REVEAL_LOCAL"],
            invite_reveal_domain=config["INVITE_REVEAL_DOMAIN"],
            invite_reminder_before_expiry=timedelta(
                seconds=config["INVITE_REMINDER_BEFORE_EXPIRY_SECONDS"]
            ),
            invite_reports_block_threshold=config["INVITE_REPORTS_BLOCK_THRESHOLD"],
            invite_reports_window_days=config["INVITE_REPORTS_WINDOW_DAYS"],
            guest_previous_secrets=tuple(config["GUEST_PREVIOUS_SECRETS"]),
            signing_key_path=config["SIGNING_KEY_PATH"],
            hsts_max_age_seconds=config["HSTS_MAX_AGE_SECONDS"],
            security_txt_contact=tuple(config["SECURITY_TXT_CONTACT"]),
            security_txt_expires=config["SECURITY_TXT_EXPIRES"],
            security_txt_policy=config["SECURITY_TXT_POLICY"],
            domains_path=config["DOMAINS_PATH"],
            refuse_special_use_domains=config["REFUSE_SPECIAL_USE_DOMAINS"],
        )
