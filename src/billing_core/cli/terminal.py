"""Invoices and credits in the terminal (Rich), grouped the way the document groups them."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from rich.console import Console
from rich.table import Table
from rich.text import Text
from sqlmodel import Session

from billing_core.domain.money import money_str
from billing_core.domain.terms import DEFAULT_LOCALE
from billing_core.invoices.contexts import contexts
from billing_core.invoices.formatting import day
from billing_core.invoices.lifecycle import InvoiceError
from billing_core.store.models import Invoice


def show_invoice(
    session: Session,
    invoice_id: int,
    console: Console,
    store_name: str = "billing",
    title: str | None = None,
) -> None:
    """Print one invoice: header, a section per serviced customer, totals, usage."""
    invoice = session.execute(
        sa.select(Invoice.__table__).where(Invoice.__table__.c.id == invoice_id)
    ).first()
    if invoice is None:
        raise InvoiceError(f"no invoice {invoice_id}")
    print_invoice(console, invoice, contexts(session, [invoice], store_name)[invoice.id], title)


def print_invoice(console: Console, invoice: Any, data: dict, title: str | None = None) -> None:
    """Print an invoice from its document context."""
    _print_heading(console, invoice, data, title)
    if data.get("summary"):
        console.print(_summary_table(data["summary"], data["invoice"]["currency"]))
    for section in data["sections"]:
        console.print(_section_table(section))
    console.print(_totals_table(data["totals"]))
    if data["breakdown"]:
        console.print(_usage_table(data["breakdown"]))


def _print_heading(console: Console, invoice: Any, data: dict, title: str | None) -> None:
    """The title (DRAFT in red), then who it is from and to, its billing date and currency."""
    head = data["invoice"]
    if title is None:
        if head["draft"]:
            title = f"DRAFT invoice {invoice.id} (not yet issued)"
        elif head["number"]:
            title = f"Invoice {head['number']}"
        else:
            title = f"Invoice {invoice.id}"
    status = "" if head["draft"] else f"  [{invoice.status}]"
    console.print(Text(title, style="bold red" if head["draft"] else "bold") + Text(status))
    console.print(
        Text.assemble(
            ("from ", "dim"),
            data["issuer"]["name"],
            ("  to ", "dim"),
            (data["billed"]["name"], "bold"),
            f" ({data['billed']['id']})",
            ("  billing date ", "dim"),
            head["billing_date"],
            ("  currency ", "dim"),
            head["currency"],
        )
    )


def _section_table(section: dict) -> Table:
    """One serviced customer's rows, taxes, credits and total."""
    label = f"{section['name']} ({section['customer_id']})"
    if section["is_billed"]:
        label += " · billed customer"
    table = Table(title=label, title_justify="left", title_style="bold", expand=False)
    table.add_column("item", overflow="fold")
    table.add_column("service period", no_wrap=True)
    table.add_column("quantity", justify="right")
    table.add_column("unit price", justify="right")
    table.add_column("amount", justify="right", no_wrap=True)
    for row in section["rows"]:
        item = Text((f"{row['bundle']} · " if row["bundle"] else "") + row["product"])
        if row["note"]:
            item += Text("\n" + row["note"], "dim")
        style = "green" if row["kind"] == "discount" else None
        table.add_row(
            item, row["period"], row["quantity"], row["unit_price"], row["amount"], style=style
        )
    for tax in section["taxes"]:
        table.add_row(f"{tax['label']} on {tax['base']}", "", "", "", tax["amount"], style="dim")
    for credit in section["credits"]:
        table.add_row(credit["label"], "", "", "", credit["amount"], style="green")
    table.add_section()
    table.add_row(Text("total", "bold"), "", "", "", Text(section["total"], "bold"))
    return table


def _summary_table(summary: dict, currency: str) -> Table:
    """A roll-up's summary by serviced customer, with the invoice's totals under it."""
    table = Table(title="Summary by customer", title_justify="left", title_style="bold")
    table.add_column("customer", overflow="fold")
    for column in summary["columns"]:
        table.add_column(column.lower(), justify="right", no_wrap=True)
    for row in summary["rows"]:
        table.add_row(f"{row['name']} ({row['customer_id']})", *row["amounts"])
    table.add_section()
    table.add_row(
        Text(f"invoice total ({currency})", "bold"), *(Text(a, "bold") for a in summary["totals"])
    )
    return table


def _totals_table(rows: list[dict]) -> Table:
    totals = Table(show_header=False, box=None)
    totals.add_column(justify="left")
    totals.add_column(justify="right")
    for row in rows:
        if row["grand"]:
            totals.add_row(Text(row["label"], "bold"), Text(row["amount"], "bold"))
        else:
            totals.add_row(row["label"], row["amount"])
    return totals


def _usage_table(breakdown: list[dict]) -> Table:
    """Usage per customer and metric, each name shown once, with each metric's total."""
    usage = Table(title="Usage breakdown", title_justify="left", title_style="bold")
    for col, justify in (
        ("customer", "left"),
        ("metric", "left"),
        ("priced as", "left"),
        ("service period", "left"),
        ("quantity", "right"),
    ):
        usage.add_column(col, justify=justify)
    for customer in breakdown:
        first_customer = True
        for metric in customer["metrics"]:
            for i, row in enumerate(metric["rows"]):
                usage.add_row(
                    customer["name"] if first_customer else "",
                    metric["name"] if i == 0 else "",
                    row["product"] + (f" ({row['note']})" if row["note"] else ""),
                    row["period"],
                    row["quantity"],
                )
                first_customer = False
            if metric["total"]:
                usage.add_row("", "", f"total {metric['name']}", "", metric["total"])
    return usage


def print_explanation(console: Console, data: dict) -> None:
    """`billing invoices explain`: each line, its steps, and the events behind usage."""
    console.print(
        Text(f"Invoice {data['reference']}", "bold")
        + Text(f"  {data['billed']} ({data['billed_id']})  total {data['total']}")
    )
    for line in data["lines"]:
        head = Text(f"\nline {line['position']}  ", "bold") + Text(line["label"], "bold")
        head += Text(f"  {line['customer_id']}  {line['period']}", "dim")
        console.print(head)
        if line["quantity"]:
            console.print(f"  {line['quantity']} × {line['unit_price']} → {line['amount']}")
        else:
            console.print(f"  {line['amount']}")
        for part in line["charges"]:
            _print_part(console, part, several=len(line["charges"]) > 1)


def _print_part(console: Console, part: dict, several: bool) -> None:
    indent = "    " if several else "  "
    if several:
        console.print(
            f"  {part['customer']} ({part['customer_id']}): {part['quantity']}, {part['amount']}"
        )
    if part["counted"]:
        console.print(Text(f"{indent}counted: {part['counted']}", "dim"))
    for step in part["steps"]:
        console.print(f"{indent}{step}")
    events = part["events"]
    if events is not None:
        console.print(f"{indent}window {events['window_utc']}")
        console.print(f"{indent}       {events['window_local']}")
        if events["count"]:
            console.print(
                f"{indent}events {events['count']:,}: first {events['first']}, "
                f"last {events['last']}; they give {events['now']} now"
            )
        else:
            console.print(f"{indent}events 0 in the window")
        if events["late"]:
            console.print(f"{indent}{events['late']:,} of them arrived after this line was rated")
    for adj in part["adjustments"]:
        console.print(
            f"{indent}late usage billed as an adjustment: {adj['quantity']} more, "
            f"{adj['amount']}, billing date {adj['billing_date']} on {adj['invoice']}"
        )


def show_credits(
    session: Session, console: Console, customer: str | None = None, with_ledger: bool = False
) -> None:
    """Print the credit grants with what they gave and what is left (and the ledger)."""
    from billing_core.invoices.ledger import credit_overview, ledger

    grants = credit_overview(session, customer)
    console.print(_grants_table(grants, customer))
    if not grants:
        console.print("no credit grants" + (f" held by {customer}" if customer else ""))
    if not with_ledger:
        return
    console.print(_ledger_table(ledger(session, customer)))


def _grants_table(grants: list[dict], customer: str | None) -> Table:
    table = Table(title="Credit grants" + (f" of {customer}" if customer else ""))
    for col in (
        "grant",
        "customer",
        "subscription",
        "priority",
        "effective",
        "expires",
        "granted",
        "consumed",
        "balance",
        "currency",
    ):
        table.add_column(
            col,
            justify="right" if col in ("priority", "granted", "consumed", "balance") else "left",
        )
    for g in grants:
        table.add_row(
            g["id"],
            g["customer"],
            g["subscription"] or "",
            str(g["priority"]),
            g["effective"].isoformat(),
            g["expires"].isoformat() if g["expires"] else "never",
            money_str(g["amount"], g["currency"]),
            money_str(g["consumed"], g["currency"]),
            money_str(g["balance"], g["currency"]),
            g["currency"],
        )
    return table


def _ledger_table(entries: list[dict]) -> Table:
    table = Table(title="Credit ledger")
    for col in ("grant", "billing date", "invoice", "kind", "amount", "balance after", "note"):
        table.add_column(col, justify="right" if col in ("amount", "balance after") else "left")
    for e in entries:
        table.add_row(
            e["grant"],
            day(e["billing_date"], DEFAULT_LOCALE),
            _ledger_invoice(e),
            e["kind"],
            money_str(e["amount"], e["currency"]),
            money_str(e["balance"], e["currency"]),
            e["note"] or "",
        )
    return table


def _ledger_invoice(entry: dict) -> str:
    """The invoice a ledger entry belongs to: its number, a draft, or a discarded draft."""
    if entry["invoice_number"]:
        return f"{entry['invoice_number']} ({entry['invoice_status']})"
    if entry["invoice_id"] is not None:
        return f"draft {entry['invoice_id']} ({entry['invoice_status']})"
    return "discarded draft"
