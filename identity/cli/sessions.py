"""`flask sessions purge-expired`: run it regularly (cron, systemd timer)."""

import click

from identity import validation
from identity.cli.group import Group
from identity.extensions import db
from identity.services import services

group = Group("sessions", help="Email validation sessions.")


@group.command("purge-expired")
def purge_expired() -> None:
    """Delete validation sessions past their lifetime."""
    current = services()
    lifetime = current.settings.session_lifetime
    count = validation.purge_expired(now=current.clock.now(), lifetime=lifetime)
    db.session.commit()
    click.echo(f"Deleted {count} expired validation session(s).")
