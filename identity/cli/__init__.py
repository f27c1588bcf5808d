"""`flask …` command groups, thin wrappers over the domain functions."""

from flask import Flask

from identity.cli import accounts
from identity.cli import deliveries
from identity.cli import domains
from identity.cli import invites
from identity.cli import keys
from identity.cli import lookup
from identity.cli import sessions
from identity.cli import sydent
from identity.cli import threepid

GROUPS = [
    accounts.group,
    keys.group,
    sessions.group,
    deliveries.group,
    domains.group,
    invites.group,
    lookup.group,
    sydent.group,
    threepid.group,
]


def register_cli(app: Flask) -> None:
    for group in GROUPS:
        app.cli.add_command(group)
