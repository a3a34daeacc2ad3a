"""Issued revenue per customer and currency over a range of billing dates (SPEC §7.1,
`billing reports revenue`).

Revenue is what issued invoices charged, net of discounts and before tax; credits are a
way of paying, not a price cut, so they stand apart and are not taken off revenue.
Which invoices count, and whose revenue a line is, are decided here (docs/decisions.md):

- statuses `issued` and `paid`: a draft is not revenue yet, a canceled draft never was,
  and a void invoice was taken back;
- an invoice counts in the range when its billing date is in it, both ends included;
- `serviced` (the default, as Alguna reports): each line is the revenue of the customer
  whose section it sits in, so a roll-up's children each show their own; `billed`: all of
  an invoice is its billed customer's.

Each answer is one grouped statement over the invoice lines (no query per invoice); the
sums are exact decimals on both stores (store.types.decimal_sum).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal

import sqlalchemy as sa
from sqlmodel import Session

from billing_core.domain.money import ZERO
from billing_core.store.models import Customer, Invoice, InvoiceLine
from billing_core.store.types import decimal_sum

BASES = ("serviced", "billed")
STATUSES = ("issued", "paid")
# The kinds an invoice's subtotal sums (SPEC §8); discounts, tax and credits are apart.
SUBTOTAL_KINDS = ("fixed", "usage", "minimum", "adjustment")


@dataclass(frozen=True)
class RevenueRow:
    """One customer's issued revenue in one currency (or a currency's total, customer
    None). Discounts and credits are negative, as on the invoices:
    revenue = subtotal + discounts, total = revenue + tax + credits."""

    customer: str | None
    customer_name: str | None
    currency: str
    subtotal: Decimal
    discounts: Decimal
    revenue: Decimal
    tax: Decimal
    credits: Decimal
    total: Decimal
    invoices: int


@dataclass(frozen=True)
class RevenueReport:
    start: date
    end: date
    by: str
    rows: list[RevenueRow]
    totals: list[RevenueRow]  # one per currency


def revenue(session: Session, start: date, end: date, by: str = "serviced") -> RevenueReport:
    """Issued revenue per customer and currency for billing dates start..end (inclusive),
    by serviced or billed customer, with a total per currency."""
    if by not in BASES:
        raise ValueError(f"no revenue basis {by!r} (one of {', '.join(BASES)})")
    ln = InvoiceLine.__table__.c
    v = Invoice.__table__.c
    key = ln.serviced_customer_id if by == "serviced" else v.billed_customer_id
    per_customer = _grouped(key, start, end).subquery()
    c = Customer.__table__.c
    rows = session.execute(
        sa.select(per_customer, c.name)
        .select_from(per_customer.outerjoin(Customer.__table__, c.id == per_customer.c.key))
        .order_by(per_customer.c.key, per_customer.c.currency)
    )
    totals = session.execute(_grouped(None, start, end).order_by(v.currency))
    return RevenueReport(
        start,
        end,
        by,
        [_row(r, r.key, r.name) for r in rows],
        [_row(r, None, None) for r in totals],
    )


def _grouped(key: sa.ColumnElement | None, start: date, end: date) -> sa.Select:
    """The sums of the issued lines in the range, grouped by currency (and `key`)."""
    ln = InvoiceLine.__table__.c
    v = Invoice.__table__.c

    def part(*kinds: str) -> sa.ColumnElement:
        return decimal_sum(sa.case((ln.kind.in_(kinds), ln.amount)))

    keys = [] if key is None else [key.label("key")]
    return (
        sa.select(
            *keys,
            v.currency,
            part(*SUBTOTAL_KINDS).label("subtotal"),
            part("discount").label("discounts"),
            part("tax").label("tax"),
            part("credit").label("credits"),
            sa.func.count(sa.distinct(v.id)).label("invoices"),
        )
        .select_from(InvoiceLine.__table__.join(Invoice.__table__, ln.invoice_id == v.id))
        .where(v.status.in_(STATUSES), v.billing_date >= start, v.billing_date <= end)
        .group_by(*([] if key is None else [key]), v.currency)
    )


def _row(r: sa.Row, customer: str | None, name: str | None) -> RevenueRow:
    subtotal, discounts = r.subtotal or ZERO, r.discounts or ZERO
    tax, credits = r.tax or ZERO, r.credits or ZERO
    return RevenueRow(
        customer=customer,
        customer_name=name,
        currency=r.currency,
        subtotal=subtotal,
        discounts=discounts,
        revenue=subtotal + discounts,
        tax=tax,
        credits=credits,
        total=subtotal + discounts + tax + credits,
        invoices=r.invoices,
    )
