"""This process's background thread: onbind deliveries, invitation reminders and the
scheduled purges.

Started with the app's first request (app.py calls `init_app`); `run_due` is also
what `flask deliveries run-due` runs, `run_reminders` what `flask invites remind-due`
runs. The rules live in identity.deliveries, identity.reminders and
identity.retention; this module gives them the app's services and commits.
"""

import logging
import threading
from collections.abc import Callable
from datetime import datetime
from functools import partial

from flask import Flask

from identity import deliveries
from identity import outages
from identity import peers
from identity import presentation
from identity import reminders
from identity.extensions import db
from identity.retention import Retention
from identity.retention import Schedule
from identity.retention import purge
from identity.services import services

logger = logging.getLogger(__name__)


def run_due(*, now: datetime) -> int:
    """Attempt every due delivery once, with the app's federation client and key.

    The caller's side of `process_due`: needs an app context, and commits the app's
    session after each claim and each attempt.

    :returns: how many invitations were delivered.
    """
    current = services()
    return deliveries.process_due(
        now=now,
        post=current.federation.post_json,
        # Invitations imported from a Sydent peer are signed with that peer's key.
        sign=peers.invitation_signer(
            server_name=current.settings.server_name,
            our_key=current.keys.key(),
            signing_key_path=current.settings.signing_key_path,
        ),
        max_backoff=current.deliveries.max_backoff,
        commit=db.session.commit,
    )


def run_reminders(*, clock: Callable[[], datetime]) -> int:
    """Send every due invitation reminder once, with the app's mailer and policy.

    The caller's side of `reminders.send_due`: needs an app context, and commits the
    app's session after each claim and each attempt.

    :returns: how many reminders were sent.
    """
    current = services()
    policy = current.invitation_policy()
    return reminders.send_due(
        clock=clock,
        policy=policy,
        routing=current.routing.table(),
        send=partial(presentation.send_invitation, policy=policy, mailer=current.mailer),
        commit=db.session.commit,
    )


def init_app(app: Flask) -> None:
    """Start the worker thread with the app's first request, when it is enabled.

    Starting lazily keeps CLI commands and preloading masters (gunicorn --preload
    forks after create_app, and threads do not survive a fork) free of the thread.
    """
    if not services(app).deliveries.enabled:
        return
    lock = threading.Lock()

    @app.before_request
    def start_worker() -> None:
        if services(app).deliveries_stop is not None:
            return
        with lock:
            if services(app).deliveries_stop is None:
                start(app)


def start(app: Flask) -> threading.Event:
    """Start the delivery thread of this process; set the returned event to stop it."""
    stop = threading.Event()
    current = services(app)
    current.deliveries_stop = stop
    thread = threading.Thread(target=_work, args=(app, stop), daemon=True, name="deliveries")
    current.deliveries_thread = thread
    thread.start()
    return stop


def stop(app: Flask, timeout: float = 30) -> None:
    """Stop this process's delivery thread: after its current pass, which this waits for.

    Once this returns the thread uses the database no more, so the engine can be
    disposed: a pass still running would check a connection out of a disposed pool
    and leave it to the garbage collector, unclosed.

    :raises RuntimeError: the pass did not end within `timeout` seconds.
    """
    current = services(app)
    if current.deliveries_stop is not None:
        current.deliveries_stop.set()
    thread = current.deliveries_thread
    if thread is not None and thread is not threading.current_thread():
        thread.join(timeout)
        if thread.is_alive():
            raise RuntimeError(f"the delivery thread did not stop within {timeout} s")


def _work(app: Flask, stop: threading.Event) -> None:
    """The process's background thread: deliveries, reminders, and the scheduled purges."""
    current = services(app)
    interval = current.deliveries.poll_seconds
    retention = Retention.from_settings(current.settings)
    purges = Schedule(retention.purge_interval_seconds)
    while not stop.is_set():
        try:
            with app.app_context():
                now = current.clock.now()
                run_due(now=now)
                run_reminders(clock=current.clock.now)
                if purges.is_due():
                    deleted = purge(retention, now=now)
                    db.session.commit()
                    logger.info(
                        "Purged %s",
                        ", ".join(f"{count} {kind}" for kind, count in deleted.items()),
                        extra={"purged": deleted},  # numbers, in a JSON line
                    )
        except Exception as e:
            # The next pass retries; one bad pass must not end deliveries for good.
            if (dependency := outages.unavailable_dependency(e)) is not None:
                outages.warn(dependency, e, effect="deliveries, reminders and purges wait")
            else:
                logger.exception("Background pass failed")
        stop.wait(interval)
