"""Routing email addresses to the homeserver of their administration (domains.yaml).

`table.py` resolves, `schema.py` reads and validates the file, `source.py` keeps it
fresh in a running process, `answers.py` builds the /info answers, `diff.py` compares
two versions and `sydent_info.py` imports a Tchap Sydent info.yaml.
"""

import hashlib
import logging
import os
import signal
import threading
import weakref

from identity.config import ConfigError
from identity.routing.schema import RoutingError
from identity.routing.source import RoutingSource
from identity.routing.table import Match
from identity.routing.table import Platform
from identity.routing.table import RoutingTable

__all__ = ["Match", "Platform", "RoutingError", "RoutingSource", "RoutingTable", "open_source"]

logger = logging.getLogger(__name__)


def last_good_file(domains_path: str) -> str:
    """The name of the copy of `domains_path`'s last valid version in the instance folder:
    one per rules file, so that apps reading other files never overwrite each other's."""
    digest = hashlib.sha256(os.path.abspath(domains_path).encode()).hexdigest()[:12]
    return f"domains.last-good.{digest}.yaml"


def open_source(
    domains_path: str,
    *,
    check_seconds: float,
    instance_path: str,
    strict: bool = True,
    list_problems: bool = True,
) -> RoutingSource:
    """Load `domains_path`, keeping a copy of its last valid version in `instance_path`.

    :param strict: refuse to start when the file is invalid (a server starting);
        otherwise (a worker replacing another, an admin's command) say so in one line
        and start on the last good version, or without rules.
    :param list_problems: that line lists the file's problems; not for a command, which
        lists them itself if it is `flask domains check` (once, not twice).
    :raises ConfigError: when `strict` and the file is invalid.
    """
    try:
        source = RoutingSource(
            domains_path,
            check_seconds=check_seconds,
            strict=strict,
            last_good=os.path.join(instance_path, last_good_file(domains_path)),
        )
    except RoutingError as e:
        raise ConfigError(f"DOMAINS_PATH: {e}") from None
    if source.error:
        fallback = "the last good rules" if source.has_rules() else "no routing rules"
        logger.warning(
            "DOMAINS_PATH %s is invalid, starting on %s (`flask domains check` lists its"
            " problems)%s",
            source.path,
            fallback,
            f": {source.error}" if list_problems else "",
        )
    _reload_on_sighup(source)
    return source


# The sources of this process's apps (one in production, many in a test session).
_SOURCES: "weakref.WeakSet[RoutingSource]" = weakref.WeakSet()


def _reload_on_sighup(source: RoutingSource) -> None:
    """Reload on SIGHUP, unless someone else handles the signal (gunicorn's master does:
    it restarts its workers, which load the file afresh)."""
    _SOURCES.add(source)
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGHUP) is signal.SIG_DFL:
        signal.signal(signal.SIGHUP, _force_reloads)


def _force_reloads(signum: int, frame: object) -> None:
    for source in list(_SOURCES):
        source.force_reload()
