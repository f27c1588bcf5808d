"""`flask lookup rotate-pepper`: a new lookup pepper, without stopping lookups."""

import click

from identity import lookup
from identity.cli.group import Group
from identity.extensions import db
from identity.services import services

group = Group("lookup", help="The hashed lookups.")


@group.command("rotate-pepper")
@click.option("--batch", default=5_000, show_default=True, help="Rows hashed per transaction.")
def rotate_pepper(batch: int) -> None:
    """Hash every binding with a new pepper, then make it current.

    Lookups keep answering with the old pepper meanwhile; interrupted, the command
    resumes where it stopped when run again.
    """
    new = lookup.rotate_pepper(
        now=services().clock.now(),
        batch=batch,
        commit=db.session.commit,
        progress=lambda done: click.echo(f"{done} binding(s) hashed…"),
    )
    click.echo(f"The new pepper is current ({len(new)} characters); clients will be told.")
