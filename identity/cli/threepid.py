"""`flask threepid forget ADDRESS`: erase everything held about an address."""

import click

from identity import retention
from identity.addresses import normalise_email
from identity.cli.group import Group
from identity.errors import MatrixError
from identity.extensions import db

group = Group("threepid", help="Third-party identifiers (email addresses).")


@group.command("forget")
@click.argument("address")
@click.option("--yes", is_flag=True, help="Erase without asking for confirmation (scripts).")
def forget(address: str, yes: bool) -> None:
    """Erase ADDRESS's bindings, validation sessions and invitations, for good."""
    try:
        address = normalise_email(address)
    except MatrixError as e:
        raise click.BadParameter(e.error, param_hint="ADDRESS") from None
    if not yes:
        # Nothing brings them back but a backup: the owner must bind the address again.
        click.confirm(
            f"Erase every binding, validation session and invitation of {address}?",
            abort=True,
        )
    deleted = retention.forget("email", address)
    db.session.commit()
    click.echo("Erased " + ", ".join(f"{count} {kind}" for kind, count in deleted.items()) + ".")
