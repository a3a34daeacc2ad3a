"""A subscription entry of a catalog: its dates, items, phases and discounts."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

from billing_core.domain.money import shown
from billing_core.domain.schedules import CADENCE_MONTHS
from billing_core.inputs.catalog_entry import (
    POOL_MODES,
    TIMINGS,
    Entry,
    column_length,
    shown_key,
    sorted_keys,
)
from billing_core.store.models import Subscription, SubscriptionItem


def subscription(e: Entry) -> tuple[str, dict, list[dict]] | None:
    """A subscription entry: its id, its row and its items (of every phase), or None
    without an id."""
    e.known(
        "id",
        "customer",
        "start",
        "end",
        "cadence",
        "billing_day",
        "items",
        "phases",
        "discounts",
        "minimum",
        "rollup",
        "align_to_parent",
        "status",
    )
    sid = e.text("id", max_length=column_length(Subscription, "id"))
    start = e.day("start")
    end = e.day("end", required=False)
    if start and end and end < start:
        e.fail(f"ends ({end}) before it starts ({start})", "end")
    items = _items(e, e.raw.get("items"), "items", 0, start, required=True)
    items += _phases(e, start, end)
    discounts = _discounts(e, e.raw.get("discounts"))
    customer = e.text("customer", max_length=column_length(Subscription, "customer_id"))
    if not sid:
        return None
    return (
        sid,
        {
            "id": sid,
            "customer_id": customer,
            "start": start,
            "end": end,
            "cadence": e.choice("cadence", tuple(CADENCE_MONTHS), "monthly"),
            "billing_day": e.integer("billing_day", 1, 31, start.day if start else 1),
            "rollup": e.boolean("rollup", None),
            "align_to_parent": e.boolean("align_to_parent", False),
            "status": e.choice("status", ("draft", "active"), "active"),
            "minimum": e.decimal("minimum", required=False),
            "discounts": discounts,
        },
        items,
    )


def _phases(e: Entry, start: date | None, end: date | None) -> list[dict]:
    """The items of a subscription's phases, each phase after the one before."""
    items: list[dict] = []
    phase_starts = [start]
    phases_raw = e.raw.get("phases") or []
    if not isinstance(phases_raw, list):
        e.fail("must be a list of {start, items}", "phases")
        phases_raw = []
    for p, phase in enumerate(phases_raw, start=1):
        where = f"phases[{p - 1}]"
        if not isinstance(phase, dict):
            e.fail("must be a mapping with start and items", where)
            continue
        for key in sorted_keys(set(phase) - {"start", "items"}):
            e.fail("unknown key (known: start, items)", f"{where}.{shown_key(key)}")
        pstart = e.day_of(phase.get("start"), f"{where}.start")
        if pstart is None:
            continue
        previous = phase_starts[-1]
        if previous is not None and pstart <= previous:
            e.fail(
                f"starts {pstart}, not after the previous phase or the start ({previous})",
                f"{where}.start",
            )
        if end is not None and pstart > end:
            e.fail(f"starts {pstart}, after the subscription ends ({end})", f"{where}.start")
        phase_starts.append(pstart)
        items += _items(e, phase.get("items"), f"{where}.items", p, pstart, required=True)
    return items


def _items(
    e: Entry, raw: Any, where: str, phase: int, phase_start: date | None, required: bool
) -> list[dict]:
    if raw is None or raw == []:
        if required and phase == 0 and not e.raw.get("phases"):
            e.fail("a subscription needs at least one item", where)
        elif required and phase > 0:
            # A phase's items replace the previous ones; an empty phase has no start to
            # keep (phases are stored through their items) and would bill on silently.
            e.fail("a phase needs at least one item", where)
        return []
    if not isinstance(raw, list):
        e.fail("must be a list of {price, timing, pool}", where)
        return []
    out = []
    seen = set()
    for j, item in enumerate(raw):
        at = f"{where}[{j}]"
        if not isinstance(item, dict):
            e.fail("must be a mapping with price and timing", at)
            continue
        for key in sorted_keys(set(item) - {"price", "timing", "pool"}):
            e.fail("unknown key (known: price, timing, pool)", f"{at}.{shown_key(key)}")
        price = e.text_of(
            item.get("price"),
            f"{at}.price",
            max_length=column_length(SubscriptionItem, "price_code"),
        )
        if price is None:
            continue
        if price in seen:
            e.fail(f"price {price} is listed twice in the same phase", f"{at}.price")
        seen.add(price)
        timing = item.get("timing", "in_arrears")
        if timing not in TIMINGS:
            e.fail(f"must be one of {', '.join(TIMINGS)}, got {shown(timing)}", f"{at}.timing")
        pool = item.get("pool")
        if pool is not None and pool not in POOL_MODES:
            e.fail(f"must be one of {', '.join(POOL_MODES)}, got {shown(pool)}", f"{at}.pool")
        out.append(
            {
                "phase": phase,
                "phase_start": phase_start,
                "price_code": price,
                "timing": timing,
                "pool": pool,
                "_where": at,
            }
        )
    return out


def _discounts(e: Entry, raw: Any) -> list[dict]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        e.fail("must be a list", "discounts")
        return []
    out = []
    for j, item in enumerate(raw):
        sub = Entry("discounts", j, item, e.problems, label=f"{e.label}.discounts[{j}]")
        sub.known("type", "value", "amount", "price")
        kind = sub.choice("type", ("percentage", "fixed"), None)
        discount: dict[str, Any] = {"type": kind, "price": sub.text("price", required=False)}
        if kind == "percentage":
            value = sub.decimal("value", positive=True, at_most=Decimal(100))
            discount["value"] = None if value is None else f"{value:f}"
        elif kind == "fixed":
            amount = sub.decimal("amount", positive=True)
            discount["amount"] = None if amount is None else f"{amount:f}"
        out.append(discount)
    return out
