"""`billing subscriptions`: billing schedules and what a close would bill for one."""

from __future__ import annotations

import json
import sys
from datetime import date
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from billing_core.cli.common import fail, out, parse_date, require_store

subscriptions_app = typer.Typer(no_args_is_help=True, help="Billing schedules.")


@subscriptions_app.command("list")
def subscriptions_list(
    customer: Annotated[
        str | None, typer.Option(metavar="CUSTOMER", help="only this customer's")
    ] = None,
    status: Annotated[
        str | None, typer.Option(metavar="STATUS", help="draft, upcoming, active or completed")
    ] = None,
    on: Annotated[
        str | None,
        typer.Option(metavar="DATE", help="the day the status is read on (default: today)"),
    ] = None,
) -> None:
    """Billing schedules with their status: draft, upcoming, active or completed."""
    from billing_core.store.engine import unit_of_work
    from billing_core.views.subscriptions import list_subscriptions

    require_store()
    statuses = ("draft", "upcoming", "active", "completed")
    if status is not None and status not in statuses:
        fail(f"--status must be one of {', '.join(statuses)}, got {status!r}", code=2)
    day = parse_date(on, "--on") or date.today()
    with unit_of_work() as session:
        rows = list_subscriptions(session, day, customer, status)
    table = Table(title=f"Subscriptions on {day}")
    for col in ("id", "customer", "billed to", "cadence", "day", "start", "end", "status"):
        table.add_column(col)
    table.add_column("prices")
    for r in rows:
        table.add_row(
            r.id,
            r.customer_id,
            r.billed_customer_id,
            r.cadence,
            str(r.anchor_day)
            + (f" (aligned, own {r.billing_day})" if r.anchor_day != r.billing_day else ""),
            r.start.isoformat(),
            r.end.isoformat() if r.end else "",
            r.status,
            ", ".join(r.prices),
        )
    out.print(table)


@subscriptions_app.command("preview")
def subscriptions_preview(
    subscription_id: Annotated[str, typer.Argument(metavar="ID", help="subscription id")],
    through: Annotated[
        str | None,
        typer.Option(metavar="DATE", help="preview closes up to this day (default: today)"),
    ] = None,
    format_: Annotated[
        str, typer.Option("--format", metavar="FORMAT", help="table or json")
    ] = "table",
) -> None:
    """The periods, billing dates and prorated amounts a close would produce; writes
    nothing."""
    from billing_core.store.engine import unit_of_work
    from billing_core.views.subscriptions import SubscriptionError, preview_subscription

    require_store()
    if format_ not in ("table", "json"):
        fail(f"--format must be table or json, got {format_!r}", code=2)
    day = parse_date(through, "--through") or date.today()
    try:
        with unit_of_work() as session:
            preview = preview_subscription(session, subscription_id, day)
    except SubscriptionError as error:
        fail(str(error))
    if format_ == "json":
        sys.stdout.write(json.dumps(_preview_json(preview, day), indent=2) + "\n")
        return
    _print_preview(preview, day)


def _amount(value: Any, currency: str) -> str | None:
    from billing_core.domain.money import money_str

    return None if value is None else money_str(value, currency)


def _preview_json(preview: Any, day: date) -> dict:
    """The preview as `--format json` writes it."""
    sub, currency = preview.subscription, preview.currency
    return {
        "subscription": sub.id,
        "customer": sub.customer_id,
        "billed_customer": preview.billed_customer_id,
        "status": preview.status,
        "cadence": sub.cadence,
        "billing_day": preview.anchor_day,
        "currency": currency,
        "timezone": preview.timezone,
        "through": day.isoformat(),
        "to_bill": _amount(preview.to_bill, currency),
        "notes": preview.notes,
        "lines": [_preview_line_json(x, currency) for x in preview.lines],
    }


def _preview_line_json(x: Any, currency: str) -> dict:
    from billing_core.domain.money import plain

    return {
        "kind": x.kind,
        "price": x.price_code,
        "product": x.product,
        "timing": x.timing,
        "serviced_customer": x.serviced_customer_id,
        "billed_customer": x.billed_customer_id,
        "period_start": x.period_start.isoformat(),
        "period_end": x.period_end.isoformat(),
        "days": x.days,
        "period_days": x.full_days,
        "due_date": x.due_date.isoformat(),
        "billing_date": x.billing_date.isoformat() if x.billing_date else None,
        "state": x.state,
        "quantity": plain(x.quantity),
        "amount": _amount(x.amount, currency),
        "commitment": _amount(x.commitment, currency),
        "window_start": x.window_start.isoformat() if x.window_start else None,
        "window_end": x.window_end.isoformat() if x.window_end else None,
        "invoice": x.invoice_number,
    }


def _print_preview(preview: Any, day: date) -> None:
    """The preview as a table: the schedule, its closes, the usage still open, notes."""
    from billing_core.domain.money import money_str

    sub, currency = preview.subscription, preview.currency
    out.print(
        Text(sub.id, "bold") + f"  {preview.customer_name} ({sub.customer_id}), billed to "
        f"{preview.billed_customer_id}  {sub.cadence} on day {preview.anchor_day}  from "
        f"{sub.start}" + (f" to {sub.end}" if sub.end else "") + f"  {preview.status}  "
        f"{currency}  {preview.timezone}"
    )
    out.print(_preview_table(preview, day))
    for x in preview.lines:
        if x.kind == "usage" and x.state != "billed":
            out.print(
                f"  {x.price_code} {x.period_start} – {x.period_end} ({x.serviced_customer_id}):"
                f" usage from {x.window_start:%Y-%m-%d %H:%M} to {x.window_end:%Y-%m-%d %H:%M}"
                " UTC, rated so far"
            )
    for note in preview.notes:
        out.print(f"  note: {note}")
    out.print(f"to bill through {day}: {money_str(preview.to_bill, currency)} {currency}")


def _preview_table(preview: Any, day: date) -> Table:
    from billing_core.domain.money import plain

    currency = preview.currency
    table = Table(title=f"Closes through {day}")
    for col in ("period", "days", "item", "serviced", "due", "billing date", "state"):
        table.add_column(col)
    table.add_column("quantity", justify="right")
    table.add_column("amount", justify="right")
    for x in preview.lines:
        item = x.price_code or f"minimum {_amount(x.commitment, currency) or ''}".strip()
        if x.kind == "usage":
            item += f" (usage{', pool ' + x.pool if x.pool else ''})"
        table.add_row(
            f"{x.period_start} – {x.period_end}",
            f"{x.days}/{x.full_days}" if x.prorated else str(x.days),
            item,
            x.serviced_customer_id,
            x.due_date.isoformat(),
            x.billing_date.isoformat() if x.billing_date else "none yet",
            x.state + (f" {x.invoice_number}" if x.invoice_number else ""),
            plain(x.quantity) if x.kind == "usage" else "",
            _amount(x.amount, currency) or "",
        )
    return table
