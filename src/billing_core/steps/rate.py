"""Rating: turn due slots into charges, then discounts, minimum true-ups and late-usage
adjustments. Usage is aggregated in one set-based pass; charges are written as a diff so a
re-run that computes the same charges writes nothing.

Three parts, as the charges go: the proposal (what each slot, pool, discount, minimum and
late usage charges: `domain.rating`, on quantities read by `rate_usage` and periods read
by `rate_periods` and `rate_late`), the reconciliation of the proposed charges with the
unfrozen ones stored, and the write of the difference (`store.diff`).
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from billing_core.domain.charge import COMPARED, ChargeRow, average_unit_price
from billing_core.domain.charge import Charge as RatedCharge
from billing_core.domain.model import Reference
from billing_core.domain.rating import (
    fixed_amount,
    part_factor,
    pool_shares,
    usage_amount,
    usage_unit_price,
)
from billing_core.report import StepReport, add_money
from billing_core.steps.rate_late import LateUsage
from billing_core.steps.rate_periods import PeriodCharges, settle_periods
from billing_core.steps.rate_usage import UsageWindows, pool_members, usage_window
from billing_core.steps.recalculate import frozen_charge_keys
from billing_core.store.diff import write_diff
from billing_core.store.models import BillingPeriod, Charge, Invoice, charges_joined
from billing_core.store.reference import ALL, Scope, load_reference
from billing_core.store.rows import records


def rate(
    session: Session, through: date, scope: Scope = ALL, now: datetime | None = None
) -> StepReport:
    """Rate every slot billed on or before `through`; returns what changed."""
    now = now or datetime.now(UTC)
    report = StepReport("rate")
    ref = load_reference(session, scope)
    frozen = frozen_charge_keys(session, scope)
    slots = _due_slots(session, through, scope, frozen)
    report.read = len(slots)

    # 1. Windows for every usage slot, and for the periods late usage touched.
    item_slots = [
        s
        for s in slots
        if s.kind == "item"
        and s.price_code in ref.prices
        and s.subscription_id in ref.subscriptions
    ]
    # Subscriptions whose period totals matter (discounts, minimums).
    totalled = {s.id for s in ref.subscriptions.values() if s.discounts or s.minimum is not None}
    members, billed_later_slots = pool_members(session, item_slots, through, totalled)
    windows = UsageWindows(ref)
    windows.add_slots(item_slots, members)
    late = LateUsage(session, ref, scope, through, now)
    late.collect(windows)
    windows.run(session, every_customer=scope.families is None)

    # 2. Item charges: fixed, usage, pooled usage.
    charges, pools = _items(ref, windows, item_slots, now)
    billed_later = _pools(ref, windows, pools, members, billed_later_slots, frozen, charges, now)

    # 3. Discounts, then minimum true-ups, per subscription and cadence period.
    minimum_slots = [
        s for s in slots if s.kind == "minimum" and s.subscription_id in ref.subscriptions
    ]
    concerned = {s.id for s in ref.subscriptions.values() if s.discounts}
    concerned |= {s.subscription_id for s in minimum_slots}
    context = PeriodCharges(
        session, scope, frozen, {**billed_later, **charges}, minimum_slots, concerned
    )
    for row in settle_periods(ref, context, minimum_slots, through, now):
        charges[row["charge_key"]] = row

    # 4. Late usage on issued periods.
    for row in late.adjustments(windows):
        charges[row["charge_key"]] = row
    _report_money(report, charges)

    written, deleted = _write(session, scope, through, charges, late.pending_keys)
    late.clear_touches()
    report.written, report.deleted = written, deleted
    report.details["charges"] = len(charges)
    report.details["windows"] = len(windows.windows)
    return report


def _report_money(report: StepReport, charges: dict[str, ChargeRow]) -> None:
    """What the unfrozen charges through the date come to, per currency (one pass over the
    charges in hand), and how much of it adjusts issued periods for late usage."""
    rated: dict[str, Decimal] = {}
    late: dict[str, Decimal] = {}
    adjustments = 0
    for c in charges.values():
        add_money(rated, c["currency"], c["amount"])
        if c["kind"] == "adjustment":
            adjustments += 1
            add_money(late, c["currency"], c["amount"])
    report.details["adjustments"] = adjustments
    report.money("rated", rated)
    report.money("adjustments", late)


def _due_slots(session: Session, through: date, scope: Scope, frozen: set[str]) -> list[Any]:
    """The slots billed on or before `through` that are on no frozen invoice."""
    bp = BillingPeriod.__table__
    return [
        s
        for s in records(
            session,
            sa.select(bp)
            .where(bp.c.billing_date <= through)
            .where(scope.where(bp.c.family_id))
            .order_by(bp.c.slot_key),
        )
        if s.slot_key not in frozen
    ]


def _items(
    ref: Reference, windows: UsageWindows, item_slots: list[Any], now: datetime
) -> tuple[dict[str, ChargeRow], dict[tuple, list[Any]]]:
    """The charge of every fixed and usage slot; and the pooled slots, by pool part."""
    charges: dict[str, ChargeRow] = {}
    pools: dict[tuple, list[Any]] = defaultdict(list)
    for s in item_slots:
        price = ref.prices[s.price_code]
        if s.pool is not None:
            pools[(s.subscription_id, s.price_code, s.period_start)].append(s)
            continue
        if not price.usage:
            factor = part_factor(s.period_start, s.period_end, s.full_start, s.full_end)
            amount = fixed_amount(price, factor)
            charges[s.slot_key] = RatedCharge.item(
                s, "fixed", price, Decimal(1), amount, amount, now
            )
            continue
        sub = ref.subscriptions[s.subscription_id]
        start, end = usage_window(ref, sub, s.period_start, s.period_end)
        quantity = windows.quantity(s.serviced_customer_id, price.metric_code, start, end)
        amount = usage_amount(price.terms, price.currency, quantity)
        unit = usage_unit_price(price, quantity, amount)
        charges[s.slot_key] = RatedCharge.item(
            s, "usage", price, quantity, unit, amount, now, window=(start, end)
        )
    return charges, pools


def _pools(
    ref: Reference,
    windows: UsageWindows,
    pools: dict[tuple, list[Any]],
    members: dict[tuple, set[str]],
    billed_later_slots: dict[tuple, list[Any]],
    frozen: set[str],
    charges: dict[str, ChargeRow],
    now: datetime,
) -> dict[str, ChargeRow]:
    """The shares of every pool part, into `charges`; returns the shares rated for their
    period but billed later (not written)."""
    billed_later: dict[str, ChargeRow] = {}
    for key, present in pools.items():
        first = present[0]
        price = ref.prices[first.price_code]
        sub = ref.subscriptions[first.subscription_id]
        start, end = usage_window(ref, sub, first.period_start, first.period_end)
        # The block is every member's usage, also of shares billed on another date.
        everyone = members.get(key, set()) | {m.serviced_customer_id for m in present}
        quantities = {
            c: windows.quantity(c, price.metric_code, start, end) for c in sorted(everyone)
        }
        block, block_amount, shares = pool_shares(price.terms, price.currency, quantities)
        unit = average_unit_price(block_amount, block)
        # A child-mode member's share that waits for the member's later billing date is
        # still one of the period's charges: rated here for the period's discounts and
        # minimum (a true-up settled now counts it), written when its date is closed.
        waiting = [m for m in billed_later_slots[key] if m.slot_key not in frozen]
        for target, slots_of in ((charges, present), (billed_later, waiting)):
            for m in slots_of:
                customer = m.serviced_customer_id
                target[m.slot_key] = RatedCharge.item(
                    m,
                    "usage",
                    price,
                    quantities[customer],
                    unit,
                    shares[customer],
                    now,
                    window=(start, end),
                )
    return billed_later


def _write(
    session: Session,
    scope: Scope,
    through: date,
    charges: dict[str, ChargeRow],
    pending_keys: set[str],
) -> tuple[int, int]:
    """Insert, update or delete unfrozen charges so the store holds exactly `charges`."""
    ch = Charge.__table__
    v = Invoice.__table__.c
    unfrozen = sa.or_(v.id.is_(None), v.status == "draft")
    existing = {
        r["charge_key"]: r
        for r in session.execute(
            sa.select(ch)
            .select_from(charges_joined())
            .where(unfrozen)
            .where(sa.or_(ch.c.billing_date <= through, ch.c.kind == "adjustment"))
            .where(scope.where(ch.c.family_id))
        ).mappings()
    }
    # A charge a later close wrote may now bill earlier (its schedule changed): it is
    # updated in place rather than the same key written twice. Over every family, what
    # the read above left out is what bills after `through`.
    beyond = (
        sa.and_(ch.c.billing_date > through, ch.c.kind != "adjustment")
        if scope.families is None
        else None
    )
    return write_diff(
        session,
        Charge,
        "charge_key",
        existing,
        charges,
        COMPARED,
        later=(sa.select(ch).select_from(charges_joined()).where(unfrozen), beyond),
        is_stale=lambda key, row: row["kind"] != "adjustment" or key in pending_keys,
        also=("rated_at",),
    )
