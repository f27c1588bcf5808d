"""`flask sydent import`: moving a Sydent deployment to this service."""

from datetime import timedelta

import click

from identity import sydent_import
from identity.cli.group import Group
from identity.extensions import db
from identity.services import services
from identity.storage import planner

group = Group("sydent", help="Moving from Sydent.")

# How many row references are printed per reason; the counts are always complete.
_SHOWN_ROWS = 5


@group.command("import")
@click.argument("sydent_db", type=click.Path(dir_okay=False))
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="Sydent's sydent.conf, to import its signing key ([crypto] ed25519.signingkey).",
)
@click.option(
    "--replace-key",
    is_flag=True,
    help="Replace a different signing key at SIGNING_KEY_PATH (breaks its signatures).",
)
@click.option(
    "--peer",
    "as_peer",
    is_flag=True,
    help="One more peer of a deployment already imported: keep our signing key and"
    " pepper, keep this peer's key (needs --config) to sign the invitations it stored.",
)
def import_command(
    sydent_db: str, config_path: str | None, replace_key: bool, as_peer: bool
) -> None:
    """Import Sydent's SQLite database SYDENT_DB: bindings, pepper, pending invitations,
    ephemeral keys, peer public keys, accounts, access tokens and accepted terms.

    A deployment of several replicating peers: import each peer's database in turn,
    the first without --peer, the others with it. Running it again imports only what
    is new.
    """
    current = services()
    try:
        report = sydent_import.import_sydent(
            sydent_db,
            config_path,
            now=current.clock.now(),
            invite_validity=timedelta(seconds=current.settings.invite_validity_seconds),
            signing_key_path=current.settings.signing_key_path,
            replace_key=replace_key,
            as_peer=as_peer,
        )
    except sydent_import.SydentImportError as e:
        db.session.rollback()
        raise click.ClickException(str(e)) from None
    db.session.commit()
    # The planner has no statistics on what was just loaded: lookups would scan.
    planner.analyze(*sydent_import.MODELS)
    if report.written_key is not None:
        # This process signs with the imported key from now on; restart the workers.
        current.keys.replace(report.written_key)
    for name, kind in report.kinds.items():
        click.echo(
            f"{name}: {kind.imported} imported, {kind.present} already present,"
            f" {kind.skipped_count} skipped"
        )
        for reason, rows in kind.skipped.items():
            shown = ", ".join(rows[:_SHOWN_ROWS]) + (" …" if len(rows) > _SHOWN_ROWS else "")
            click.echo(f"  skipped {len(rows)}: {reason} ({shown})")
    for note in report.notes:
        click.echo(f"note: {note}")
    if report.written_key is not None:
        click.echo(
            f"Signing key {current.settings.signing_key_path} now holds Sydent's key;"
            " restart the service to use it."
        )
    click.echo(
        f"Total: {report.imported} imported, {report.present} already present,"
        f" {report.skipped} skipped."
    )
