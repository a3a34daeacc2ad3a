"""What every command shares: the consoles it prints on, refusing with a reason, the
store check and date options."""

from __future__ import annotations

import sys
from datetime import date

import typer
from rich.console import Console

# Wide when piped (tables stay readable in logs); the terminal's width otherwise. What is
# printed holds names and ids as the catalog wrote them: no Rich markup (`[bold]`, an
# unbalanced `[/x]` that would fail the command) and no emoji codes are read in it; styles
# are given as `Text`.
out = Console(
    highlight=False, markup=False, emoji=False, width=None if sys.stdout.isatty() else 160
)
err = Console(stderr=True, highlight=False, markup=False, emoji=False, soft_wrap=True)


def fail(*lines: str, code: int = 1) -> None:
    """Refuse: the reason on stderr (one line each, never wrapped) and a non-zero exit."""
    for line in lines:
        err.print(line)
    raise typer.Exit(code)


def require_store() -> None:
    """Refuse to run on a store that is missing or not migrated."""
    from billing_core.store.engine import StoreError, require_current

    try:
        require_current()
    except StoreError as error:
        fail(str(error))


def parse_date(value: str | None, name: str) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        fail(f"{name}: not a date (YYYY-MM-DD): {value!r}", code=2)
    return None


def check_status(status: str | None) -> None:
    """Refuse an invoice status that does not exist (an empty table would look like an answer)."""
    from billing_core.invoices.lifecycle import STATUSES

    if status is not None and status not in STATUSES:
        fail(f"--status: no invoice status {status!r} (one of {', '.join(STATUSES)})", code=2)


def require_customer(session, customer: str | None, option: str = "--customer") -> None:
    """Refuse a customer id the catalog does not hold."""
    if customer is None:
        return
    import sqlalchemy as sa

    from billing_core.store.models import Customer

    c = Customer.__table__.c
    if session.execute(sa.select(c.id).where(c.id == customer)).first() is None:
        fail(f"{option}: no customer {customer!r} in the catalog")
