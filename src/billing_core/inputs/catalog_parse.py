"""A catalog file's data as checked values: one validator per section, each entry on its
own (a subscription's in catalog_subscription). The checks against the other entries and
the store are catalog_check's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from billing_core.domain import pricing
from billing_core.domain.money import shown
from billing_core.inputs.catalog_entry import (
    ID_KEYS,
    MAX_INT,
    MAX_TERMS_DAYS,
    SECTIONS,
    Entry,
    column_length,
    entry_key,
    one_line,
    section_list,
    shown_key,
    sorted_keys,
)
from billing_core.inputs.catalog_subscription import subscription
from billing_core.store.aggregations import AGGREGATIONS
from billing_core.store.models import (
    CreditGrant,
    Customer,
    Issuer,
    Metric,
    Price,
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
    e.known(
        "name",
        "invoice_prefix",
        "address",
        "tax_id",
        "email",
        "timezone",
        "locale",
        "payment_terms_days",
        "payment_instructions",
    )
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
        "address": e.lines("address") or [],
        "tax_id": e.text("tax_id", required=False, max_length=column_length(Issuer, "tax_id")),
        "email": e.email(max_length=column_length(Issuer, "email")),
        "timezone": _timezone(e, None),
        "locale": e.locale(),
        "payment_terms_days": e.integer("payment_terms_days", 0, MAX_TERMS_DAYS, None),
        "payment_instructions": e.lines("payment_instructions"),
    }


def _timezone(e: Entry, default: str | None) -> str | None:
    timezone = e.text(
        "timezone", required=False, default=default, max_length=column_length(Customer, "timezone")
    )
    if timezone is None:
        return None
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        e.fail(f"unknown time zone {shown(timezone)}", "timezone")
    return timezone


def _tax_rate(e: Entry, catalog: Catalog) -> None:
    e.known("jurisdiction", "rate", "name", "note")
    jurisdiction = e.text("jurisdiction", max_length=column_length(TaxRate, "jurisdiction"))
    rate = e.decimal("rate", at_most=Decimal(1))
    if jurisdiction:
        catalog.tax_rates[jurisdiction] = {
            "jurisdiction": jurisdiction,
            "rate": rate,
            "name": e.text("name", required=False, max_length=column_length(TaxRate, "name")),
            "note": e.text("note", required=False),
        }


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
        "address",
        "tax_id",
        "email",
        "locale",
        "payment_terms_days",
    )
    cid = e.text("id", max_length=column_length(Customer, "id"))
    timezone = _timezone(e, "UTC")
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
        "address": e.lines("address"),
        "tax_id": e.text("tax_id", required=False, max_length=column_length(Customer, "tax_id")),
        "email": e.email(max_length=column_length(Customer, "email")),
        "locale": e.locale(),
        "payment_terms_days": e.integer("payment_terms_days", 0, MAX_TERMS_DAYS, None),
    }
    if cid:
        catalog.customers[cid] = row


def _metric(e: Entry, catalog: Catalog) -> None:
    e.known("code", "name", "aggregation", "field")
    code = e.text("code", max_length=column_length(Metric, "code"))
    aggregation = e.choice("aggregation", AGGREGATIONS, None)
    metric_field = e.text("field", required=False, max_length=column_length(Metric, "field"))
    if aggregation in AGGREGATIONS and not AGGREGATIONS[aggregation].reads_field:
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
    found = subscription(e)
    if found is not None:
        sid, row, items = found
        catalog.subscriptions[sid] = row
        catalog.items[sid] = items


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
        "name",
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
        "name": e.text("name", required=False),
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
