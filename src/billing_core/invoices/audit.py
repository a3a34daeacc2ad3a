"""`billing invoices explain`: each line of one invoice with how its amount came about
(the document's breakdown) and, for usage, the events behind it: how many, the first and
the last, the window in UTC and in the customer's time, what the events give now, and
late events billed as adjustments (SPEC §7.1).

Read-only: one invoice is a few dozen lines, so this reads per line what it needs.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlmodel import Session

from billing_core.domain.explain import of_charge
from billing_core.domain.terms import locale_of
from billing_core.invoices.breakdown import POOL_KEY, pool_totals
from billing_core.invoices.explanations import Formatter, counted, line_average, steps
from billing_core.invoices.formatting import period
from billing_core.invoices.identity import of as identity_of
from billing_core.invoices.lifecycle import InvoiceError, lines_of
from billing_core.store.models import Charge, Customer, Invoice, InvoiceCharge, Metric, UsageEvent
from billing_core.store.usage_totals import Window, aggregate

ITEM_KINDS = ("fixed", "usage", "adjustment")


def explain_invoice(
    session: Session, invoice_id: int, store_name: str = "billing", position: int | None = None
) -> dict:
    """The invoice's heading and its lines (or only the line at `position`), each with its
    steps and, for usage, its events."""
    inv = session.execute(
        sa.select(Invoice.__table__).where(Invoice.__table__.c.id == invoice_id)
    ).first()
    if inv is None:
        raise InvoiceError(f"no invoice {invoice_id}")
    lines = lines_of(session, [invoice_id])[invoice_id]
    if position is not None and position not in {line.position for line in lines}:
        positions = [line.position for line in lines]
        span = f"lines {min(positions)}–{max(positions)}" if positions else "no lines"
        raise InvoiceError(f"invoice {inv.number or inv.id} has no line {position} (it has {span})")
    charges = _charges(session, invoice_id)
    pools = pool_totals(session, [invoice_id])
    identity = identity_of(session, [inv], store_name)[inv.id]
    fmt = Formatter(locale_of(identity))
    zones = _zones(session, {c.pool_owner_id or c.serviced_customer_id for c in charges})
    m = Metric.__table__.c
    rules = {
        r.code: [r.aggregation, r.field]
        for r in session.execute(sa.select(m.code, m.aggregation, m.field))
    }
    taken = {line.charge_id for line in lines if line.charge_id is not None}
    out = []
    for line in lines:
        if position is not None and line.position != position:
            continue
        members = _members(line, charges, taken)
        out.append(_line(session, inv, line, members, pools, identity, zones, rules, fmt))
    return {
        "reference": inv.number or f"draft {inv.id}",
        "billed": identity["billed"].get("name", inv.billed_customer_id),
        "billed_id": inv.billed_customer_id,
        "currency": inv.currency,
        "total": fmt.money(inv.total, inv.currency),
        "lines": out,
    }


def _charges(session: Session, invoice_id: int) -> list[Any]:
    ch, link = Charge.__table__.c, InvoiceCharge.__table__.c
    return list(
        session.execute(
            sa.select(Charge.__table__)
            .join_from(Charge.__table__, InvoiceCharge.__table__, link.charge_id == ch.id)
            .where(link.invoice_id == invoice_id)
            .order_by(ch.serviced_customer_id, ch.period_start, ch.id)
        )
    )


def _zones(session: Session, customers: set[str]) -> dict[str, str]:
    c = Customer.__table__.c
    return dict(session.execute(sa.select(c.id, c.timezone).where(c.id.in_(customers))).all())


def _members(line: Any, charges: list[Any], taken: set[int]) -> list[Any]:
    """The charges a line is made of: its own, or for a merged line (a pool's summary,
    rolled-up lines) those of its kind, price and period that no other line took."""
    if line.kind not in ITEM_KINDS:
        return []
    if line.charge_id is not None:
        return [c for c in charges if c.id == line.charge_id]
    return [
        c
        for c in charges
        if c.id not in taken
        and (c.kind, c.price_code, c.product, c.period_start, c.period_end)
        == (line.kind, line.price_code, line.product, line.period_start, line.period_end)
    ]


def _line(
    session: Session,
    inv: Any,
    line: Any,
    members: list[Any],
    pools: dict[tuple, Any],
    identity: dict,
    zones: dict[str, str],
    rules: dict[str, list],
    fmt: Formatter,
) -> dict:
    currency = inv.currency
    label = line.product or line.description or line.kind
    if line.kind == "tax" and line.tax_rate is not None:
        label = f"{line.description or line.product or 'Tax'} ({line.jurisdiction})"
    parts, averaged = [], False
    for charge in members:
        pool = pools.get(tuple(getattr(charge, k) for k in POOL_KEY)) if charge.pool else None
        found = of_charge(charge, pool)
        averaged = averaged or (found is not None and line.kind != "fixed" and found.averaged)
        names = identity.get("customers", {})
        part = {
            "customer": names.get(charge.serviced_customer_id, charge.serviced_customer_id),
            "customer_id": charge.serviced_customer_id,
            "quantity": fmt.quantity(charge.quantity),
            "amount": fmt.money(charge.amount, currency),
            "steps": steps(found, currency, fmt) if found is not None else [],
            "counted": counted(rules.get(charge.metric_code)),
            "events": None,
            "adjustments": [],
        }
        if charge.metric_code and charge.window_start is not None:
            zone = zones.get(charge.pool_owner_id or charge.serviced_customer_id) or "UTC"
            rule = rules.get(charge.metric_code)
            part["events"] = _events(session, charge, rule[0] if rule else None, zone, fmt)
            part["adjustments"] = _adjustments(session, charge, fmt)
        parts.append(part)
    return {
        "position": line.position,
        "kind": line.kind,
        "label": label,
        "customer_id": line.serviced_customer_id,
        "period": period(line.period_start, line.period_end, fmt.locale),
        "quantity": fmt.quantity(line.quantity) if line.kind in ITEM_KINDS else "",
        "unit_price": _unit_price(line, currency, averaged, fmt),
        "amount": fmt.money(line.amount, currency),
        "charges": parts,
    }


def _unit_price(line: Any, currency: str, averaged: bool, fmt: Formatter) -> str:
    if line.kind not in ITEM_KINDS or line.unit_price is None:
        return ""
    if averaged:
        return f"avg. {line_average(line, currency, fmt)}"
    return fmt.money(line.unit_price, currency, True)


def _events(
    session: Session, charge: Any, aggregation: str | None, zone: str, fmt: Formatter
) -> dict:
    """The events in a usage charge's window: how many, the first and last, how many
    arrived after the charge was rated, and what they aggregate to now."""
    e = UsageEvent.__table__.c
    where = (
        e.customer_id == charge.serviced_customer_id,
        e.metric_code == charge.metric_code,
        e.timestamp >= charge.window_start,
        e.timestamp < charge.window_end,
    )
    count, first, last, late = session.execute(
        sa.select(
            sa.func.count(),
            sa.func.min(e.timestamp),
            sa.func.max(e.timestamp),
            sa.func.count().filter(e.ingested_at > charge.rated_at),
        ).where(*where)
    ).one()
    now = None
    if aggregation is not None:
        window = Window(
            0,
            charge.serviced_customer_id,
            charge.metric_code,
            charge.window_start,
            charge.window_end,
        )
        now = aggregate(session, [window], {charge.metric_code: aggregation})[0]
    tz = ZoneInfo(zone)
    return {
        "count": count,
        "first": _instant(first),
        "last": _instant(last),
        "late": late,
        "now": fmt.quantity(now) if now is not None else None,
        "now_value": now,
        "window_utc": f"{_instant(charge.window_start)} – {_instant(charge.window_end)}",
        "window_local": f"{_instant(charge.window_start, tz)} – "
        f"{_instant(charge.window_end, tz)} ({zone})",
    }


def _adjustments(session: Session, charge: Any, fmt: Formatter) -> list[dict]:
    """Late usage billed for the charge's window later, with the invoice that billed it."""
    ch, link = Charge.__table__.c, InvoiceCharge.__table__.c
    inv = Invoice.__table__.c
    rows = session.execute(
        sa.select(ch.quantity, ch.amount, ch.billing_date, inv.number, inv.id.label("invoice"))
        .select_from(Charge.__table__)
        .outerjoin(InvoiceCharge.__table__, link.charge_id == ch.id)
        .outerjoin(Invoice.__table__, inv.id == link.invoice_id)
        .where(ch.adjusts_charge_id == charge.id)
        .order_by(ch.billing_date, ch.id)
    ).all()
    seen: dict[tuple, dict] = defaultdict(dict)
    for r in rows:
        seen[(r.billing_date, r.invoice)] = {
            "quantity": fmt.quantity(r.quantity),
            "amount": fmt.money(r.amount, charge.currency),
            "billing_date": r.billing_date.isoformat(),
            "invoice": r.number or (f"draft {r.invoice}" if r.invoice else "not yet invoiced"),
        }
    return list(seen.values())


def _instant(value: datetime | None, tz: ZoneInfo | None = None) -> str:
    if value is None:
        return ""
    if tz is not None:
        value = value.astimezone(tz)
        return value.strftime("%Y-%m-%d %H:%M:%S %z")
    return value.strftime("%Y-%m-%d %H:%M:%S UTC")
