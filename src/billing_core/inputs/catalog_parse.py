"""A catalog file's data as checked values: one validator per section, each entry on its
own. The checks against the other entries and the store are billing_core.inputs.catalog_check's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from billing_core.domain import pricing
from billing_core.domain.money import shown
from billing_core.domain.schedules import CADENCE_MONTHS
from billing_core.inputs.catalog_entry import (
    AGGREGATIONS,
    ID_KEYS,
    MAX_INT,
    POOL_MODES,
    SECTIONS,
    TIMINGS,
    Entry,
    column_length,
    entry_key,
    one_line,
    section_list,
    shown_key,
    sorted_keys,
)
from billing_core.store.models import (
    CreditGrant,
    Customer,
    Issuer,
    Metric,
    Price,
    Subscription,
    SubscriptionItem,
    TaxRate,
)


@dataclass
class Catalog:
    """A parsed catalog: rows ready for the store, keyed by id, with the problems of its
    entries (the store-wide checks of `import_catalog` add theirs and refuse them all)."""

    issuer: dict | None = None
    tax_rates: dict[str, dict] = field(default_factory=dict)
    customers: dict[str, dict] = field(default_factory=dict)
    metrics: dict[str, dict] = field(default_factory=dict)
    prices: dict[str, dict] = field(default_factory=dict)
    subscriptions: dict[str, dict] = field(default_factory=dict)
    items: dict[str, list[dict]] = field(default_factory=dict)
    credits: dict[str, dict] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    # (section, id) -> where the entry is in the file: `customers[3] (acme)`
    labels: dict[tuple[str, str], str] = field(default_factory=dict)

    def label(self, section: str, key: Any) -> str:
        found = self.labels.get((section, key))
        if found is not None:
            return found
        shown_id = entry_key(key)
        return f"{section} ({shown_id if shown_id is not None else '?'}, in the store)"


def parse(data: dict) -> Catalog:
    """Validate each entry on its own. Problems are kept in `catalog.problems` (every one
    found) for `import_catalog` to report with those against the store."""
    catalog = Catalog()
    problems = catalog.problems
    for key in sorted_keys(set(data) - set(SECTIONS)):
        problems.append(f"{shown_key(key)}: unknown section (known: {', '.join(SECTIONS)})")
    if data.get("issuer") is not None:
        _issuer(Entry("issuer", None, data["issuer"], problems), catalog)
    for section, validate in VALIDATORS:
        for e in _entries(data, section, catalog):
            validate(e, catalog)
    return catalog


def _entries(data: dict, section: str, catalog: Catalog) -> Iterator[Entry]:
    """The section's entries, each labelled `section[i] (id)`; an id listed twice is a
    problem."""
    problems = catalog.problems
    seen: set[str] = set()
    for i, raw in enumerate(section_list(data, section, problems)):
        key = entry_key(raw.get(ID_KEYS[section])) if isinstance(raw, dict) else None
        if key is None:
            yield Entry(section, i, raw, problems, label=f"{section}[{i}]")
            continue
        label = f"{section}[{i}] ({key})"
        if key in seen:
            problems.append(f"{label}: listed twice in the file")
        seen.add(key)
        catalog.labels[(section, key)] = label
        yield Entry(section, i, raw, problems, label=label)


def _issuer(e: Entry, catalog: Catalog) -> None:
    e.known("name", "invoice_prefix", "address")
    address = e.raw.get("address") or []
    if isinstance(address, str):
        address = [address]
    if not isinstance(address, list) or not all(isinstance(a, str) for a in address):
        e.fail("must be a list of lines", "address")
        address = []
    for j, line in enumerate(address):
        e.text_of(line, f"address[{j}]")
    prefix = e.text(
        "invoice_prefix",
        required=False,
        default="INV",
        max_length=column_length(Issuer, "invoice_prefix"),
    )
    if prefix is not None and not prefix.replace("-", "").replace("_", "").isalnum():
        e.fail("may hold letters, digits, - and _ only", "invoice_prefix")
    catalog.issuer = {
        "id": "default",
        "name": e.text("name"),
        "invoice_prefix": prefix,
        "address": address,
    }


def _tax_rate(e: Entry, catalog: Catalog) -> None:
    e.known("jurisdiction", "rate")
    jurisdiction = e.text("jurisdiction", max_length=column_length(TaxRate, "jurisdiction"))
    rate = e.decimal("rate", at_most=Decimal(1))
    if jurisdiction:
        catalog.tax_rates[jurisdiction] = {"jurisdiction": jurisdiction, "rate": rate}


def _customer(e: Entry, catalog: Catalog) -> None:
    e.known(
        "id",
        "name",
        "currency",
        "timezone",
        "jurisdiction",
        "parent",
        "bill_to",
        "billing_day",
        "tax_basis",
        "rollup_lines",
    )
    cid = e.text("id", max_length=column_length(Customer, "id"))
    timezone = e.text(
        "timezone", required=False, default="UTC", max_length=column_length(Customer, "timezone")
    )
    try:
        ZoneInfo(timezone or "UTC")
    except (ZoneInfoNotFoundError, ValueError, OSError):
        e.fail(f"unknown time zone {shown(timezone)}", "timezone")
    parent = e.text("parent", required=False, max_length=column_length(Customer, "parent_id"))
    if parent is not None and parent == cid:
        e.fail("a customer cannot be its own parent (cycle)", "parent")
    row = {
        "id": cid,
        "name": e.text("name"),
        "currency": e.currency(),
        "timezone": timezone,
        "jurisdiction": e.text(
            "jurisdiction", required=False, max_length=column_length(Customer, "jurisdiction")
        ),
        "parent_id": parent,
        "bill_to": e.choice("bill_to", ("parent", "self"), "parent" if parent else "self"),
        "billing_day": e.integer("billing_day", 1, 31, None),
        "tax_basis": e.choice("tax_basis", ("billed", "serviced"), "billed"),
        "rollup_lines": e.choice("rollup_lines", ("breakdown", "summary"), "breakdown"),
    }
    if cid:
        catalog.customers[cid] = row


def _metric(e: Entry, catalog: Catalog) -> None:
    e.known("code", "name", "aggregation", "field")
    code = e.text("code", max_length=column_length(Metric, "code"))
    aggregation = e.choice("aggregation", AGGREGATIONS, None)
    metric_field = e.text("field", required=False, max_length=column_length(Metric, "field"))
    if aggregation == "count":
        metric_field = None
    elif metric_field is None:
        metric_field = "quantity"
    if code:
        catalog.metrics[code] = {
            "code": code,
            "name": e.text("name", required=False, default=code),
            "aggregation": aggregation,
            "field": metric_field,
        }


def _price(e: Entry, catalog: Catalog) -> None:
    """A price: what every price has, and the terms its model validates and stores."""
    code = e.text("code", max_length=column_length(Price, "code"))
    model_name = e.text("model")
    try:
        price_model = pricing.model(model_name) if model_name else None
    except pricing.UnknownModel as err:
        e.fail(one_line(str(err)) if len(str(err)) < 200 else "unknown price model", "model")
        price_model = None
    base = ("code", "product", "bundle", "currency", "model", "metric")
    e.known(*base, *(price_model.fields if price_model else ()))
    metric = e.text("metric", required=False, max_length=column_length(Price, "metric_code"))
    terms: dict[str, Any] = {}
    if price_model is not None:
        if price_model.usage and metric is None:
            e.fail(f"a {model_name} price rates usage: it needs a metric", "metric")
        if not price_model.usage and metric is not None:
            e.fail(f"a {model_name} price rates no usage: remove the metric", "metric")
        term_problems = price_model.validate(e.raw)
        for problem in term_problems:
            name, reason = price_model.located(problem)
            e.fail(reason, name)
        if not term_problems:
            terms = price_model.normalize(e.raw)
    if code:
        catalog.prices[code] = {
            "code": code,
            "product": e.text("product", required=False, default=code),
            "bundle": e.text("bundle", required=False),
            "currency": e.currency(),
            "model": model_name,
            "metric_code": metric,
            "terms": terms,
        }


def _subscription(e: Entry, catalog: Catalog) -> None:
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
    if sid:
        catalog.subscriptions[sid] = {
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
        }
        catalog.items[sid] = items


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


def _credit(e: Entry, catalog: Catalog) -> None:
    e.known(
        "id",
        "customer",
        "subscription",
        "amount",
        "currency",
        "effective",
        "expires",
        "priority",
    )
    gid = e.text("id", max_length=column_length(CreditGrant, "id"))
    effective = e.day("effective")
    expires = e.day("expires", required=False)
    if effective and expires and expires < effective:
        e.fail(f"expires ({expires}) before it is effective ({effective})", "expires")
    row = {
        "id": gid,
        "customer_id": e.text("customer", max_length=column_length(CreditGrant, "customer_id")),
        "subscription_id": e.text(
            "subscription",
            required=False,
            max_length=column_length(CreditGrant, "subscription_id"),
        ),
        "amount": e.decimal("amount", positive=True),
        "currency": e.currency(),
        "effective": effective,
        "expires": expires,
        "priority": e.integer("priority", 0, MAX_INT, 100),
    }
    if gid:
        catalog.credits[gid] = row


# The sections of entries, in the order their problems are reported (after the issuer's).
VALIDATORS: tuple[tuple[str, Callable[[Entry, Catalog], None]], ...] = (
    ("tax_rates", _tax_rate),
    ("customers", _customer),
    ("metrics", _metric),
    ("prices", _price),
    ("subscriptions", _subscription),
    ("credits", _credit),
)
