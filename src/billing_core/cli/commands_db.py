"""`billing db`: create, migrate and grant the store."""

from __future__ import annotations

from typing import Annotated

import typer

from billing_core.cli.common import err, fail, out, require_store
from billing_core.config import get_settings

db_app = typer.Typer(no_args_is_help=True, help="Create or migrate the store.")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create the store or migrate it to the code's schema (Alembic)."""
    from billing_core.store.engine import StoreError, safe_url, upgrade

    settings = get_settings()
    try:
        revision = upgrade(settings.database_url)
    except StoreError as error:
        fail(str(error))
    out.print(f"store {safe_url(settings.database_url)} is at revision {revision}")


@db_app.command("grant")
def db_grant(
    role: Annotated[str, typer.Argument(metavar="ROLE", help="the application role (PostgreSQL)")],
    apply: Annotated[
        bool, typer.Option("--apply", help="run the statements (connected as the store's owner)")
    ] = False,
) -> None:
    """Print (or apply) the grants of the application role: read and write rows, nothing
    else. On SQLite there are no roles: it says so and exits 0."""
    from billing_core.store.engine import safe_url
    from billing_core.store.roles import RoleError, grants

    require_store()
    url = get_settings().database_url
    try:
        result = grants(url, role, apply=apply)
    except RoleError as error:
        fail(str(error))
    if not result.applies:
        out.print(*result.warnings, soft_wrap=True)
        return
    for warning in result.warnings:
        err.print(f"warning: {warning}")
    for statement in result.statements:
        out.print(statement, soft_wrap=True)
    if apply:
        out.print(f"-- applied to {safe_url(url)}")
