"""Credits: grants consumed by draft invoices after tax, narrowest scope first, through an
append-only ledger. Rebuilding or cancelling a draft rolls its consumption back; voiding an
issued invoice does not.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from billing_core.domain.lines import build_lines
from billing_core.domain.money import ZERO
from billing_core.invoices.ledger import ledger_net, rollback
from billing_core.invoices.lifecycle import lines_of
from billing_core.report import StepReport, add_money
from billing_core.store.models import (
    Charge,
    CreditGrant,
    CreditLedgerEntry,
    Customer,
    Invoice,
    InvoiceCharge,
    InvoiceLine,
)
from billing_core.store.reference import ALL, Scope, grants, load_customers, tax_rates
from billing_core.store.rows import chunks, delete_in, insert_rows


def balances(session: Session, grant_ids: list[str]) -> dict[str, Decimal]:
    """Each grant's balance: its amount plus every ledger entry."""
    g = CreditGrant.__table__.c
    lg = CreditLedgerEntry.__table__.c
    out = {}
    for part in chunks(sorted(grant_ids)):
        out.update(
            {
                r.id: r.amount
                for r in session.execute(sa.select(g.id, g.amount).where(g.id.in_(part)))
            }
        )
        for row in session.execute(sa.select(lg.grant_id, lg.amount).where(lg.grant_id.in_(part))):
            out[row.grant_id] += row.amount
    return out


def grant_order(grant: Any) -> tuple:
    """Lower priority first, then earliest expiry (none last), earliest effective, id."""
    return (
        grant.priority,
        grant.expires is None,
        grant.expires or date.max,
        grant.effective,
        grant.id,
    )


@dataclass
class _Bucket:
    """What remains to pay of one subscription's lines for one serviced customer."""

    customer: str
    subscription: str | None
    remaining: Decimal


def plan_credits(
    parts: Iterable[tuple[str, str | None, Decimal]],
    billed_customer_id: str,
    usable: list[Any],
    balance: dict[str, Decimal],
) -> list[tuple[Any, Decimal]]:
    """(grant, amount) to consume on one invoice, in the order of the rules.

    `parts` are the invoice's amounts after tax as (serviced customer, subscription,
    amount). Subscription-scoped grants offset that subscription's parts; a serviced
    customer's own grants offset that customer's parts; the billed customer's grants
    offset what remains of the whole invoice. The total never goes below zero. `balance`
    is drawn down as grants are planned.
    """
    totals: dict[tuple[str, str | None], Decimal] = defaultdict(lambda: ZERO)
    for customer, subscription, amount in parts:
        totals[(customer, subscription)] += amount
    buckets = [
        _Bucket(c, s, max(v, ZERO))
        for (c, s), v in sorted(totals.items(), key=lambda kv: (kv[0][0], kv[0][1] or ""))
    ]
    # A negative part (a refund-like adjustment) lowers what the whole invoice can take.
    invoice_left = max(sum(totals.values(), ZERO), ZERO)

    def consume(grant: Any, eligible: list[_Bucket]) -> Decimal:
        nonlocal invoice_left
        available = balance.get(grant.id, ZERO)
        want = min(available, sum((b.remaining for b in eligible), ZERO), invoice_left)
        if want <= 0:
            return ZERO
        left = want
        for bucket in eligible:
            take = min(bucket.remaining, left)
            bucket.remaining -= take
            left -= take
        balance[grant.id] = available - want
        invoice_left -= want
        return want

    plan: list[tuple[Any, Decimal]] = []
    ordered = sorted(usable, key=lambda g: (_scope_rank(g, billed_customer_id), grant_order(g)))
    for grant in ordered:
        rank = _scope_rank(grant, billed_customer_id)
        eligible = [
            b
            for b in buckets
            if (rank == 0 and b.subscription == grant.subscription_id)
            or (rank == 1 and b.customer == grant.customer_id)
            or rank == 2
        ]
        amount = consume(grant, eligible)
        if amount > 0:
            plan.append((grant, amount))
    return plan


def _scope_rank(grant: Any, billed_customer_id: str) -> int:
    """Narrowest first: 0 a subscription's grant, 1 a serviced customer's own grant,
    2 the billed customer's grant (the whole invoice)."""
    if grant.subscription_id is not None:
        return 0
    return 1 if grant.customer_id != billed_customer_id else 2


def usable_on(grant: Any, billing_date: date, currency: str) -> bool:
    """A grant can pay an invoice on a billing date from `effective` through `expires`
    (both inclusive), in the grant's own currency."""
    return (
        grant.currency == currency
        and grant.effective <= billing_date
        and (grant.expires is None or billing_date <= grant.expires)
    )


def _parts_of(lines: list[Any]) -> list[tuple[str, str | None, Decimal]] | None:
    """The parts of an invoice read off its lines, or None when some lines merge several
    charges (rollup_lines: summary, summary pools) and must be rebuilt to be told apart."""
    if any(x.charge_id is None and x.kind not in ("tax", "credit") for x in lines):
        return None
    return [
        (x.serviced_customer_id, x.subscription_id, x.amount) for x in lines if x.kind != "credit"
    ]


def _rebuilt_parts(session: Session, drafts: list[Any], scope: Scope) -> dict[int, list[tuple]]:
    """Parts of drafts with merged lines, from the charges they were built of."""
    if not drafts:
        return {}
    ch = Charge.__table__.c
    link = InvoiceCharge.__table__
    charges: dict[int, list[dict]] = defaultdict(list)
    for part in chunks([d.id for d in drafts]):
        for row in session.execute(
            sa.select(Charge.__table__, link.c.invoice_id)
            .join(link, link.c.charge_id == ch.id)
            .where(link.c.invoice_id.in_(part))
            .order_by(ch.charge_key)
        ).mappings():
            charges[row["invoice_id"]].append(dict(row))
    customers = load_customers(session, scope)
    rates = tax_rates(session)
    out = {}
    for draft in drafts:
        lines = build_lines(
            charges[draft.id],
            customers[draft.billed_customer_id],
            customers,
            rates,
            draft.currency,
            with_parts=True,
        )
        out[draft.id] = [part for line in lines for part in line["_parts"]]
    return out


def apply_credits(
    session: Session, through: date, scope: Scope = ALL, now: datetime | None = None
) -> StepReport:
    """Apply grants to the drafts billed on or before `through`, oldest first."""
    now = now or datetime.now(UTC)
    report = StepReport("apply credits")
    v = Invoice.__table__.c
    drafts = list(
        session.execute(
            sa.select(Invoice.__table__)
            .where(v.status == "draft", v.billing_date <= through)
            .where(scope.where(v.family_id))
            .order_by(v.billing_date, v.billed_customer_id)
        )
    )
    report.read = len(drafts)
    if not drafts:
        return report
    all_grants = grants(session, scope)
    if not all_grants and not _has_credit_lines(session, [d.id for d in drafts]):
        return report
    ids = [d.id for d in drafts]
    current = ledger_net(session, ids)
    balance = balances(session, [g.id for g in all_grants])
    # What these drafts hold now goes back into the pool before they are re-planned.
    for consumed in current.values():
        for grant_id, amount in consumed.items():
            if grant_id in balance:
                balance[grant_id] -= amount
    lines_by_invoice = lines_of(session, ids)
    by_holder: dict[str, list[Any]] = defaultdict(list)
    for grant in all_grants:
        by_holder[grant.customer_id].append(grant)
    parts = _invoice_parts(session, drafts, lines_by_invoice, by_holder, scope)
    applied: dict[str, Decimal] = {}
    for invoice in drafts:
        holders = {x for x, _, _ in parts[invoice.id] or ()} | {invoice.billed_customer_id}
        usable = [
            g
            for holder in sorted(holders)
            for g in by_holder.get(holder, ())
            if usable_on(g, invoice.billing_date, invoice.currency)
        ]
        plan = plan_credits(parts[invoice.id] or (), invoice.billed_customer_id, usable, balance)
        for _, amount in plan:
            add_money(applied, invoice.currency, amount)
        if _reapply(session, invoice, lines_by_invoice[invoice.id], plan, current, now):
            report.written += 1
    report.details["drafts_credited"] = report.written
    report.money("applied", applied)
    return report


def _invoice_parts(
    session: Session,
    drafts: list[Any],
    lines_by_invoice: dict[int, list[Any]],
    by_holder: dict[str, list[Any]],
    scope: Scope,
) -> dict[int, list[tuple] | None]:
    """Each draft's parts, read off its lines; merged lines are rebuilt from their
    charges, but only where a grant could apply (else None)."""
    parts = {d.id: _parts_of(lines_by_invoice[d.id]) for d in drafts}
    c = Customer.__table__.c
    g = CreditGrant.__table__.c
    by_family: dict[str, list[Any]] = defaultdict(list)
    for customer_id, family_id in session.execute(
        sa.select(c.id, c.family_id)
        .distinct()
        .join(CreditGrant.__table__, g.customer_id == c.id)
        .where(scope.where(c.family_id))
    ):
        by_family[family_id] += by_holder[customer_id]
    parts.update(
        _rebuilt_parts(
            session,
            [
                d
                for d in drafts
                if parts[d.id] is None
                and any(usable_on(g, d.billing_date, d.currency) for g in by_family[d.family_id])
            ],
            scope,
        )
    )
    return parts


def _reapply(
    session: Session,
    invoice: Any,
    lines: list[Any],
    plan: list[tuple[Any, Decimal]],
    current: dict[int, dict[str, Decimal]],
    now: datetime,
) -> bool:
    """Give a draft the credit lines and consumption of `plan` in place of those it has;
    False when it has them already."""
    wanted = {g.id: -amount for g, amount in plan}
    have = {k: a for k, a in current.get(invoice.id, {}).items() if a != 0}
    if wanted == have:
        return False
    rollback(session, invoice.id, invoice.billing_date, "credits re-applied", now)
    ln = InvoiceLine.__table__.c
    delete_in(session, ln.id, [x.id for x in lines if x.kind == "credit"])
    position = max((x.position for x in lines if x.kind != "credit"), default=0)
    rows, entries = [], []
    for grant, amount in plan:
        position += 1
        rows.append(_credit_line(invoice.id, position, grant, amount))
        entries.append(
            {
                "grant_id": grant.id,
                "amount": -amount,
                "kind": "consumption",
                "invoice_id": invoice.id,
                "billing_date": invoice.billing_date,
                "note": None,
                "created_at": now,
            }
        )
    insert_rows(session, InvoiceLine, rows)
    insert_rows(session, CreditLedgerEntry, entries)
    credit_total = -sum((a for _, a in plan), ZERO)
    v = Invoice.__table__.c
    session.execute(
        sa.update(Invoice.__table__)
        .where(v.id == invoice.id)
        .values(
            credit_total=credit_total,
            total=invoice.subtotal + invoice.discount_total + invoice.tax_total + credit_total,
        )
    )
    return True


def _credit_line(invoice_id: int, position: int, grant: Any, amount: Decimal) -> dict:
    """The line a grant's consumption shows on an invoice."""
    return {
        "invoice_id": invoice_id,
        "position": position,
        "serviced_customer_id": grant.customer_id,
        "subscription_id": grant.subscription_id,
        "price_code": None,
        "product": f"Credit {grant.id}",
        "bundle": None,
        "kind": "credit",
        "description": f"Credit {grant.id}"
        + (f" on subscription {grant.subscription_id}" if grant.subscription_id else ""),
        "period_start": None,
        "period_end": None,
        "quantity": None,
        "unit_price": None,
        "amount": -amount,
        "charge_id": None,
        "grant_id": grant.id,
        "tax_rate": None,
        "jurisdiction": None,
        "taxed_position": None,
    }


def _has_credit_lines(session: Session, invoice_ids: list[int]) -> bool:
    ln = InvoiceLine.__table__.c
    for part in chunks(invoice_ids):
        if session.execute(
            sa.select(ln.id).where(ln.invoice_id.in_(part), ln.kind == "credit").limit(1)
        ).first():
            return True
    return False
