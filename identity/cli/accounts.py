"""`flask accounts token USER_ID`: an identity-server access token, for trials and operations."""

import click

from identity import accounts
from identity.cli.group import Group
from identity.errors import MatrixError
from identity.extensions import db
from identity.services import services

group = Group("accounts", help="Accounts of Matrix users on this identity server.")


@group.command("token")
@click.argument("user_id")
@click.option(
    "--accept-terms",
    is_flag=True,
    help="Record that USER_ID accepted every current terms document (you vouch for it).",
)
def token(user_id: str, accept_terms: bool) -> None:
    """Print a new access token for USER_ID (@user:server) on the v2 API.

    The account is created as /v2/account/register would create it, without asking the
    user's homeserver. Only the token goes to standard output.
    """
    now = services().clock.now()
    terms = services().terms
    try:
        issued = accounts.issue_token(user_id, now=now)
    except MatrixError as e:
        raise click.BadParameter(e.error, param_hint="USER_ID") from None
    if accept_terms:
        accounts.accept_terms(user_id, sorted(terms.urls()), terms, now=now)
    signed = accounts.has_accepted_terms(user_id, terms)
    db.session.commit()
    click.echo(issued)
    if not signed:
        click.echo(
            "Terms not accepted: v2 endpoints answer M_TERMS_NOT_SIGNED until the user"
            " accepts them (POST /_matrix/identity/v2/terms), or run with --accept-terms.",
            err=True,
        )
