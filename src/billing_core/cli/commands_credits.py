"""`billing credits`: credit grants and their ledger."""

from __future__ import annotations

from typing import Annotated

import typer

from billing_core.cli.common import out, require_customer, require_store

credits_app = typer.Typer(no_args_is_help=True, help="Credit grants and their ledger.")


@credits_app.command("list")
def credits_list(
    customer: Annotated[
        str | None, typer.Option(metavar="CUSTOMER", help="only this customer's grants")
    ] = None,
    ledger: Annotated[bool, typer.Option("--ledger", help="also list every ledger entry")] = False,
) -> None:
    """Credit grants: what each granted, what invoices consumed, the balance left."""
    from billing_core.cli.terminal import show_credits
    from billing_core.store.engine import unit_of_work

    require_store()
    with unit_of_work() as session:
        require_customer(session, customer)
        show_credits(session, out, customer=customer, with_ledger=ledger)
