"""`billing reports`: what finance asks of the issued invoices (revenue)."""

from __future__ import annotations

import csv
import io
import json
import sys
from decimal import Decimal
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from billing_core.cli.common import fail, out, parse_date, require_store

reports_app = typer.Typer(no_args_is_help=True, help="Reports on the issued invoices.")

FORMATS = ("table", "csv", "json")
# The columns of the csv and json forms, in order; money as exact decimal strings.
COLUMNS = [
    "customer",
    "customer_name",
    "currency",
    "subtotal",
    "discounts",
    "revenue",
    "tax",
    "credits",
    "total",
    "invoices",
]
MONEY = ("subtotal", "discounts", "revenue", "tax", "credits", "total")


@reports_app.command("revenue")
def reports_revenue(
    from_: Annotated[
        str,
        typer.Option("--from", metavar="DATE", help="first billing date counted (included)"),
    ],
    to: Annotated[
        str,
        typer.Option(metavar="DATE", help="last billing date counted (included)"),
    ],
    by: Annotated[
        str,
        typer.Option(
            metavar="BASIS",
            help="serviced: each line to the customer it serviced (a roll-up's children "
            "apart); billed: each invoice to its billed customer",
        ),
    ] = "serviced",
    format_: Annotated[
        str, typer.Option("--format", metavar="FORMAT", help="table, csv or json")
    ] = "table",
) -> None:
    """Issued revenue per customer and currency: issued and paid invoices whose billing
    date is from --from to --to, both included (drafts, canceled and void invoices left
    out). Revenue is net of discounts and before tax; credits are shown apart, not taken
    off it."""
    from billing_core.store.engine import unit_of_work
    from billing_core.views.revenue import BASES, revenue

    if by not in BASES:
        fail(f"--by must be serviced or billed, got {by!r}", code=2)
    if format_ not in FORMATS:
        fail(f"--format must be table, csv or json, got {format_!r}", code=2)
    start, end = parse_date(from_, "--from"), parse_date(to, "--to")
    if start > end:
        fail(f"--from {start} is after --to {end}: no billing date is in the range", code=2)
    require_store()
    with unit_of_work() as session:
        report = revenue(session, start, end, by)
    if format_ == "table":
        _print_table(report)
    elif format_ == "csv":
        sys.stdout.write(_csv(report))
    else:
        sys.stdout.write(json.dumps(_json(report), indent=2) + "\n")


def _cells(row) -> dict:
    """A row as the csv and json forms spell it: money as exact decimal strings."""
    from billing_core.domain.money import money_str

    cells = {
        "customer": row.customer,
        "customer_name": row.customer_name,
        "currency": row.currency,
        "invoices": row.invoices,
    }
    cells |= {name: money_str(getattr(row, name), row.currency) for name in MONEY}
    return {name: cells[name] for name in COLUMNS}


def _csv(report) -> str:
    """One row per customer and currency (no totals row: a spreadsheet would add it in)."""
    from billing_core.store.files import SafeCsvWriter

    buffer = io.StringIO()
    writer = SafeCsvWriter(csv.writer(buffer))
    writer.writerow(COLUMNS)
    for row in report.rows:
        writer.writerow(list(_cells(row).values()))
    return buffer.getvalue()


def _json(report) -> dict:
    totals = [
        {k: v for k, v in _cells(row).items() if k not in ("customer", "customer_name")}
        for row in report.totals
    ]
    return {
        "from": report.start.isoformat(),
        "to": report.end.isoformat(),
        "by": report.by,
        "statuses": ["issued", "paid"],
        "rows": [_cells(row) for row in report.rows],
        "totals": totals,
    }


def _shown(amount: Decimal, currency: str) -> str:
    """An amount for the terminal: the currency's minor units, thousands grouped."""
    from billing_core.domain.money import round_money

    return f"{round_money(amount, currency):,f}"


def _print_table(report) -> None:
    who = "serviced customer" if report.by == "serviced" else "billed customer"
    table = Table(
        title=f"Issued revenue by {who}, billing dates {report.start} to {report.end}",
        title_justify="left",
        title_style="bold",
    )
    for col in ("customer", "name", "currency", *MONEY, "invoices"):
        table.add_column(col, justify="right" if col in (*MONEY, "invoices") else "left")
    for row in report.rows:
        table.add_row(
            row.customer,
            row.customer_name or "",
            row.currency,
            *(_shown(getattr(row, name), row.currency) for name in MONEY),
            str(row.invoices),
        )
    if report.totals:
        table.add_section()
    for row in report.totals:
        table.add_row(
            Text("total", "bold"),
            "",
            row.currency,
            *(Text(_shown(getattr(row, name), row.currency), "bold") for name in MONEY),
            Text(str(row.invoices), "bold"),
        )
    out.print(table)
    if not report.rows:
        out.print(f"no issued invoices with a billing date from {report.start} to {report.end}")
    out.print(
        "revenue = subtotal + discounts (before tax); credits are shown apart, not taken off "
        "revenue; total = revenue + tax + credits"
    )
