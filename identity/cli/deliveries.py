"""`flask deliveries run-due|status`: the onbind delivery queue."""

import click

from identity import worker
from identity.cli.group import Group
from identity.services import services
from identity.storage import deliveries as queue

group = Group("deliveries", help="Invitations waiting to reach homeservers.")


@group.command("run-due")
def run_due() -> None:
    """Attempt every due delivery once."""
    delivered = worker.run_due(now=services().clock.now())
    click.echo(f"Delivered {delivered} invitation(s).")


@group.command("status")
def status() -> None:
    """How many deliveries are still waiting."""
    click.echo(f"{queue.pending_count()} delivery(ies) waiting.")
