"""Logging: JSON lines with a request id, and nothing that identifies a person or
grants access.

Call sites log addresses only through `identity.addresses.redact`, and never codes,
tokens, secrets or keys. As a safety net, every line our handlers write is scrubbed
once formatted, tracebacks included: query strings (they carry addresses, sids,
client secrets and codes), landing-page tokens in paths (they carry an invitation's
private key) and anything shaped like an email address.
"""

import logging
import re
import secrets
import sys

from flask import Flask
from flask import g
from flask import has_request_context
from flask import request
from gunicorn.glogging import Logger as GunicornBaseLogger
from pythonjsonlogger.json import JsonFormatter

_QUERY = re.compile(r"(/[^\s?\"']*)\?[^\s\"']*")
_LANDING_TOKEN = re.compile(r"(/_matrix/identity/invitation/)[^\s?\"'/]+")
_EMAIL = re.compile(r"([^\s@\"'<>(),;:/=]+)@([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_HANDLER_NAME = "identity"


def scrub(text: str) -> str:
    """The text without query strings, landing tokens or full email addresses."""
    text = _QUERY.sub(r"\1?…", text)
    text = _LANDING_TOKEN.sub(r"\1…", text)
    return _EMAIL.sub(lambda m: f"{m.group(1)[:1]}…@{m.group(2)}", text)


class _Scrubbing:
    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record))  # type: ignore[misc]


class ScrubbingJsonFormatter(_Scrubbing, JsonFormatter):
    pass


class ScrubbingTextFormatter(_Scrubbing, logging.Formatter):
    pass


class RequestIdFilter(logging.Filter):
    """Give each record the id of the request it was logged in ("-" outside one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = g.get("request_id", "-") if has_request_context() else "-"
        return True


def init_logging(level: str, fmt: str = "json") -> None:
    """Send every log line to stderr, scrubbed, as JSON (or text for development)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.addFilter(RequestIdFilter())
    if fmt == "json":
        handler.setFormatter(
            ScrubbingJsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(request_id)s %(message)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            )
        )
    else:
        handler.setFormatter(
            ScrubbingTextFormatter(
                "%(asctime)s %(levelname)s [%(request_id)s] %(name)s: %(message)s"
            )
        )
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


def init_request_ids(app: Flask) -> None:
    """Tag each request with an id (the proxy's X-Request-ID when sane) for its logs."""

    @app.before_request
    def assign_request_id() -> None:
        incoming = request.headers.get("X-Request-ID", "")
        g.request_id = incoming if _REQUEST_ID.match(incoming) else secrets.token_hex(8)

    @app.after_request
    def return_request_id(response):
        response.headers["X-Request-ID"] = g.get("request_id", "-")
        return response


class GunicornLogger(GunicornBaseLogger):
    """Gunicorn's logger with scrubbed access lines (`logger_class` in gunicorn.conf.py)."""

    def atoms(self, resp, req, environ, request_time):  # noqa: ANN001 (gunicorn's signature)
        atoms = super().atoms(resp, req, environ, request_time)
        for key in ("r", "U", "q", "f"):
            if isinstance(atoms.get(key), str):
                atoms[key] = scrub(atoms[key])
        if atoms.get("q"):
            atoms["q"] = "…"
        return atoms
