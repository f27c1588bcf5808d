"""The command group every `flask …` group is made of."""

from typing import Any

import click
from flask.cli import AppGroup

from identity.config import ConfigError


class Group(AppGroup):
    """Flask's command group, where a configuration error found while a command runs (a
    missing signing key, say) ends it with one line and exit status 1, as one found at
    start does (app.create_app), not with a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigError as e:
            raise click.ClickException(str(e)) from None
