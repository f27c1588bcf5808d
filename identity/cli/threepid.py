"""`flask threepid forget ADDRESS`: erase everything held about an address."""

import click
from flask.cli import AppGroup

from identity import retention
from identity.addresses import normalise_email
from identity.errors import MatrixError
from identity.extensions import db

group = AppGroup("threepid", help="Third-party identifiers (email addresses).")


@group.command("forget")
@click.argument("address")
def forget(address: str) -> None:
    """Erase ADDRESS's bindings, validation sessions and invitations."""
    try:
        address = normalise_email(address)
    except MatrixError as e:
        raise click.BadParameter(e.error, param_hint="ADDRESS") from None
    deleted = retention.forget("email", address)
    db.session.commit()
    click.echo("Erased " + ", ".join(f"{count} {kind}" for kind, count in deleted.items()) + ".")
