"""The credit ledger: what each draft consumed of the grants, giving it back when a draft
is rebuilt, discarded or canceled (voiding an issued invoice does not), and the grants'
and entries' views for the CLI.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from billing_core.domain.money import ZERO
from billing_core.store.models import CreditGrant, CreditLedgerEntry, Invoice
from billing_core.store.rows import chunks, insert_rows


def ledger_net(session: Session, invoice_ids: list[int]) -> dict[int, dict[str, Decimal]]:
    """invoice -> grant -> net amount of its ledger entries (negative = consumed)."""
    out: dict[int, dict[str, Decimal]] = defaultdict(lambda: defaultdict(lambda: ZERO))
    if not invoice_ids:
        return out
    lg = CreditLedgerEntry.__table__.c
    for part in chunks(invoice_ids):
        for row in session.execute(
            sa.select(lg.invoice_id, lg.grant_id, lg.amount).where(lg.invoice_id.in_(part))
        ):
            out[row.invoice_id][row.grant_id] += row.amount
    return out


def _applied_order(invoice: Any) -> tuple:
    """Where an invoice stands in the order credits are applied: billing date, then
    billed customer, then id."""
    return (invoice.billing_date, invoice.billed_customer_id, invoice.id)


def balances_after(
    session: Session, invoices: Iterable[Any], used: dict[int, set[str]]
) -> dict[int, dict[str, Decimal]]:
    """invoice -> grant -> the grant's balance left after that invoice, for the grants
    `used[invoice]` it used.

    After an invoice means: the grant's amount plus the net ledger entries of every
    invoice at or before it in the order credits are applied (billing date, billed
    customer, id), whatever that invoice's status. A voided invoice's consumption counts
    (voiding gives nothing back); a canceled or discarded draft's nets to zero (its
    rollback; a discarded draft's entries lose their invoice and are left out). Entries of
    invoices after it do not count, so an invoice billed later never changes the balance
    an earlier one shows.
    """
    invoices = list(invoices)
    grant_ids = sorted({g for i in invoices for g in used.get(i.id, ())})
    if not grant_ids:
        return {}
    g = CreditGrant.__table__.c
    lg = CreditLedgerEntry.__table__.c
    v = Invoice.__table__.c
    granted: dict[str, Decimal] = {}
    entries: dict[str, dict[tuple, Decimal]] = defaultdict(lambda: defaultdict(lambda: ZERO))
    for part in chunks(grant_ids):
        granted.update(session.execute(sa.select(g.id, g.amount).where(g.id.in_(part))).all())
        for row in session.execute(
            sa.select(lg.grant_id, lg.amount, v.billing_date, v.billed_customer_id, v.id)
            .join(Invoice.__table__, v.id == lg.invoice_id)
            .where(lg.grant_id.in_(part))
        ):
            entries[row.grant_id][_applied_order(row)] += row.amount
    # Per grant, the invoices in order with the balance after each (a running sum).
    running: dict[str, tuple[list[tuple], list[Decimal]]] = {}
    for grant_id, by_invoice in entries.items():
        keys = sorted(by_invoice)
        after, balance = [], granted.get(grant_id, ZERO)
        for key in keys:
            balance += by_invoice[key]
            after.append(balance)
        running[grant_id] = (keys, after)
    out: dict[int, dict[str, Decimal]] = {}
    for invoice in invoices:
        out[invoice.id] = {}
        for grant_id in sorted(used.get(invoice.id, ())):
            if grant_id not in granted:
                continue  # not in the catalog any more
            keys, after = running.get(grant_id, ([], []))
            at = bisect_right(keys, _applied_order(invoice))
            out[invoice.id][grant_id] = after[at - 1] if at else granted[grant_id]
    return out


def rollback(
    session: Session, invoice_id: int, billing_date: date, note: str, now: datetime | None = None
) -> Decimal:
    """Give back what a draft consumed (a positive entry per grant); returns the total."""
    now = now or datetime.now(UTC)
    net = ledger_net(session, [invoice_id]).get(invoice_id, {})
    rows = [
        {
            "grant_id": grant_id,
            "amount": -amount,
            "kind": "rollback",
            "invoice_id": invoice_id,
            "billing_date": billing_date,
            "note": note,
            "created_at": now,
        }
        for grant_id, amount in sorted(net.items())
        if amount != 0
    ]
    insert_rows(session, CreditLedgerEntry, rows)
    return sum((-r["amount"] for r in rows), ZERO)


def credit_overview(session: Session, customer: str | None = None) -> list[dict]:
    """Every grant (or one customer's) with what it gave, net of rollbacks, and what is
    left."""
    g = CreditGrant.__table__.c
    lg = CreditLedgerEntry.__table__.c
    stmt = sa.select(CreditGrant.__table__).order_by(g.customer_id, g.id)
    if customer is not None:
        stmt = stmt.where(g.customer_id == customer)
    grants_ = list(session.execute(stmt))
    used: dict[str, Decimal] = defaultdict(lambda: ZERO)
    returned: dict[str, Decimal] = defaultdict(lambda: ZERO)
    entries: dict[str, int] = defaultdict(int)
    for part in chunks([x.id for x in grants_]):
        for row in session.execute(
            sa.select(lg.grant_id, lg.kind, lg.amount).where(lg.grant_id.in_(part))
        ):
            entries[row.grant_id] += 1
            if row.kind == "consumption":
                used[row.grant_id] += -row.amount
            else:
                returned[row.grant_id] += row.amount
    out = []
    for grant in grants_:
        consumed = used[grant.id] - returned[grant.id]
        out.append(
            {
                "id": grant.id,
                "customer": grant.customer_id,
                "subscription": grant.subscription_id,
                "currency": grant.currency,
                "amount": grant.amount,
                "consumed": consumed,
                "rolled_back": returned[grant.id],
                "balance": grant.amount - consumed,
                "effective": grant.effective,
                "expires": grant.expires,
                "priority": grant.priority,
                "entries": entries[grant.id],
            }
        )
    return out


def ledger(session: Session, customer: str | None = None) -> list[dict]:
    """Every ledger entry (or one customer's grants'), oldest first, with the invoice it
    belongs to (its number once issued) and the grant's balance after it."""
    g = CreditGrant.__table__.c
    lg = CreditLedgerEntry.__table__.c
    v = Invoice.__table__.c
    stmt = (
        sa.select(
            lg.id,
            lg.grant_id,
            lg.kind,
            lg.amount,
            lg.billing_date,
            lg.invoice_id,
            lg.note,
            g.customer_id,
            g.currency,
            g.amount.label("granted"),
            v.number,
            v.status,
        )
        .join(CreditGrant.__table__, g.id == lg.grant_id)
        .outerjoin(Invoice.__table__, v.id == lg.invoice_id)
        .order_by(lg.grant_id, lg.id)
    )
    if customer is not None:
        stmt = stmt.where(g.customer_id == customer)
    out = []
    balance: dict[str, Decimal] = {}
    for row in session.execute(stmt):
        balance[row.grant_id] = balance.get(row.grant_id, row.granted) + row.amount
        out.append(
            {
                "grant": row.grant_id,
                "customer": row.customer_id,
                "currency": row.currency,
                "kind": row.kind,
                "amount": row.amount,
                "balance": balance[row.grant_id],
                "billing_date": row.billing_date,
                "invoice_id": row.invoice_id,
                "invoice_number": row.number,
                "invoice_status": row.status,
                "note": row.note,
            }
        )
    return out
