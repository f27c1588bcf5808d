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
import sys
from typing import Any

from flask import has_request_context
from gunicorn.glogging import Logger as GunicornBaseLogger
from pythonjsonlogger.json import JsonFormatter

from identity.wsgi import current_request_id

# A query string runs to the next whitespace: quotes and apostrophes are legal in a
# URL (`?utm='x&sid=…`) and must not end the cut. In a JSON line the string ends at an
# unescaped double quote, so that the line stays valid JSON.
_QUERY_TEXT = re.compile(r"(/[^\s?]*)\?\S*")
_QUERY_JSON = re.compile(r"(/[^\s?\"]*)\?(?:[^\s\"\\]|\\.)*")
_LANDING_TOKEN = re.compile(r"(/_matrix/identity/invitation/)[^\s?\"'/\\]+")
_EMAIL = re.compile(r"([^\s@\"'<>(),;:/=\\]+)(?:@|%40)([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)")
# Colours Werkzeug's development server puts around status codes.
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_HANDLER_NAME = "identity"


def scrub(text: str, *, json_line: bool = False) -> str:
    """The text without query strings, landing tokens or full email addresses.

    :param json_line: `text` is a JSON document: keep its quoting intact.
    """
    if "?" not in text and "@" not in text and "%40" not in text and "/invitation/" not in text:
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

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
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
        return scrub(super().format(record))


class ScrubbedFormatter(logging.Formatter):
    """Scrubs whatever another formatter writes (gunicorn's own formatters)."""

    def __init__(self, inner: logging.Formatter, *, json_line: bool = False) -> None:
        super().__init__()
        self.inner = inner
        self.json_line = json_line

    def format(self, record: logging.LogRecord) -> str:
        return scrub(self.inner.format(record), json_line=self.json_line)


class RequestIdFilter(logging.Filter):
    """Give each record the id of the request it was logged in ("-" outside one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = current_request_id() if has_request_context() else "-"
        return True


def init_logging(level: str, fmt: str = "auto") -> None:
    """Send every log line to stderr, scrubbed: JSON, or text for a person.

    :param fmt: ``json``, ``text``, or ``auto``: text when stderr is a terminal (someone
        is reading), JSON otherwise (a log pipeline is).
    """
    if fmt == "auto":
        fmt = "text" if _is_terminal(sys.stderr) else "json"
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


def _is_terminal(stream: object) -> bool:
    try:
        return bool(stream.isatty())  # type: ignore[attr-defined]
    except (AttributeError, ValueError):  # replaced or closed streams
        return False


class GunicornLogger(GunicornBaseLogger):
    """Gunicorn's logger, every line scrubbed (`logger_class` in gunicorn.conf.py).

    Gunicorn's error log quotes request lines ("Error handling request /…?sid=…",
    "Invalid request from ip=…: …"), with their query strings: its handlers write
    through our scrubbing, as the access log does.
    """

    def setup(self, cfg) -> None:
        super().setup(cfg)
        for log, json_line in ((self.error_log, False), (self.access_log, True)):
            for handler in log.handlers:
                if handler.formatter is not None and not isinstance(
                    handler.formatter, ScrubbedFormatter
                ):
                    handler.setFormatter(ScrubbedFormatter(handler.formatter, json_line=json_line))

    def atoms(self, resp, req, environ, request_time):
        atoms = super().atoms(resp, req, environ, request_time)
        for key in ("r", "U", "q", "f"):
            if isinstance(atoms.get(key), str):
                atoms[key] = scrub(atoms[key])
        if atoms.get("q"):
            atoms["q"] = "…"
        return atoms
