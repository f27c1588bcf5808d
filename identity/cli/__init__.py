"""`flask …` command groups, thin wrappers over the domain functions."""

from flask import Flask

from identity.cli import keys

GROUPS = [keys.group]


def register_cli(app: Flask) -> None:
    for group in GROUPS:
        app.cli.add_command(group)
