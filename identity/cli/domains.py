"""`flask domains check|resolve|diff|import-info`: domains.yaml for admins."""

import sys

import click

from identity.addresses import normalise_email
from identity.cli.group import Group
from identity.errors import MatrixError
from identity.routing import RoutingError
from identity.routing import RoutingTable
from identity.routing import diff
from identity.routing import schema
from identity.routing import sydent_info
from identity.services import services
from identity.storage import associations

group = Group("domains", help="The routing rules of domains.yaml.")


def _load(path: str | None) -> RoutingTable:
    """The table of `path` (default: DOMAINS_PATH); exits with every problem if invalid."""
    path = path or services().settings.domains_path
    try:
        return schema.load_file(path)
    except RoutingError as e:
        click.echo(f"{e.source} is invalid:", err=True)
        for problem in e.problems:
            click.echo(f"  - {problem}", err=True)
        sys.exit(1)


@group.command("check")
@click.argument("path", required=False)
def check(path: str | None) -> None:
    """Validate a domains file (default: DOMAINS_PATH) and summarise it."""
    table = _load(path)
    click.echo(f"{path or services().settings.domains_path}: valid")
    rules = {name: 0 for name in table.platforms}
    for _, platform in table.rules():
        rules[platform.name] += 1
    for name, platform in table.platforms.items():
        notes = [f"{rules[name]} rule(s)"]
        if platform.protected_server:
            notes.append(f"protected: {platform.protected_server}")
        if platform.requires_invite:
            notes.append("invitation required")
        if platform is table.default:
            notes.append("default")
        click.echo(f"  {name:<16} {platform.server:<40} {', '.join(notes)}")
    click.echo(f"{table.rule_count()} rule(s) on {len(table.platforms)} platform(s).")


@group.command("resolve")
@click.argument("address")
@click.option("--file", "path", help="A domains file other than DOMAINS_PATH.")
def resolve(address: str, path: str | None) -> None:
    """Show the platform of ADDRESS and the rule that decides it."""
    table = _load(path)
    try:
        match = table.resolve(normalise_email(address))
    except MatrixError as e:
        raise click.BadParameter(e.error, param_hint="ADDRESS") from None
    platform = match.platform
    click.echo(f"platform:         {platform.name}")
    click.echo(f"server:           {platform.server}")
    click.echo(f"protected server: {platform.protected_server or '-'}")
    click.echo(f"requires invite:  {'yes' if platform.requires_invite else 'no'}")
    click.echo(f"rule:             {match.rule}")


@group.command("diff")
@click.argument("old")
@click.argument("new")
def diff_command(old: str, new: str) -> None:
    """Show which rules change homeserver from OLD to NEW, and how many bound addresses
    move (their owners will be told `new_hs` by /info)."""
    before, after = _load(old), _load(new)
    changes = diff.rule_changes(before, after)
    for change in changes:
        click.echo(f"  {change.rule}: {change.old.server} -> {change.new.server}")
    moved = diff.moved_addresses(before, after, associations.addresses("email"))
    click.echo(f"{len(changes)} rule(s) change homeserver; {moved} bound address(es) move.")


@group.command("import-info")
@click.argument("info_yaml", type=click.File(encoding="utf-8"))
@click.option(
    "-o",
    "--output",
    type=click.File("w", encoding="utf-8"),
    default="-",
    help="Where to write domains.yaml (default: standard output).",
)
@click.option(
    "--default",
    "default_server",
    help="Homeserver of unmatched addresses, if info.yaml has no catch-all.",
)
def import_info(info_yaml, output, default_server: str | None) -> None:
    """Convert the info.yaml of Sydent's Tchap branch into domains.yaml.

    Exits with status 1 when some patterns could not be expressed or answers differ.
    """
    try:
        imported = sydent_info.import_info(info_yaml.read(), default_server=default_server)
    except sydent_info.InfoFormatError as e:
        raise click.ClickException(str(e)) from None
    output.write(sydent_info.to_yaml(imported, source=info_yaml.name))
    report = [
        ("left out or narrowed", imported.notes),
        ("NOT IMPORTED", imported.skipped),
        ("ANSWERS DIFFER", imported.differences),
    ]
    for title, lines in report:
        for line in lines:
            click.echo(f"{title}: {line}", err=True)
    table = imported.table
    click.echo(
        f"Imported {table.rule_count()} rule(s) on {len(table.platforms)} platform(s);"
        f" {len(imported.skipped)} not imported, {len(imported.differences)} difference(s).",
        err=True,
    )
    if not imported.is_exact:
        sys.exit(1)
