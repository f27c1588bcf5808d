"""Logging set-up: nothing that identifies a person or grants access reaches a log line."""

import logging
import re

# "GET /path?sid=…&token=… HTTP/1.1" → "GET /path?… HTTP/1.1"
_QUERY = re.compile(r"(\s/[^\s?]*)\?\S*")


class DropQueryStrings(logging.Filter):
    """Strip query strings from access-log lines: they carry addresses and tokens."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            record.args = tuple(
                _QUERY.sub(r"\1?…", a) if isinstance(a, str) else a for a in record.args
            )
        if isinstance(record.msg, str):
            record.msg = _QUERY.sub(r"\1?…", record.msg)
        return True


def init_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("werkzeug").addFilter(DropQueryStrings())
