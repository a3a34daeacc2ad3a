"""An invoice in the terminal, grouped the way the document groups it."""

from __future__ import annotations

import sqlalchemy as sa
from rich.console import Console
from rich.table import Table
from sqlmodel import Session

from .invoices import InvoiceError, customer_names, lines_of
from .models import Invoice
from .money import money_str, plain
from .reference import issuer as load_issuer
from .rendering import day, period


def show_invoice(session: Session, invoice_id: int, console: Console) -> None:
    """Print one invoice: header, a section per serviced customer, totals."""
    invoice = session.execute(
        sa.select(Invoice.__table__).where(Invoice.__table__.c.id == invoice_id)
    ).first()
    if invoice is None:
        raise InvoiceError(f"no invoice {invoice_id}")
    names = customer_names(session)
    lines = lines_of(session, [invoice.id])[invoice.id]
    issuer = load_issuer(session, "billing")
    currency = invoice.currency
    title = f"Invoice {invoice.number}" if invoice.number else f"DRAFT invoice {invoice.id}"
    console.print(f"[bold]{title}[/bold]  ({invoice.status})")
    console.print(
        f"from {issuer['name']}  to [bold]{names.get(invoice.billed_customer_id)}"
        f"[/bold] ({invoice.billed_customer_id})  billing date "
        f"{day(invoice.billing_date)}  currency {currency}"
    )
    order: list[str] = []
    for line in lines:
        if line.serviced_customer_id not in order:
            order.append(line.serviced_customer_id)
    order.sort(key=lambda c: (c != invoice.billed_customer_id, names.get(c, c), c))
    for customer_id in order:
        table = Table(
            title=f"{names.get(customer_id, customer_id)} ({customer_id})",
            title_justify="left",
            expand=False,
        )
        for col, justify in (
            ("item", "left"),
            ("kind", "left"),
            ("period", "left"),
            ("quantity", "right"),
            ("unit price", "right"),
            ("amount", "right"),
        ):
            table.add_column(col, justify=justify)
        section_total = 0
        for line in (x for x in lines if x.serviced_customer_id == customer_id):
            label = line.product or ""
            if line.kind in ("tax", "credit", "adjustment", "minimum") and line.description:
                label = f"{label} — {line.description}" if line.kind != "credit" else label
            table.add_row(
                label,
                line.kind,
                period(line.period_start, line.period_end),
                plain(line.quantity) or "",
                plain(line.unit_price) or "",
                money_str(line.amount, currency),
            )
            section_total += line.amount
        table.add_row(
            "[bold]subtotal[/bold]",
            "",
            "",
            "",
            "",
            f"[bold]{money_str(section_total, currency)}[/bold]",
        )
        console.print(table)
    totals = Table(show_header=False, box=None)
    totals.add_column(justify="left")
    totals.add_column(justify="right")
    for label, value in (
        ("Subtotal", invoice.subtotal),
        ("Discounts", invoice.discount_total),
        ("Tax", invoice.tax_total),
        ("Credits", invoice.credit_total),
    ):
        totals.add_row(label, money_str(value, currency))
    totals.add_row(
        "[bold]Total due[/bold]", f"[bold]{money_str(invoice.total, currency)} {currency}[/bold]"
    )
    console.print(totals)
