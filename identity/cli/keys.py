"""`flask keys generate|show`."""

import os

import click

from identity import keys
from identity.cli.group import Group
from identity.services import services

group = Group("keys", help="The service's signing key.")


@group.command("generate")
@click.option("--force", is_flag=True, help="Replace an existing key (breaks old signatures).")
def generate(force: bool) -> None:
    """Generate a signing key at SIGNING_KEY_PATH."""
    path = services().settings.signing_key_path
    if os.path.exists(path) and not force:
        raise click.ClickException(f"{path} exists; use --force to replace it")
    key = keys.replace(path) if force else keys.generate(path)
    click.echo(f"Generated {keys.key_id(key)} in {path}")


@group.command("show")
def show() -> None:
    """Print the key id and public key (never the private key)."""
    key = services().keys.key()
    click.echo(f"{keys.key_id(key)} {keys.public_key_base64(key)}")
