"""`flask sessions purge-expired`: run it regularly (cron, systemd timer)."""

from datetime import timedelta

import click
from flask import current_app
from flask.cli import AppGroup

from identity import validation
from identity.extensions import db

group = AppGroup("sessions", help="Email validation sessions.")


@group.command("purge-expired")
def purge_expired() -> None:
    """Delete validation sessions past their lifetime."""
    clock = current_app.extensions["identity.clock"]
    lifetime = timedelta(seconds=current_app.config["SESSION_LIFETIME_SECONDS"])
    count = validation.purge_expired(now=clock.now(), lifetime=lifetime)
    db.session.commit()
    click.echo(f"Deleted {count} expired validation session(s).")
