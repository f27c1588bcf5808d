"""Logging: JSON lines with a request id, and nothing that identifies a person or
grants access.

Call sites log addresses only through `identity.addresses.redact`, and never codes,
tokens, secrets or keys. As a safety net, every line our handlers write is scrubbed
once formatted, tracebacks included: query strings (they carry addresses, sids,
client secrets and codes), landing-page tokens in paths (they carry an invitation's
private key), the tokens of the guest's refusal and report links, and anything shaped
like an email address.

Every line has one shape, whoever writes it (the application, gunicorn's error log,
the access log): a JSON object with `time` (ISO 8601, UTC, milliseconds), `level`,
`logger`, `pid`, `request_id` and `message`, numbers as numbers; or, for a person, a
text line with the same time.
"""

import logging
import os
import re
import sys
import tomllib
from datetime import UTC
from datetime import datetime
from typing import Any

from flask import has_request_context
from flask import request
from gunicorn.glogging import Logger as GunicornBaseLogger
from pythonjsonlogger.json import JsonFormatter

# The environ key under which the response envelope (identity.wsgi) keeps a request's id.
REQUEST_ID = "identity.request_id"


def current_request_id() -> str:
    """The id of the request being handled ("-" when the envelope did not see it)."""
    return request.environ.get(REQUEST_ID, "-")


# A query string runs to the next whitespace: quotes and apostrophes are legal in a
# URL (`?utm='x&sid=…`) and must not end the cut. In a JSON line the string ends at an
# unescaped double quote, so that the line stays valid JSON.
_QUERY_TEXT = re.compile(r"(/[^\s?]*)\?\S*")
_QUERY_JSON = re.compile(r"(/[^\s?\"]*)\?(?:[^\s\"\\]|\\.)*")
# The landing page's, and the guest's refusal and report pages' (identity.refusals).
_LANDING_TOKEN = re.compile(
    r"(/_matrix/identity/(?:invitation|guest/refuse|guest/report)/)[^\s?\"'/\\]+"
)
_EMAIL = re.compile(r"([^\s@\"'<>(),;:/=\\]+)(?:@|%40)([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)")
# Colours Werkzeug's development server puts around status codes.
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_HANDLER_NAME = "identity"
# A record with this attribute set is written as it is, unscrubbed: only the printed
# mails of a development set-up (mailer), whose links are what the developer needs.
UNSCRUBBED = "unscrubbed"
_JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(process)d %(request_id)s %(message)s"
_JSON_NAMES = {"asctime": "time", "levelname": "level", "name": "logger", "process": "pid"}
_TEXT_FORMAT = "%(asctime)s %(levelname)s [%(request_id)s] %(name)s: %(message)s"


def format_time(record: logging.LogRecord) -> str:
    """The one time format of every line: ISO 8601 in UTC, to the millisecond."""
    moment = datetime.fromtimestamp(record.created, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(record.msecs):03d}Z"


def scrub(text: str, *, json_line: bool = False) -> str:
    """The text without query strings, landing tokens or full email addresses.

    :param json_line: `text` is a JSON document: keep its quoting intact.
    """
    if (
        "?" not in text
        and "@" not in text
        and "%40" not in text
        and "/invitation/" not in text
        and "/guest/" not in text
    ):
        return text  # nothing to scrub: most access-log atoms, most lines
    text = (_QUERY_JSON if json_line else _QUERY_TEXT).sub(r"\1?…", text)
    text = _LANDING_TOKEN.sub(r"\1…", text)
    return _EMAIL.sub(lambda m: f"{m.group(1)[:1]}…@{m.group(2)}", text)


def _without_colours(record: logging.LogRecord) -> logging.LogRecord:
    message = record.getMessage()
    if "\x1b" not in message:
        return record
    return logging.makeLogRecord({**record.__dict__, "msg": _ANSI.sub("", message), "args": None})


class ScrubbingJsonFormatter(JsonFormatter):
    """JSON lines whose every value (message, traceback, extra fields) is scrubbed as
    plain text before it is encoded, so that quotes and escapes cannot hide a secret
    from the scrubbing, nor the scrubbing break the JSON."""

    def format(self, record: logging.LogRecord) -> str:
        return super().format(_without_colours(record))

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return format_time(record)

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        if log_data.pop(UNSCRUBBED, False):
            return log_data
        return {key: _scrubbed(value) for key, value in log_data.items()}


def _scrubbed(value: Any) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {key: _scrubbed(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_scrubbed(item) for item in value]
    return value


class ScrubbingTextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        if getattr(record, UNSCRUBBED, False):
            return super().format(record)
        return scrub(super().format(record))

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return format_time(record)


def formatter(fmt: str) -> logging.Formatter:
    """The formatter of every line: ``json`` or ``text`` (see `init_logging`)."""
    if fmt == "json":
        # UTF-8 as it is: a masked address reads m…@exemple.fr, not m\u2026@exemple.fr.
        return ScrubbingJsonFormatter(
            _JSON_FIELDS, rename_fields=_JSON_NAMES, json_ensure_ascii=False
        )
    return ScrubbingTextFormatter(_TEXT_FORMAT)


class RequestIdFilter(logging.Filter):
    """Give each record the id of the request it was logged in ("-" outside one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:  # the access log sets its own
            record.request_id = current_request_id() if has_request_context() else "-"
        return True


def init_logging(level: str, fmt: str = "auto") -> None:
    """Send every log line to stderr, scrubbed: JSON, or text for a person.

    :param fmt: ``json``, ``text``, or ``auto``: text when stderr is a terminal (someone
        is reading), JSON otherwise (a log pipeline is).
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(formatter(_resolved(fmt)))
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


def _resolved(fmt: str) -> str:
    if fmt == "auto":
        return "text" if _is_terminal(sys.stderr) else "json"
    return fmt


def configured_format() -> str:
    """LOG_FORMAT as the environment or the configuration file set it, resolved to
    ``json`` or ``text``: for gunicorn's own lines, written before any app is built.
    A value the application refuses stops it at start, with its reason."""
    fmt = os.environ.get("IDENTITY_LOG_FORMAT")
    if fmt is None and (path := os.environ.get("IDENTITY_CONFIG")):
        try:
            with open(path, "rb") as f:
                fmt = tomllib.load(f).get("LOG_FORMAT")
        except (OSError, tomllib.TOMLDecodeError):
            pass
    fmt = str(fmt or "auto").strip('"')
    return _resolved(fmt if fmt in ("json", "text") else "auto")


def _is_terminal(stream: object) -> bool:
    try:
        return bool(stream.isatty())  # type: ignore[attr-defined]
    except (AttributeError, ValueError):  # replaced or closed streams
        return False


class GunicornLogger(GunicornBaseLogger):
    """Gunicorn's logger writing our lines (`logger_class` in gunicorn.conf.py): its
    error log and its access log take the application's format, scrubbed.

    Gunicorn's error log quotes request lines ("Error handling request /…?sid=…",
    "Invalid request from ip=…: …"), with their query strings: they are scrubbed as
    every line is. The access log is one record per request whose fields (status,
    bytes, duration) are numbers.
    """

    def setup(self, cfg) -> None:
        super().setup(cfg)
        fmt = configured_format()
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                if getattr(handler, "_gunicorn", False):
                    handler.setFormatter(formatter(fmt))
                    if not any(isinstance(f, RequestIdFilter) for f in handler.filters):
                        handler.addFilter(RequestIdFilter())

    def access(self, resp, req, environ, request_time) -> None:
        """One record per request, its fields read straight from the environ and the
        response: gunicorn's `atoms` formats every request header, response header and
        environ key, for the five fields this line has (a tenth of the worker's Python
        time on a small request)."""
        if not self.access_log_enabled:
            return
        status = resp.status
        if isinstance(status, str):
            status = status.split(None, 1)[0]
        status = str(status)
        sent = getattr(resp, "sent", None)
        remote = environ.get("REMOTE_ADDR", "-")
        method, uri = environ.get("REQUEST_METHOD", "-"), environ.get("RAW_URI", "-")
        request_line = scrub(f"{method} {uri} {environ.get('SERVER_PROTOCOL', '-')}")
        duration_ms = request_time.seconds * 1000 + request_time.microseconds // 1000
        request_id = environ.get(REQUEST_ID) or _header(resp.headers, "x-request-id") or "-"
        self.access_log.info(
            '%s "%s" %s %s B %s ms',
            remote,
            request_line,
            status,
            sent if sent is not None else "-",
            duration_ms,
            extra={
                "remote": remote,
                "request": request_line,
                "status": int(status) if status.isdigit() else status,
                "bytes": sent,
                "duration_ms": duration_ms,
                "request_id": request_id,
            },
        )

    def atoms(self, resp, req, environ, request_time):
        atoms = super().atoms(resp, req, environ, request_time)
        for key in ("r", "U", "q", "f"):
            if isinstance(atoms.get(key), str):
                atoms[key] = scrub(atoms[key])
        if atoms.get("q"):
            atoms["q"] = "…"
        return atoms


def _header(headers: Any, name: str) -> str | None:
    """The value of the response header `name` (lower case), for a response the
    envelope did not see (its request id then came from elsewhere)."""
    for key, value in headers:
        if key.lower() == name:
            return value
    return None
