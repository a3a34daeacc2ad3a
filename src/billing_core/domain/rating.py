"""Rating's proposals: what a billing period, a pool, a minimum, a discount or late usage
charges, from quantities and charges already read. Pure: the close's rating step and the
subscription preview both price through these.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from datetime import date, datetime
from decimal import Decimal
from fractions import Fraction
from typing import Any

from billing_core.domain import pricing
from billing_core.domain.charge import Charge, ChargeRow, average_unit_price
from billing_core.domain.model import PriceInfo, SubscriptionInfo
from billing_core.domain.money import ZERO, round_money, split_largest_remainder
from billing_core.domain.schedules import prorate

ITEM_KINDS = ("fixed", "usage")
# What a minimum commitment is measured against (a true-up is not).
MINIMUM_KINDS = ("fixed", "usage", "discount")


def part_factor(start: date, end: date, full_start: date, full_end: date) -> Fraction:
    """The share of its whole cadence period [full_start, full_end) a part covers."""
    return Fraction((end - start).days, (full_end - full_start).days)


def fixed_amount(price: PriceInfo, factor: Fraction) -> Decimal:
    """A flat fee for a part of its period: prorated exactly, rounded once."""
    return round_money(prorate(pricing.amount(price.terms, Decimal(1)), factor), price.currency)


def usage_amount(terms: dict, currency: str, quantity: Decimal) -> Decimal:
    """Usage is never prorated: the quantity of the part's own window, priced and rounded."""
    return round_money(pricing.amount(terms, quantity), currency)


def usage_unit_price(price: PriceInfo, quantity: Decimal, amount: Decimal) -> Decimal | None:
    """The unit price a usage line shows: the price's own per unit, else the average."""
    own = pricing.unit_price(price.terms)
    return own if own is not None else average_unit_price(amount, quantity)


def pool_shares(
    terms: dict, currency: str, quantities: dict[str, Decimal]
) -> tuple[Decimal, Decimal, dict[str, Decimal]]:
    """A pool is priced as one block of every member's quantity, then split by usage:
    (block quantity, block amount, each member's share)."""
    block = sum(quantities.values(), ZERO)
    amount = round_money(pricing.amount(terms, block), currency)
    return block, amount, split_largest_remainder(amount, quantities, currency)


def minimum_required(minimum: Decimal, factor: Fraction, currency: str) -> Decimal:
    """A minimum commitment for a part of its period: prorated, rounded once."""
    return round_money(prorate(minimum, factor), currency)


def minimum_charge(
    slot: Any, sub: SubscriptionInfo, currency: str, rows: Iterable[ChargeRow], now: datetime
) -> ChargeRow:
    """A true-up when the period's discounted charges (`rows`) fall short of the
    (prorated) minimum.

    Without a shortfall the charge is zero: it still rides on the period's invoice, so the
    minimum is settled with it and never re-rated once that invoice is issued.
    """
    factor = part_factor(slot.period_start, slot.period_end, slot.full_start, slot.full_end)
    required = minimum_required(sub.minimum, factor, currency)
    charged = sum((r["amount"] for r in rows if r["kind"] in MINIMUM_KINDS), ZERO)
    short = shortfall(required, charged)
    return Charge.minimum(slot, currency, sub.minimum, required, charged, short, now)


def shortfall(required: Decimal, charged: Decimal) -> Decimal:
    """What a minimum commitment bills: what the charges fall short of it, or nothing."""
    return max(required - charged, ZERO)


def discounts(
    sub: SubscriptionInfo,
    full_start: date,
    rows: list[ChargeRow],
    frozen_keys: set[str],
    now: datetime,
) -> list[ChargeRow]:
    """One negative line per discount of `sub` and invoice it reduces in the cadence
    period starting `full_start`, whose charges (frozen and fresh) are `rows`. A frozen
    discount is not proposed again; a fixed one's remainder carries over to the next."""
    out: list[ChargeRow] = []
    items = [r for r in rows if r["kind"] in ITEM_KINDS]
    if not items:
        return out
    groups: dict[tuple[date, str], list[ChargeRow]] = defaultdict(list)
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
            applicable = [r for r in group if discount.get("price") in (None, r["price_code"])]
            base = sum((r["amount"] for r in applicable), ZERO)
            if key in frozen_keys:
                if remaining is not None and key in existing:
                    remaining += existing[key]["amount"]  # negative
                continue
            if not applicable:
                continue
            if all(r["charge_key"] in frozen_keys for r in applicable):
                continue  # already issued without this discount: never reopened
            give, remaining, label = _give(discount, base, remaining, applicable[0]["currency"])
            if give <= 0:
                continue
            if discount.get("price"):
                label += f" on {applicable[0]['product']}"
            serviced = (
                sub.customer_id
                if group[0]["pool"] != "child"
                else applicable[0]["serviced_customer_id"]
            )
            out.append(Charge.discount(key, discount, label, give, serviced, applicable, now))
    return out


def _give(
    discount: dict, base: Decimal, remaining: Decimal | None, currency: str
) -> tuple[Decimal, Decimal | None, str]:
    """What a discount takes off `base` (never more than it), what is left of a fixed
    one, and its label."""
    if discount["type"] == "percentage":
        give = round_money(base * Decimal(discount["value"]) / 100, currency)
        label = f"{Decimal(discount['value']).normalize():f}% discount"
    else:
        give = min(max(remaining or ZERO, ZERO), max(base, ZERO))
        remaining = (remaining or ZERO) - give
        label = f"Discount {discount['amount']}"
    return min(give, max(base, ZERO)), remaining, label


def repriced(
    originals: list[ChargeRow], quantity_of: Callable[[ChargeRow], Decimal]
) -> list[tuple[ChargeRow, Decimal, Decimal]]:
    """Stored usage charges priced again, each with the price that billed it, on the
    quantity its window holds now: (original, quantity, amount). A pool is re-rated whole
    (`originals` holds every member of a pool period it touches)."""
    out: list[tuple[ChargeRow, Decimal, Decimal]] = []
    pools: dict[tuple, list[ChargeRow]] = defaultdict(list)
    singles: list[ChargeRow] = []
    for r in originals:
        if r["pool"]:
            pools[(r["subscription_id"], r["price_code"], r["period_start"])].append(r)
        else:
            singles.append(r)
    for r in singles:
        quantity = quantity_of(r)
        out.append((r, quantity, usage_amount(r["pricing"], r["currency"], quantity)))
    for members in pools.values():
        first = members[0]
        quantities = {m["serviced_customer_id"]: quantity_of(m) for m in members}
        _, _, shares = pool_shares(first["pricing"], first["currency"], quantities)
        for m in members:
            customer = m["serviced_customer_id"]
            out.append((m, quantities[customer], shares[customer]))
    return out
