"""Rating: turn due slots into charges, then discounts, minimum true-ups and late-usage
adjustments. Usage is aggregated in one set-based pass; charges are written as a diff so a
re-run that computes the same charges writes nothing.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from billing_core.domain import pricing
from billing_core.domain.model import PriceInfo, Reference, SubscriptionInfo
from billing_core.domain.money import ZERO, round_money, split_largest_remainder
from billing_core.domain.schedules import Calendar, prorate, window_utc
from billing_core.report import StepReport
from billing_core.steps.recalculate import frozen_charge_keys
from billing_core.store.models import BillingPeriod, Charge, Invoice, UsageTouch, charges_joined
from billing_core.store.reference import ALL, Scope, load_reference
from billing_core.store.rows import delete_in, insert_rows, records, select_in, select_keys
from billing_core.store.usage_totals import Window, aggregate

ITEM_KINDS = ("fixed", "usage")
UNIT_PRICE_PLACES = Decimal("0.000001")
COMPARED = (
    "kind",
    "subscription_id",
    "price_code",
    "product",
    "bundle",
    "metric_code",
    "serviced_customer_id",
    "billed_customer_id",
    "family_id",
    "pool",
    "pool_owner_id",
    "period_start",
    "period_end",
    "full_start",
    "full_end",
    "due_date",
    "billing_date",
    "currency",
    "quantity",
    "unit_price",
    "amount",
    "description",
    "pricing",
    "adjusts_charge_id",
    "window_start",
    "window_end",
    "billing_period_id",
)


def average_unit_price(amount: Decimal, quantity: Decimal) -> Decimal | None:
    """amount / quantity to six decimal places (the unit price a tiered line shows)."""
    if quantity == 0:
        return None
    return (amount / quantity).quantize(UNIT_PRICE_PLACES, rounding=ROUND_HALF_UP).normalize()


@dataclass
class _Windows:
    """Registry of usage windows to aggregate in one pass."""

    ref: Reference

    def __post_init__(self) -> None:
        self.keys: dict[tuple, int] = {}
        self.windows: list[Window] = []
        self.quantities: dict[int, Decimal] = {}

    def add(self, customer: str, metric: str, start: datetime, end: datetime) -> int:
        key = (customer, metric, start, end)
        if key not in self.keys:
            self.keys[key] = len(self.keys) + 1
            self.windows.append(Window(self.keys[key], customer, metric, start, end))
        return self.keys[key]

    def run(self, session: Session, every_customer: bool = False) -> None:
        self.quantities = aggregate(session, self.windows, self.ref.metrics, every_customer)

    def quantity(self, customer: str, metric: str, start: datetime, end: datetime) -> Decimal:
        return self.quantities[self.keys[(customer, metric, start, end)]]


def _window(ref: Reference, sub: SubscriptionInfo, start: date, end: date):
    """Usage window of a period: local midnights in the subscription customer's zone."""
    return window_utc(start, end, ref.customers[sub.customer_id].timezone)


def rate(
    session: Session, through: date, scope: Scope = ALL, now: datetime | None = None
) -> StepReport:
    """Rate every slot billed on or before `through`; returns what changed."""
    now = now or datetime.now(UTC)
    report = StepReport("rate")
    ref = load_reference(session, scope)
    frozen = frozen_charge_keys(session, scope)
    bp = BillingPeriod.__table__
    slots = [
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
    report.read = len(slots)
    windows = _Windows(ref)

    # 1. Windows for every usage slot, and for the periods late usage touched.
    item_slots = [
        s
        for s in slots
        if s.kind == "item"
        and s.price_code in ref.prices
        and s.subscription_id in ref.subscriptions
    ]
    for s in item_slots:
        price = ref.prices[s.price_code]
        if price.usage:
            sub = ref.subscriptions[s.subscription_id]
            windows.add(
                s.serviced_customer_id,
                price.metric_code,
                *_window(ref, sub, s.period_start, s.period_end),
            )
    # Subscriptions whose period totals matter (discounts, minimums).
    totalled = {s.id for s in ref.subscriptions.values() if s.discounts or s.minimum is not None}
    members, billed_later_slots = _pool_members(session, item_slots, through, totalled)
    part_of = {(s.subscription_id, s.price_code, s.period_start): s for s in item_slots}
    for key, customers in members.items():
        s = part_of[key]
        window = _window(ref, ref.subscriptions[s.subscription_id], s.period_start, s.period_end)
        for customer_id in customers:
            windows.add(customer_id, ref.prices[s.price_code].metric_code, *window)
    late = _LateUsage(session, ref, scope, through, now)
    late.collect(windows)
    windows.run(session, every_customer=scope.families is None)

    # 2. Item charges: fixed, usage, pooled usage.
    charges: dict[str, dict] = {}
    billed_later: dict[str, dict] = {}  # pooled shares rated for their period, not written
    pools: dict[tuple, list[Any]] = defaultdict(list)
    for s in item_slots:
        price = ref.prices[s.price_code]
        sub = ref.subscriptions[s.subscription_id]
        if s.pool is not None:
            pools[(s.subscription_id, s.price_code, s.period_start)].append(s)
            continue
        if not price.usage:
            amount = round_money(
                prorate(
                    pricing.amount(price.terms, Decimal(1)),
                    _factor(s.period_start, s.period_end, s.full_start, s.full_end),
                ),
                price.currency,
            )
            charges[s.slot_key] = _charge(s, "fixed", price, Decimal(1), amount, amount, now)
            continue
        start, end = _window(ref, sub, s.period_start, s.period_end)
        quantity = windows.quantity(s.serviced_customer_id, price.metric_code, start, end)
        exact = pricing.amount(price.terms, quantity)
        amount = round_money(exact, price.currency)
        unit = (
            Decimal(price.terms["unit_price"])
            if price.model == "per_unit"
            else average_unit_price(amount, quantity)
        )
        charges[s.slot_key] = _charge(
            s, "usage", price, quantity, unit, amount, now, window=(start, end)
        )
    for key, present in pools.items():
        first = present[0]
        price = ref.prices[first.price_code]
        sub = ref.subscriptions[first.subscription_id]
        start, end = _window(ref, sub, first.period_start, first.period_end)
        # The block is every member's usage, also of shares billed on another date.
        everyone = members.get(key, set()) | {m.serviced_customer_id for m in present}
        quantities = {
            c: windows.quantity(c, price.metric_code, start, end) for c in sorted(everyone)
        }
        block = sum(quantities.values(), ZERO)
        block_amount = round_money(pricing.amount(price.terms, block), price.currency)
        shares = split_largest_remainder(block_amount, quantities, price.currency)
        unit = average_unit_price(block_amount, block)
        # A child-mode member's share that waits for the member's later billing date is
        # still one of the period's charges: rated here for the period's discounts and
        # minimum (a true-up settled now counts it), written when its date is closed.
        waiting = [m for m in billed_later_slots[key] if m.slot_key not in frozen]
        for target, slots_of in ((charges, present), (billed_later, waiting)):
            for m in slots_of:
                target[m.slot_key] = _charge(
                    m,
                    "usage",
                    price,
                    quantities[m.serviced_customer_id],
                    unit,
                    shares[m.serviced_customer_id],
                    now,
                    window=(start, end),
                )

    # 3. Discounts, then minimum true-ups, per subscription and cadence period.
    minimum_slots = [
        s for s in slots if s.kind == "minimum" and s.subscription_id in ref.subscriptions
    ]
    concerned = {s.id for s in ref.subscriptions.values() if s.discounts}
    concerned |= {s.subscription_id for s in minimum_slots}
    context = _PeriodCharges(
        session, scope, frozen, {**billed_later, **charges}, minimum_slots, concerned
    )
    for row in _discounts(ref, context, through, now):
        charges[row["charge_key"]] = row
    for s in minimum_slots:
        row = _minimum(ref, context, s, now)
        charges[row["charge_key"]] = row

    # 4. Late usage on issued periods.
    for row in late.adjustments(windows):
        charges[row["charge_key"]] = row
    report.details["adjustments"] = sum(1 for c in charges.values() if c["kind"] == "adjustment")

    written, deleted = _write(session, scope, through, charges, late.pending_keys)
    late.clear_touches()
    report.written, report.deleted = written, deleted
    report.details["charges"] = len(charges)
    report.details["windows"] = len(windows.windows)
    return report


def _pool_members(
    session: Session, item_slots: list[Any], through: date, totalled: set[str]
) -> tuple[dict[tuple, set[str]], dict[tuple, list[Any]]]:
    """(subscription, price, part start) -> every serviced customer of that pool part,
    whatever the billing date or invoice of its share (a block is rated whole); and, for
    the `totalled` subscriptions, the slots of the part's child-mode shares that bill
    after `through`."""
    pooled = {(s.subscription_id, s.price_code, s.period_start) for s in item_slots if s.pool}
    out: dict[tuple, set[str]] = defaultdict(set)
    later: dict[tuple, list[Any]] = defaultdict(list)
    if not pooled:
        return out, later
    bp = BillingPeriod.__table__
    c = bp.c
    stmt = sa.select(c.subscription_id, c.price_code, c.period_start, c.serviced_customer_id)
    stmt = stmt.where(c.pool.is_not(None))
    for r in select_in(session, stmt, c.subscription_id, sorted({k[0] for k in pooled})):
        key = (r.subscription_id, r.price_code, r.period_start)
        if key in pooled:
            out[key].add(r.serviced_customer_id)
    stmt = sa.select(bp).where(c.pool == "child", c.billing_date > through)
    for r in select_in(session, stmt, c.subscription_id, sorted({k[0] for k in pooled} & totalled)):
        key = (r.subscription_id, r.price_code, r.period_start)
        if key in pooled:
            later[key].append(r)
    return out, later


def _factor(start: date, end: date, full_start: date, full_end: date):
    from fractions import Fraction

    return Fraction((end - start).days, (full_end - full_start).days)


def _charge(
    slot: Any,
    kind: str,
    price: PriceInfo,
    quantity: Decimal,
    unit_price: Decimal | None,
    amount: Decimal,
    now: datetime,
    window: tuple[datetime, datetime] | None = None,
) -> dict:
    return {
        "charge_key": slot.slot_key,
        "billing_period_id": slot.id,
        "kind": kind,
        "subscription_id": slot.subscription_id,
        "price_code": price.code,
        "product": price.product,
        "bundle": price.bundle,
        "metric_code": price.metric_code,
        "serviced_customer_id": slot.serviced_customer_id,
        "billed_customer_id": slot.billed_customer_id,
        "family_id": slot.family_id,
        "pool": slot.pool,
        "pool_owner_id": slot.pool_owner_id,
        "period_start": slot.period_start,
        "period_end": slot.period_end,
        "full_start": slot.full_start,
        "full_end": slot.full_end,
        "due_date": slot.due_date,
        "billing_date": slot.billing_date,
        "currency": price.currency,
        "quantity": quantity,
        "unit_price": unit_price,
        "amount": amount,
        "description": None,
        "pricing": price.terms,
        "adjusts_charge_id": None,
        "window_start": window[0] if window else None,
        "window_end": window[1] if window else None,
        "rated_at": now,
    }


class _PeriodCharges:
    """All charges of a subscription's cadence period: frozen ones from the store and the
    ones rated now (discounts and minimums look at both)."""

    def __init__(
        self,
        session: Session,
        scope: Scope,
        frozen: set[str],
        fresh: dict[str, dict],
        minimum_slots: list[Any],
        concerned: set[str],
    ):
        """`concerned`: the subscriptions with discounts or minimums (no other is asked)."""
        self.by_period: dict[tuple[str, date], list[dict]] = defaultdict(list)
        self.frozen_keys = frozen
        needed = set()
        for row in fresh.values():
            if row["subscription_id"] in concerned:
                key = (row["subscription_id"], row["full_start"])
                self.by_period[key].append(row)
                needed.add(key)
        needed |= {(s.subscription_id, s.full_start) for s in minimum_slots}
        if not needed:
            return
        ch = Charge.__table__.c
        v = Invoice.__table__.c
        stmt = (
            sa.select(Charge.__table__)
            .select_from(charges_joined(outer=False))
            .where(
                v.status != "draft",
                ch.full_start >= min(p for _, p in needed),
                ch.kind.in_(("fixed", "usage", "discount")),
            )
            .where(scope.where(ch.family_id))
        )
        for row in session.execute(stmt).mappings():
            key = (row["subscription_id"], row["full_start"])
            if key in needed:
                self.by_period[key].append(dict(row))

    def periods(self, subscription_id: str) -> list[date]:
        return sorted(p for s, p in self.by_period if s == subscription_id)

    def of(self, subscription_id: str, full_start: date) -> list[dict]:
        return self.by_period.get((subscription_id, full_start), [])


def _discounts(ref: Reference, context: _PeriodCharges, through: date, now: datetime) -> list[dict]:
    """One negative line per discount, cadence period and invoice it reduces."""
    out: list[dict] = []
    for sub in ref.subscriptions.values():
        if not sub.discounts:
            continue
        for full_start in context.periods(sub.id):
            rows = context.of(sub.id, full_start)
            items = [r for r in rows if r["kind"] in ITEM_KINDS]
            if not items:
                continue
            groups: dict[tuple[date, str], list[dict]] = defaultdict(list)
            for r in items:
                groups[(r["billing_date"], r["billed_customer_id"])].append(r)
            existing = {r["charge_key"]: r for r in rows if r["kind"] == "discount"}
            for index, discount in enumerate(sub.discounts):
                remaining = Decimal(discount["amount"]) if discount["type"] == "fixed" else None
                for (billing_date, billed), group in sorted(groups.items()):
                    key = (
                        f"{sub.id}|discount|{index}|{full_start.isoformat()}|"
                        f"{billing_date.isoformat()}|{billed}"
                    )
                    applicable = [
                        r for r in group if discount.get("price") in (None, r["price_code"])
                    ]
                    base = sum((r["amount"] for r in applicable), ZERO)
                    if key in context.frozen_keys:
                        if remaining is not None and key in existing:
                            remaining += existing[key]["amount"]  # negative
                        continue
                    if not applicable:
                        continue
                    if all(r["charge_key"] in context.frozen_keys for r in applicable):
                        continue  # already issued without this discount: never reopened
                    currency = applicable[0]["currency"]
                    if discount["type"] == "percentage":
                        give = round_money(base * Decimal(discount["value"]) / 100, currency)
                        label = f"{Decimal(discount['value']).normalize():f}% discount"
                    else:
                        give = min(max(remaining or ZERO, ZERO), max(base, ZERO))
                        remaining = (remaining or ZERO) - give
                        label = f"Discount {discount['amount']}"
                    give = min(give, max(base, ZERO))
                    if give <= 0:
                        continue
                    if discount.get("price"):
                        label += f" on {applicable[0]['product']}"
                    serviced = (
                        sub.customer_id
                        if group[0]["pool"] != "child"
                        else applicable[0]["serviced_customer_id"]
                    )
                    first = min(applicable, key=lambda r: r["period_start"])
                    out.append(
                        {
                            **first,
                            "charge_key": key,
                            "billing_period_id": None,
                            "kind": "discount",
                            "price_code": discount.get("price"),
                            "product": label,
                            "bundle": None,
                            "metric_code": None,
                            "pool": None,
                            "pool_owner_id": None,
                            "serviced_customer_id": serviced,
                            "period_start": min(r["period_start"] for r in applicable),
                            "period_end": max(r["period_end"] for r in applicable),
                            "due_date": max(r["due_date"] for r in applicable),
                            "quantity": Decimal(1),
                            "unit_price": -give,
                            "amount": -give,
                            "description": label,
                            "pricing": {"discount": discount},
                            "adjusts_charge_id": None,
                            "window_start": None,
                            "window_end": None,
                            "rated_at": now,
                        }
                    )
                    context.by_period[(sub.id, full_start)].append(out[-1])
                    if billing_date > through:
                        # Reduces a share billed later (see `rate`): counted for the
                        # period's minimum now, written when that date is closed.
                        out.pop()
    return out


def _minimum(ref: Reference, context: _PeriodCharges, slot: Any, now: datetime) -> dict:
    """A true-up when the period's discounted charges fall short of the (prorated) minimum.

    Without a shortfall the charge is zero: it still rides on the period's invoice, so the
    minimum is settled with it and never re-rated once that invoice is issued.
    """
    sub = ref.subscriptions[slot.subscription_id]
    currency = ref.customers[sub.customer_id].currency
    required = round_money(
        prorate(
            sub.minimum,
            _factor(slot.period_start, slot.period_end, slot.full_start, slot.full_end),
        ),
        currency,
    )
    charged = sum(
        (
            r["amount"]
            for r in context.of(sub.id, slot.full_start)
            if r["kind"] in ("fixed", "usage", "discount")
        ),
        ZERO,
    )
    short = max(required - charged, ZERO)
    return {
        "charge_key": slot.slot_key,
        "billing_period_id": slot.id,
        "kind": "minimum",
        "subscription_id": sub.id,
        "price_code": None,
        "product": "Minimum commitment",
        "bundle": None,
        "metric_code": None,
        "serviced_customer_id": slot.serviced_customer_id,
        "billed_customer_id": slot.billed_customer_id,
        "family_id": slot.family_id,
        "pool": None,
        "pool_owner_id": None,
        "period_start": slot.period_start,
        "period_end": slot.period_end,
        "full_start": slot.full_start,
        "full_end": slot.full_end,
        "due_date": slot.due_date,
        "billing_date": slot.billing_date,
        "currency": currency,
        "quantity": Decimal(1) if short else ZERO,
        "unit_price": short if short else None,
        "amount": short,
        "description": f"Minimum {required} for the period; charges came to {charged}",
        "pricing": {"minimum": f"{sub.minimum:f}"},
        "adjusts_charge_id": None,
        "window_start": None,
        "window_end": None,
        "rated_at": now,
    }


class _LateUsage:
    """Usage that arrived for periods already on issued invoices: adjustment lines on the
    billed customer's next open billing date, for the difference re-rating gives."""

    def __init__(
        self, session: Session, ref: Reference, scope: Scope, through: date, now: datetime
    ):
        self.session, self.ref, self.scope, self.through, self.now = (
            session,
            ref,
            scope,
            through,
            now,
        )
        self.touch_ids: list[int] = []
        self.originals: list[dict] = []  # frozen usage charges to re-rate
        self.frozen_adjustments: dict[int, list[dict]] = defaultdict(list)
        self.pending_keys: set[str] = set()
        self.keep_touches = False

    def collect(self, windows: _Windows) -> None:
        ch = Charge.__table__.c
        v = Invoice.__table__.c
        t = UsageTouch.__table__.c
        frozen_usage = (
            sa.select(Charge.__table__)
            .select_from(charges_joined(outer=False))
            .where(v.status != "draft", ch.kind == "usage")
            .where(self.scope.where(ch.family_id))
        )
        connection = self.session.connection()
        # A touch matters while it overlaps an issued window (its usage is late) or a draft
        # rated earlier and not re-rated now (a close that went further than this one): the
        # draft lacks that usage and could be issued as it is. Every issued window ends by
        # `horizon`; every such draft's window starts at or after `stale`. Touches between
        # the two are cleared at once, in one statement, before the usage is aggregated (so
        # every event behind them is in this rating's aggregates).
        horizon = connection.execute(
            frozen_usage.with_only_columns(sa.func.max(ch.window_end))
        ).scalar()
        stale = connection.execute(
            sa.select(sa.func.min(ch.window_start))
            .select_from(charges_joined())
            .where(sa.or_(v.id.is_(None), v.status == "draft"))
            .where(ch.kind == "usage", ch.billing_date > self.through)
            .where(self.scope.where(ch.family_id))
        ).scalar()
        in_scope = self.scope.where_customer(t.customer_id)
        clear = sa.delete(UsageTouch.__table__).where(in_scope)
        if horizon is not None:
            clear = clear.where(t.earliest >= horizon)
        if stale is not None:
            clear = clear.where(t.latest < stale)
        connection.execute(clear)
        touches = []
        if horizon is not None or stale is not None:
            touches = list(
                connection.execute(
                    sa.select(t.id, t.customer_id, t.metric_code, t.earliest, t.latest).where(
                        in_scope
                    )
                )
            )
        # The rest are cleared by id once rated, except those a stale draft still needs;
        # one that arrives meanwhile waits for the next close.
        self.touch_ids = [x.id for x in touches if stale is None or x.latest < stale]
        pending = list(
            self.session.execute(
                sa.select(Charge.__table__)
                .select_from(charges_joined())
                .where(ch.kind == "adjustment", sa.or_(v.id.is_(None), v.status == "draft"))
                .where(self.scope.where(ch.family_id))
            ).mappings()
        )
        self.pending_keys = {p["charge_key"] for p in pending}
        wanted_ids = {p["adjusts_charge_id"] for p in pending}
        touched: set[tuple[str, str]] = set()
        spans: dict[tuple[str, str], list[tuple[datetime, datetime]]] = defaultdict(list)
        for x in touches:
            touched.add((x.customer_id, x.metric_code))
            spans[(x.customer_id, x.metric_code)].append((x.earliest, x.latest))
        candidates: list[dict] = []
        if touched or wanted_ids:
            customers = sorted({cu for cu, _ in touched})
            conditions = []
            if customers:
                earliest = min(lo for pairs in spans.values() for lo, _ in pairs)
                conditions.append(
                    sa.and_(ch.serviced_customer_id.in_(customers), ch.window_end > earliest)
                )
            if wanted_ids:
                conditions.append(ch.id.in_(sorted(wanted_ids)))
            for row in self.session.execute(frozen_usage.where(sa.or_(*conditions))).mappings():
                hit = row["id"] in wanted_ids or any(
                    lo < row["window_end"] and hi >= row["window_start"]
                    for lo, hi in spans.get((row["serviced_customer_id"], row["metric_code"]), ())
                )
                if hit:
                    candidates.append(dict(row))
        # A pool is re-rated whole: bring in every member of a touched pool period.
        pool_keys = {
            (r["subscription_id"], r["price_code"], r["period_start"])
            for r in candidates
            if r["pool"]
        }
        if pool_keys:
            subs = sorted({k[0] for k in pool_keys})
            for row in self.session.execute(
                frozen_usage.where(ch.subscription_id.in_(subs), ch.pool.is_not(None))
            ).mappings():
                key = (row["subscription_id"], row["price_code"], row["period_start"])
                if key in pool_keys and all(row["id"] != r["id"] for r in candidates):
                    candidates.append(dict(row))
        self.originals = sorted(candidates, key=lambda r: r["charge_key"])
        if self.originals:
            ids = [r["id"] for r in self.originals]
            for row in self.session.execute(
                sa.select(Charge.__table__)
                .select_from(charges_joined(outer=False))
                .where(v.status != "draft", ch.kind == "adjustment", ch.adjusts_charge_id.in_(ids))
            ).mappings():
                self.frozen_adjustments[row["adjusts_charge_id"]].append(dict(row))
        for r in self.originals:
            windows.add(
                r["serviced_customer_id"], r["metric_code"], r["window_start"], r["window_end"]
            )

    def _billed(self, original: dict) -> tuple[Decimal, Decimal]:
        """Quantity and amount billed so far for an original charge (with its adjustments)."""
        extra = self.frozen_adjustments.get(original["id"], [])
        return (
            original["quantity"] + sum((a["quantity"] for a in extra), ZERO),
            original["amount"] + sum((a["amount"] for a in extra), ZERO),
        )

    def adjustments(self, windows: _Windows) -> list[dict]:
        out: list[dict] = []
        pools: dict[tuple, list[dict]] = defaultdict(list)
        singles: list[dict] = []
        for r in self.originals:
            if r["pool"]:
                pools[(r["subscription_id"], r["price_code"], r["period_start"])].append(r)
            else:
                singles.append(r)
        targets: list[tuple[dict, Decimal, Decimal]] = []  # original, new qty, new amount
        for r in singles:
            quantity = windows.quantity(
                r["serviced_customer_id"], r["metric_code"], r["window_start"], r["window_end"]
            )
            amount = round_money(pricing.amount(r["pricing"], quantity), r["currency"])
            targets.append((r, quantity, amount))
        for members in pools.values():
            first = members[0]
            quantities = {
                m["serviced_customer_id"]: windows.quantity(
                    m["serviced_customer_id"], m["metric_code"], m["window_start"], m["window_end"]
                )
                for m in members
            }
            block = round_money(
                pricing.amount(first["pricing"], sum(quantities.values(), ZERO)), first["currency"]
            )
            shares = split_largest_remainder(block, quantities, first["currency"])
            for m in members:
                targets.append(
                    (m, quantities[m["serviced_customer_id"]], shares[m["serviced_customer_id"]])
                )
        placements = self._placements({r["billed_customer_id"] for r, _, _ in targets})
        for original, quantity, amount in targets:
            billed_quantity, billed_amount = self._billed(original)
            if quantity == billed_quantity and amount == billed_amount:
                continue
            billing_date = placements[original["billed_customer_id"]].place(
                original["billing_date"]
            )
            if billing_date is None:
                self.keep_touches = True
                continue
            number = len(self.frozen_adjustments.get(original["id"], [])) + 1
            delta_q, delta_a = quantity - billed_quantity, amount - billed_amount
            period = f"{original['period_start']} – {original['period_end']}"
            out.append(
                {
                    **{k: v for k, v in original.items() if k != "id"},
                    "charge_key": f"{original['charge_key']}|adjustment|{number}",
                    "billing_period_id": None,
                    "kind": "adjustment",
                    "billing_date": billing_date,
                    "due_date": original["billing_date"],
                    "quantity": delta_q,
                    "unit_price": average_unit_price(delta_a, delta_q) if delta_q else None,
                    "amount": delta_a,
                    "description": f"Late usage for {period}",
                    "adjusts_charge_id": original["id"],
                    "rated_at": self.now,
                }
            )
        return out

    def _placements(self, billed: set[str]) -> dict[str, Calendar]:
        """Calendars for adjustments: the customer's billing day, else the billing dates
        its slots land on; dates with a frozen invoice are skipped."""
        out: dict[str, Calendar] = {}
        if not billed:
            return out
        bp = BillingPeriod.__table__.c
        v = Invoice.__table__.c
        dates: dict[str, set[date]] = defaultdict(set)
        for customer, day in self.session.execute(
            sa.select(bp.billed_customer_id, bp.billing_date)
            .distinct()
            .where(bp.billed_customer_id.in_(sorted(billed)), bp.billing_date.is_not(None))
        ):
            dates[customer].add(day)
        taken: dict[str, set[date]] = defaultdict(set)
        for customer, day in self.session.execute(
            sa.select(v.billed_customer_id, v.billing_date).where(
                v.billed_customer_id.in_(sorted(billed)), v.status != "draft"
            )
        ):
            taken[customer].add(day)
        for customer in billed:
            info = self.ref.customers.get(customer)
            out[customer] = Calendar(
                info.billing_day if info else None, (), dates[customer], taken[customer]
            )
        return out

    def clear_touches(self) -> None:
        if not self.keep_touches:
            delete_in(self.session, UsageTouch.__table__.c.id, self.touch_ids)


def _write(
    session: Session, scope: Scope, through: date, charges: dict[str, dict], pending_keys: set[str]
) -> tuple[int, int]:
    """Insert, update or delete unfrozen charges so the store holds exactly `charges`."""
    ch = Charge.__table__
    v = Invoice.__table__.c
    existing = {
        r["charge_key"]: r
        for r in session.execute(
            sa.select(ch)
            .select_from(charges_joined())
            .where(sa.or_(v.id.is_(None), v.status == "draft"))
            .where(sa.or_(ch.c.billing_date <= through, ch.c.kind == "adjustment"))
            .where(scope.where(ch.c.family_id))
        ).mappings()
    }
    # A charge a later close wrote may now bill earlier (its schedule changed): update it
    # in place rather than write the same key twice.
    later = [key for key in charges if key not in existing]
    unfrozen = sa.or_(v.id.is_(None), v.status == "draft")
    stmt = sa.select(ch).select_from(charges_joined()).where(unfrozen)
    # Over every family, what the read above left out is what bills after `through`.
    beyond = (
        sa.and_(ch.c.billing_date > through, ch.c.kind != "adjustment")
        if scope.families is None
        else None
    )
    for r in select_keys(session, stmt, ch.c.charge_key, later, beyond):
        existing[r._mapping["charge_key"]] = r._mapping
    inserts, updates = [], []
    for key, row in charges.items():
        old = existing.get(key)
        if old is None:
            inserts.append(row)
        elif any(old[c] != row[c] for c in COMPARED):
            updates.append(
                {"_id": old["id"], **{c: row[c] for c in COMPARED}, "rated_at": row["rated_at"]}
            )
    stale = [
        r["id"]
        for k, r in existing.items()
        if k not in charges and (r["kind"] != "adjustment" or k in pending_keys)
    ]
    delete_in(session, ch.c.id, stale)
    insert_rows(session, Charge, inserts)
    if updates:
        session.execute(sa.update(ch).where(ch.c.id == sa.bindparam("_id")), updates)
    return len(inserts) + len(updates), len(stale)
