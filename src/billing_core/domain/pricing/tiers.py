"""Tier tables shared by graduated and volume prices.

Tiers are `[{up_to, unit_price, flat_fee?}]`, ascending, the last `up_to: null`; `up_to`
is inclusive (with tiers up to 100 then beyond, the 100th unit is in the first).
"""

from __future__ import annotations

from decimal import Decimal
from functools import lru_cache
from typing import Any

from billing_core.domain.money import MoneyError, parse_decimal
from billing_core.domain.pricing.base import PriceModel, Terms, dec, stored

ZERO = Decimal(0)


class Tiered(PriceModel):
    """A price on a tier table: its one field is `tiers`, and every problem is the
    table's."""

    fields = ("tiers",)

    def validate(self, terms: Terms) -> list[str]:
        return validate_tiers(terms)

    def normalize(self, terms: Terms) -> Terms:
        return {"tiers": normalize_tiers(terms)}

    def located(self, problem: str) -> tuple[str | None, str]:
        return "tiers", problem


def validate_tiers(terms: Terms) -> list[str]:
    """Problems with a tier table: order, the open last tier, prices."""
    tiers = terms.get("tiers")
    if not isinstance(tiers, list) or not tiers:
        return ["tiers must be a non-empty list of {up_to, unit_price, flat_fee}"]
    problems: list[str] = []
    previous: Decimal | None = None
    for i, tier in enumerate(tiers, start=1):
        if not isinstance(tier, dict):
            problems.append(f"tier {i} must be a mapping")
            continue
        unknown = set(tier) - {"up_to", "unit_price", "flat_fee"}
        if unknown:
            problems.append(f"tier {i} has unknown keys {sorted(unknown, key=str)}")
        last = i == len(tiers)
        up_to = tier.get("up_to")
        if up_to is None:
            if not last:
                problems.append(f"tier {i}: only the last tier may have up_to null")
        else:
            try:
                bound: Decimal | None = parse_decimal(up_to, f"tier {i} up_to")
            except MoneyError as err:
                problems.append(str(err))
                bound = None  # the tier's prices are still checked below
            if last:
                problems.append(f"tier {i}: the last tier must have up_to null (open-ended)")
            if bound is not None and bound <= 0:
                problems.append(f"tier {i}: up_to must be positive")
            elif bound is not None and previous is not None and bound <= previous:
                problems.append(
                    f"tier {i}: up_to {bound} is not above the previous tier's {previous} "
                    "(tiers must ascend)"
                )
            previous = bound
        for field in ("unit_price", "flat_fee"):
            if field == "unit_price" and tier.get(field) is None:
                problems.append(f"tier {i}: unit_price is required")
                continue
            if tier.get(field) is None:
                continue
            try:
                if parse_decimal(tier[field], f"tier {i} {field}") < 0:
                    problems.append(f"tier {i}: {field} must be zero or more")
            except MoneyError as err:
                problems.append(str(err))
    return problems


def normalize_tiers(terms: Terms) -> list[dict]:
    """Tiers with decimal strings, as stored."""
    out = []
    for tier in terms["tiers"]:
        item = {
            "up_to": None if tier.get("up_to") is None else stored(dec(tier["up_to"])),
            "unit_price": stored(dec(tier["unit_price"])),
        }
        if tier.get("flat_fee") is not None:
            item["flat_fee"] = stored(dec(tier["flat_fee"]))
        out.append(item)
    return out


def bounds(terms: Terms) -> tuple[tuple[Decimal | None, Decimal, Decimal], ...]:
    """(up_to, unit_price, flat_fee) per tier."""
    return _bounds(
        tuple((t.get("up_to"), t["unit_price"], t.get("flat_fee")) for t in terms["tiers"])
    )


@lru_cache(maxsize=1024)
def _bounds(
    tiers: tuple[tuple[Any, Any, Any], ...],
) -> tuple[tuple[Decimal | None, Decimal, Decimal], ...]:
    # Parsed once per distinct tier table: a close rates thousands of slots on a few.
    return tuple(
        (
            None if up_to is None else dec(up_to),
            dec(unit_price),
            dec(flat_fee) if flat_fee is not None else ZERO,
        )
        for up_to, unit_price, flat_fee in tiers
    )
