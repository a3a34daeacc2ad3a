"""Billing schedules as an operator reviews them: the list with each one's lifecycle, and a
preview of the periods, billing dates and amounts a close would produce.

Both only read. The preview runs the close's own pure planner over the store's catalog and
prices flat fees, minimums and the usage recorded so far with rating's own functions
(domain.rating); the one thing it touches is the session's temporary table of usage
windows, which the unit of work rolls back with everything else.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal

import sqlalchemy as sa
from sqlmodel import Session

from billing_core.domain.model import Reference, SubscriptionInfo
from billing_core.domain.money import ZERO
from billing_core.domain.planning import Slot, anchor_day, billed_customer_of, plan
from billing_core.domain.rating import (
    fixed_amount,
    minimum_required,
    part_factor,
    pool_shares,
    shortfall,
    usage_amount,
)
from billing_core.domain.schedules import ONE_DAY, lifecycle, window_utc
from billing_core.store.models import Charge, Customer, Invoice, Subscription, charges_joined
from billing_core.store.reference import Scope, frozen_dates, load_reference
from billing_core.store.usage_totals import Window, aggregate

KIND_ORDER = {"fixed": 0, "usage": 1, "minimum": 2}


class SubscriptionError(LookupError):
    """No such subscription."""


@dataclass(frozen=True)
class SubscriptionRow:
    """One billing schedule in the operator's list."""

    id: str
    customer_id: str
    customer_name: str
    billed_customer_id: str
    cadence: str
    billing_day: int
    anchor_day: int
    start: date
    end: date | None
    status: str
    prices: tuple[str, ...]


def list_subscriptions(
    session: Session,
    today: date,
    customer_id: str | None = None,
    status: str | None = None,
) -> list[SubscriptionRow]:
    """Every subscription with its lifecycle on `today`, by customer then start."""
    ref = load_reference(session)
    hierarchy = ref.hierarchy()
    out = []
    for sub in ref.subscriptions.values():
        if customer_id is not None and sub.customer_id != customer_id:
            continue
        state = lifecycle(sub.status, sub.start, sub.end, today)
        if status is not None and state != status:
            continue
        out.append(
            SubscriptionRow(
                id=sub.id,
                customer_id=sub.customer_id,
                customer_name=ref.customers[sub.customer_id].name,
                billed_customer_id=billed_customer_of(sub, hierarchy),
                cadence=sub.cadence,
                billing_day=sub.billing_day,
                anchor_day=anchor_day(sub, ref, hierarchy),
                start=sub.start,
                end=sub.end,
                status=state,
                prices=tuple(dict.fromkeys(i.price_code for i in sub.items)),
            )
        )
    return sorted(out, key=lambda r: (r.customer_id, r.start, r.id))


@dataclass(frozen=True)
class PreviewLine:
    """One charge a close would produce: an item (or minimum) for one period part."""

    kind: str  # fixed | usage | minimum
    price_code: str | None
    product: str
    timing: str
    serviced_customer_id: str
    billed_customer_id: str
    period_start: date
    period_end: date  # inclusive, as invoices show it
    days: int
    full_days: int
    due_date: date
    billing_date: date | None  # None: the billed customer has no billing date yet
    # billed (on an issued invoice) | to bill (a close through the date bills it) |
    # waiting (its billing date is after the close date, or there is none yet)
    state: str
    amount: Decimal | None
    quantity: Decimal | None = None
    window_start: datetime | None = None
    window_end: datetime | None = None
    pool: str | None = None
    invoice_number: str | None = None
    # For a minimum: the (prorated) commitment its amount is the shortfall of.
    commitment: Decimal | None = None

    @property
    def prorated(self) -> bool:
        return self.days != self.full_days


@dataclass
class Preview:
    """What closes through a date would bill for one subscription."""

    subscription: SubscriptionInfo
    customer_name: str
    billed_customer_id: str
    currency: str
    timezone: str
    status: str
    anchor_day: int
    through: date
    lines: list[PreviewLine] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def to_bill(self) -> Decimal:
        """The sum of the amounts a close through the date would put on drafts."""
        return sum((x.amount or ZERO for x in self.lines if x.state == "to bill"), ZERO)


def _family_of(session: Session, subscription_id: str) -> str:
    s = Subscription.__table__.c
    c = Customer.__table__.c
    family = session.execute(
        sa.select(c.family_id)
        .select_from(Subscription.__table__.join(Customer.__table__, c.id == s.customer_id))
        .where(s.id == subscription_id)
    ).scalar_one_or_none()
    if family is None:
        raise SubscriptionError(f"no subscription {subscription_id!r}")
    return family


def _billed_charges(session: Session, scope: Scope, keys: list[str]) -> dict[str, dict]:
    """Charges of these slots that sit on invoices no longer drafts, with the number."""
    ch = Charge.__table__.c
    v = Invoice.__table__.c
    out: dict[str, dict] = {}
    for i in range(0, len(keys), 900):
        rows = session.execute(
            sa.select(ch.charge_key, ch.amount, ch.quantity, v.number, v.billing_date)
            .select_from(charges_joined(outer=False))
            .where(v.status != "draft")
            .where(scope.where(ch.family_id))
            .where(ch.charge_key.in_(keys[i : i + 900]))
        ).mappings()
        out.update({r["charge_key"]: dict(r) for r in rows})
    return out


def _line_order(line: PreviewLine) -> tuple:
    return (
        line.period_start,
        KIND_ORDER[line.kind],
        line.price_code or "",
        line.serviced_customer_id,
    )


def preview_subscription(
    session: Session, subscription_id: str, through: date, today: date | None = None
) -> Preview:
    """The periods, billing dates and amounts closes through `through` would produce for
    one subscription; a draft is shown as if it were started. Writes nothing."""
    family = _family_of(session, subscription_id)
    scope = Scope.of([family])
    ref = load_reference(session, scope)
    sub = ref.subscriptions[subscription_id]
    customer = ref.customers[sub.customer_id]
    hierarchy = ref.hierarchy()
    result = Preview(
        subscription=sub,
        customer_name=customer.name,
        billed_customer_id=billed_customer_of(sub, hierarchy),
        currency=customer.currency,
        timezone=customer.timezone,
        status=lifecycle(sub.status, sub.start, sub.end, today or date.today()),
        anchor_day=anchor_day(sub, ref, hierarchy),
        through=through,
    )
    if sub.status == "draft":
        # Reviewing a draft before starting it is the point of drafts: plan it as active.
        result.notes.append("draft: it bills nothing until it is made active; shown as if active")
        started = dataclasses.replace(sub, status="active")
        ref = dataclasses.replace(ref, subscriptions={**ref.subscriptions, sub.id: started})
        sub = started
    planned = plan(ref, through, frozen_dates(session, scope))
    slots = [s for s in planned.slots if s.subscription_id == sub.id]
    billed = _billed_charges(session, scope, [s.slot_key for s in slots])
    # Everything is priced (a pool's block takes in shares already invoiced); what is
    # invoiced then shows the invoiced amount.
    amounts = _amounts(session, ref, sub, slots)
    for key, done in billed.items():
        amounts[key] = (done["amount"], done["quantity"])
    commitments = _minimums(slots, amounts, billed)
    for slot in slots:
        result.lines.append(
            _preview_line(
                slot,
                ref,
                customer.timezone,
                through,
                amounts[slot.slot_key],
                billed.get(slot.slot_key),
                commitments.get(slot.slot_key),
            )
        )
    result.lines.sort(key=_line_order)
    if sub.discounts:
        result.notes.append(
            "discounts are applied when the period is rated and are not included above "
            "(a minimum's shortfall is then larger by what they take off)"
        )
    return result


def _minimums(
    slots: list[Slot],
    amounts: dict[str, tuple[Decimal | None, Decimal | None]],
    billed: dict[str, dict],
) -> dict[str, Decimal]:
    """A minimum bills the shortfall of its cadence period's charges (billed or not): its
    amount becomes that; returns each unbilled minimum's (prorated) commitment."""
    charged: dict[date, Decimal] = defaultdict(lambda: ZERO)
    for slot in slots:
        if slot.kind == "item":
            charged[slot.full_start] += amounts[slot.slot_key][0] or ZERO
    commitments = {}
    for slot in slots:
        if slot.kind == "minimum" and slot.slot_key not in billed:
            required = amounts[slot.slot_key][0] or ZERO
            commitments[slot.slot_key] = required
            amounts[slot.slot_key] = (shortfall(required, charged[slot.full_start]), None)
    return commitments


def _preview_line(
    slot: Slot,
    ref: Reference,
    timezone: str,
    through: date,
    priced: tuple[Decimal | None, Decimal | None],
    done: dict | None,
    commitment: Decimal | None,
) -> PreviewLine:
    """One slot as the preview shows it; `done` is its charge on an issued invoice."""
    amount, quantity = priced
    if done is not None:
        state = "billed"
    else:
        on_time = slot.billing_date is not None and slot.billing_date <= through
        state = "to bill" if on_time else "waiting"
    price = ref.prices.get(slot.price_code) if slot.price_code else None
    usage = price is not None and price.usage
    window = window_utc(slot.period_start, slot.period_end, timezone) if usage else (None, None)
    return PreviewLine(
        kind="minimum" if slot.kind == "minimum" else ("usage" if usage else "fixed"),
        price_code=slot.price_code,
        product=price.product if price else "Minimum commitment",
        timing=slot.timing or "in_arrears",
        serviced_customer_id=slot.serviced_customer_id,
        billed_customer_id=slot.billed_customer_id,
        period_start=slot.period_start,
        period_end=slot.period_end - ONE_DAY,
        days=(slot.period_end - slot.period_start).days,
        full_days=(slot.full_end - slot.full_start).days,
        due_date=slot.due_date,
        billing_date=done["billing_date"] if done else slot.billing_date,
        state=state,
        amount=amount,
        quantity=quantity,
        window_start=window[0],
        window_end=window[1],
        pool=slot.pool,
        invoice_number=done["number"] if done else None,
        commitment=commitment,
    )


def _amounts(
    session: Session, ref: Reference, sub: SubscriptionInfo, slots: list[Slot]
) -> dict[str, tuple[Decimal | None, Decimal | None]]:
    """slot key -> (amount, quantity), priced by rating's own functions; usage so far."""
    currency = ref.customers[sub.customer_id].currency
    timezone = ref.customers[sub.customer_id].timezone
    out: dict[str, tuple[Decimal | None, Decimal | None]] = {}
    windows: dict[tuple, Window] = {}
    usage_slots = []
    for slot in slots:
        factor = part_factor(slot.period_start, slot.period_end, slot.full_start, slot.full_end)
        if slot.kind == "minimum":
            out[slot.slot_key] = (minimum_required(sub.minimum, factor, currency), None)
            continue
        price = ref.prices[slot.price_code]
        if not price.usage:
            out[slot.slot_key] = (fixed_amount(price, factor), Decimal(1))
            continue
        # Usage is never prorated: its window is the part's own local midnights.
        start, end = window_utc(slot.period_start, slot.period_end, timezone)
        key = (slot.serviced_customer_id, price.metric_code, start, end)
        if key not in windows:
            windows[key] = Window(len(windows) + 1, *key)
        usage_slots.append((slot, windows[key].key))
    quantities = aggregate(session, list(windows.values()), ref.metrics) if windows else {}
    pools: dict[tuple, list[tuple[Slot, Decimal]]] = defaultdict(list)
    for slot, window_key in usage_slots:
        price = ref.prices[slot.price_code]
        quantity = quantities.get(window_key, ZERO)
        if slot.pool is not None:
            pools[(slot.price_code, slot.period_start)].append((slot, quantity))
            continue
        out[slot.slot_key] = (usage_amount(price.terms, price.currency, quantity), quantity)
    for (price_code, _), members in pools.items():
        price = ref.prices[price_code]
        by_member = {s.serviced_customer_id: q for s, q in members}
        # (A price is in its subscription customer's currency: the import refuses others.)
        _, _, shares = pool_shares(price.terms, price.currency, by_member)
        for slot, quantity in members:
            out[slot.slot_key] = (shares[slot.serviced_customer_id], quantity)
    return out
