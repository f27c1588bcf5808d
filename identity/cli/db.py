"""`flask db …` (Flask-Migrate): operators upgrade; the other commands are warned about.

Flask-Migrate's group comes from its package, and offers Alembic's authoring commands
beside `upgrade`. A deployment only ever runs `flask db upgrade` (docs/operations.md):
the commands that write migration files are for developers of the service, and those
that rewrite a database's recorded version ask for confirmation first. Both are left
out of `flask db --help`.
"""

import functools
from collections.abc import Callable
from typing import Any

import click

# Write files under migrations/: a change to the service, not to a deployment.
AUTHORING = frozenset({"init", "revision", "migrate", "edit", "merge"})
# Change which version a database says it has, or its tables, backwards.
REWRITING = frozenset({"downgrade", "stamp"})
_GUARDED = "_identity_guarded"


def guard_authoring_commands() -> None:
    """Hide the `flask db` commands that are not for operators, and make each say so
    when run; those that rewrite the database ask for confirmation (a script without a
    terminal is refused).

    Flask loads the app before it resolves the command: this runs in time.
    """
    from flask_migrate.cli import db as group  # only in processes that run commands

    for name, command in group.commands.items():
        if name not in AUTHORING | REWRITING or command.callback is None:
            continue
        if getattr(command.callback, _GUARDED, False):
            continue
        command.hidden = True
        command.callback = _guarded(name, command.callback)


def _guarded(name: str, callback: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(callback)
    def run(*args: Any, **kwargs: Any) -> Any:
        if name in AUTHORING:
            click.echo(
                f"Warning: `flask db {name}` writes migration files: it is for developers"
                " of the service. A deployment only runs `flask db upgrade`.",
                err=True,
            )
        else:
            click.echo(
                f"Warning: `flask db {name}` rewrites the schema version this database"
                " records. A deployment only runs `flask db upgrade`, and goes back by"
                " restoring a backup (docs/operations.md).",
                err=True,
            )
            click.confirm("Go on anyway?", default=False, abort=True, err=True)
        return callback(*args, **kwargs)

    setattr(run, _GUARDED, True)
    return run
