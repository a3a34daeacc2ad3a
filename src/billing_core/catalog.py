"""Catalog files: parse, validate whole against the store, then upsert by id.

A catalog is YAML or JSON with the keys `issuer`, `tax_rates`, `customers`, `metrics`,
`prices`, `subscriptions` and `credits`. Nothing is written unless every entry of the
file, merged with what the store already holds, is valid.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import sqlalchemy as sa
import yaml
from sqlmodel import Session

from . import pricing
from .hierarchy import Hierarchy, Node
from .models import (
    CreditGrant,
    Customer,
    Issuer,
    Metric,
    Price,
    Subscription,
    SubscriptionItem,
    TaxRate,
    UsageEvent,
)
from .money import MINOR_UNITS, MoneyError, parse_decimal
from .schedules import CADENCE_MONTHS
from .store import delete_in, insert_rows, upsert

SECTIONS = ("issuer", "tax_rates", "customers", "metrics", "prices", "subscriptions", "credits")
AGGREGATIONS = ("sum", "count", "max", "unique_count", "latest")
POOL_MODES = ("breakdown", "summary", "child")
TIMINGS = ("in_advance", "in_arrears")


class CatalogError(ValueError):
    """A catalog refused whole: one problem per entry and field."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


# --- reading files ---------------------------------------------------------------------


class _DecimalLoader(yaml.SafeLoader):
    """YAML whose unquoted decimals stay exact (Decimal, not float)."""


def _decimal_constructor(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    text = loader.construct_scalar(node).replace("_", "")  # type: ignore[arg-type]
    try:
        return Decimal(text)
    except InvalidOperation:
        return text


_DecimalLoader.add_constructor("tag:yaml.org,2002:float", _decimal_constructor)


def load_file(path: Path) -> dict:
    """A catalog file's content: JSON by extension, YAML otherwise."""
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text, parse_float=Decimal)
        else:
            data = yaml.load(text, Loader=_DecimalLoader)  # noqa: S506 (a safe loader)
    except (yaml.YAMLError, json.JSONDecodeError) as err:
        raise CatalogError([f"not valid {path.suffix.lstrip('.') or 'YAML'}: {err}"]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise CatalogError(["a catalog must be a mapping with the keys " + ", ".join(SECTIONS)])
    return data


# --- validation of single entries --------------------------------------------------------


class _Entry:
    """Reads the fields of one catalog entry, collecting problems with their location."""

    def __init__(
        self, section: str, index: int | None, raw: Any, problems: list[str], id_key: str = "id"
    ):
        self.raw = raw if isinstance(raw, dict) else {}
        key = self.raw.get(id_key)
        where = section if index is None else f"{section}[{index}]"
        self.label = f"{where} ({key})" if key is not None else where
        self.problems = problems
        if not isinstance(raw, dict):
            self.fail("must be a mapping")

    def fail(self, message: str, name: str | None = None) -> None:
        self.problems.append(f"{self.label}{'.' + name if name else ''}: {message}")

    def known(self, *names: str) -> None:
        unknown = sorted(set(self.raw) - set(names))
        for name in unknown:
            self.fail(f"unknown key (known: {', '.join(names)})", name)

    def text(self, name: str, required: bool = True, default: str | None = None) -> str | None:
        value = self.raw.get(name)
        if value is None or value == "":
            if required:
                self.fail("is required", name)
            return default
        if isinstance(value, bool) or not isinstance(value, str | int):
            self.fail(f"must be text, got {value!r}", name)
            return default
        return str(value)

    def choice(self, name: str, choices: tuple[str, ...], default: str | None) -> str | None:
        value = self.text(name, required=default is None, default=default)
        if value is not None and value not in choices:
            self.fail(f"must be one of {', '.join(choices)}, got {value!r}", name)
        return value

    def boolean(self, name: str, default: bool | None) -> bool | None:
        value = self.raw.get(name, default)
        if value is not None and not isinstance(value, bool):
            self.fail(f"must be true or false, got {value!r}", name)
            return default
        return value

    def integer(self, name: str, lo: int, hi: int | None, default: int | None) -> int | None:
        value = self.raw.get(name, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | Decimal | str):
            self.fail(f"must be a whole number, got {value!r}", name)
            return default
        try:
            number = int(Decimal(str(value)))
            if number != Decimal(str(value)):
                raise ValueError
        except (InvalidOperation, ValueError):
            self.fail(f"must be a whole number, got {value!r}", name)
            return default
        if number < lo or (hi is not None and number > hi):
            self.fail(f"must be between {lo} and {hi}" if hi else f"must be {lo} or more", name)
            return default
        return number

    def decimal(
        self,
        name: str,
        required: bool = True,
        positive: bool = False,
        at_most: Decimal | None = None,
    ) -> Decimal | None:
        value = self.raw.get(name)
        if value is None:
            if required:
                self.fail("is required", name)
            return None
        try:
            number = parse_decimal(value, name)
        except MoneyError as err:
            self.fail(str(err).removeprefix(f"{name} "), name)
            return None
        if number < 0 or (positive and number == 0):
            self.fail("must be positive" if positive else "must be zero or more", name)
            return None
        if at_most is not None and number > at_most:
            self.fail(f"must be at most {at_most}", name)
            return None
        return number

    def day(self, name: str, required: bool = True) -> date | None:
        value = self.raw.get(name)
        if value is None:
            if required:
                self.fail("is required", name)
            return None
        if isinstance(value, date):
            return value
        try:
            return date.fromisoformat(str(value))
        except ValueError:
            self.fail(f"must be a date (YYYY-MM-DD), got {value!r}", name)
            return None

    def currency(self, name: str = "currency") -> str | None:
        value = self.text(name)
        if value is not None and value not in MINOR_UNITS:
            self.fail(f"unknown currency code {value!r} (ISO 4217)", name)
            return None
        return value


def _list(data: dict, section: str, problems: list[str]) -> list:
    value = data.get(section) or []
    if not isinstance(value, list):
        problems.append(f"{section}: must be a list")
        return []
    return value


def _duplicates(section: str, keys: list[str | None], problems: list[str]) -> None:
    seen: set[str] = set()
    for i, key in enumerate(keys):
        if key is None:
            continue
        if key in seen:
            problems.append(f"{section}[{i}] ({key}): listed twice in the file")
        seen.add(key)


@dataclass
class Catalog:
    """A parsed catalog: rows ready for the store, keyed by id."""

    issuer: dict | None = None
    tax_rates: dict[str, dict] = field(default_factory=dict)
    customers: dict[str, dict] = field(default_factory=dict)
    metrics: dict[str, dict] = field(default_factory=dict)
    prices: dict[str, dict] = field(default_factory=dict)
    subscriptions: dict[str, dict] = field(default_factory=dict)
    items: dict[str, list[dict]] = field(default_factory=dict)
    credits: dict[str, dict] = field(default_factory=dict)


def parse(data: dict) -> Catalog:
    """Validate each entry on its own; raise CatalogError with every problem found."""
    problems: list[str] = []
    catalog = Catalog()
    unknown = sorted(set(data) - set(SECTIONS))
    for key in unknown:
        problems.append(f"{key}: unknown section (known: {', '.join(SECTIONS)})")

    if data.get("issuer") is not None:
        e = _Entry("issuer", None, data["issuer"], problems, id_key="name")
        e.known("name", "invoice_prefix", "address")
        address = e.raw.get("address") or []
        if isinstance(address, str):
            address = [address]
        if not isinstance(address, list) or not all(isinstance(a, str) for a in address):
            e.fail("must be a list of lines", "address")
            address = []
        prefix = e.text("invoice_prefix", required=False, default="INV")
        if prefix is not None and not prefix.replace("-", "").replace("_", "").isalnum():
            e.fail("may hold letters, digits, - and _ only", "invoice_prefix")
        catalog.issuer = {
            "id": "default",
            "name": e.text("name"),
            "invoice_prefix": prefix,
            "address": address,
        }

    rates = _list(data, "tax_rates", problems)
    _duplicates(
        "tax_rates",
        [r.get("jurisdiction") if isinstance(r, dict) else None for r in rates],
        problems,
    )
    for i, raw in enumerate(rates):
        e = _Entry("tax_rates", i, raw, problems, id_key="jurisdiction")
        e.known("jurisdiction", "rate")
        jurisdiction = e.text("jurisdiction")
        rate = e.decimal("rate", at_most=Decimal(1))
        if jurisdiction:
            catalog.tax_rates[jurisdiction] = {"jurisdiction": jurisdiction, "rate": rate}

    customers = _list(data, "customers", problems)
    _duplicates(
        "customers", [c.get("id") if isinstance(c, dict) else None for c in customers], problems
    )
    for i, raw in enumerate(customers):
        e = _Entry("customers", i, raw, problems)
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
        cid = e.text("id")
        timezone = e.text("timezone", required=False, default="UTC")
        try:
            ZoneInfo(timezone or "UTC")
        except (ZoneInfoNotFoundError, ValueError):
            e.fail(f"unknown time zone {timezone!r}", "timezone")
        parent = e.text("parent", required=False)
        if parent is not None and parent == cid:
            e.fail("a customer cannot be its own parent (cycle)", "parent")
        row = {
            "id": cid,
            "name": e.text("name"),
            "currency": e.currency(),
            "timezone": timezone,
            "jurisdiction": e.text("jurisdiction", required=False),
            "parent_id": parent,
            "bill_to": e.choice("bill_to", ("parent", "self"), "parent" if parent else "self"),
            "billing_day": e.integer("billing_day", 1, 31, None),
            "tax_basis": e.choice("tax_basis", ("billed", "serviced"), "billed"),
            "rollup_lines": e.choice("rollup_lines", ("breakdown", "summary"), "breakdown"),
        }
        if cid:
            catalog.customers[cid] = row

    metrics = _list(data, "metrics", problems)
    _duplicates(
        "metrics", [m.get("code") if isinstance(m, dict) else None for m in metrics], problems
    )
    for i, raw in enumerate(metrics):
        e = _Entry("metrics", i, raw, problems, id_key="code")
        e.known("code", "name", "aggregation", "field")
        code = e.text("code")
        aggregation = e.choice("aggregation", AGGREGATIONS, None)
        metric_field = e.text("field", required=False)
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

    prices = _list(data, "prices", problems)
    _duplicates(
        "prices", [p.get("code") if isinstance(p, dict) else None for p in prices], problems
    )
    for i, raw in enumerate(prices):
        e = _Entry("prices", i, raw, problems, id_key="code")
        code = e.text("code")
        model_name = e.text("model")
        try:
            price_model = pricing.model(model_name) if model_name else None
        except pricing.UnknownModel as err:
            e.fail(str(err), "model")
            price_model = None
        base = ("code", "product", "bundle", "currency", "model", "metric")
        e.known(
            *base,
            *(price_model.fields if price_model else ()),
            *(("tiers",) if model_name in ("graduated", "volume") else ()),
        )
        metric = e.text("metric", required=False)
        terms: dict[str, Any] = {}
        if price_model is not None:
            if price_model.usage and metric is None:
                e.fail(f"a {model_name} price rates usage: it needs a metric", "metric")
            if not price_model.usage and metric is not None:
                e.fail("a flat price rates no usage: remove the metric", "metric")
            for problem in price_model.validate(e.raw):
                e.fail(problem, "tiers" if problem.startswith("tier") else None)
            if not price_model.validate(e.raw):
                terms = price_model.normalize(e.raw)
        if code:
            catalog.prices[code] = {
                "code": code,
                "product": e.text("product", required=False, default=code),
                "bundle": e.text("bundle", required=False),
                "currency": e.currency(),
                "model": model_name,
                "metric_code": metric,
                "amount": _opt_dec(terms.get("amount")),
                "unit_price": _opt_dec(terms.get("unit_price")),
                "package_size": int(Decimal(terms["package_size"]))
                if terms.get("package_size") is not None
                else None,
                "package_price": _opt_dec(terms.get("package_price")),
                "tiers": terms.get("tiers"),
            }
            if terms.get("package_size") is not None and Decimal(terms["package_size"]) != int(
                Decimal(terms["package_size"])
            ):
                e.fail("must be a whole number of units", "package_size")

    subscriptions = _list(data, "subscriptions", problems)
    _duplicates(
        "subscriptions",
        [s.get("id") if isinstance(s, dict) else None for s in subscriptions],
        problems,
    )
    for i, raw in enumerate(subscriptions):
        e = _Entry("subscriptions", i, raw, problems)
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
        sid = e.text("id")
        start = e.day("start")
        end = e.day("end", required=False)
        if start and end and end < start:
            e.fail(f"ends ({end}) before it starts ({start})", "end")
        items = _items(e, e.raw.get("items"), "items", 0, start, required=True)
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
            for key in sorted(set(phase) - {"start", "items"}):
                e.fail("unknown key (known: start, items)", f"{where}.{key}")
            pstart = _Entry("x", None, phase, []).day("start")
            if pstart is None:
                e.fail("must be a date (YYYY-MM-DD)", f"{where}.start")
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
        discounts = _discounts(e, e.raw.get("discounts"))
        if sid:
            catalog.subscriptions[sid] = {
                "id": sid,
                "customer_id": e.text("customer"),
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

    credits = _list(data, "credits", problems)
    _duplicates(
        "credits", [c.get("id") if isinstance(c, dict) else None for c in credits], problems
    )
    for i, raw in enumerate(credits):
        e = _Entry("credits", i, raw, problems)
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
        gid = e.text("id")
        effective = e.day("effective")
        expires = e.day("expires", required=False)
        if effective and expires and expires < effective:
            e.fail(f"expires ({expires}) before it is effective ({effective})", "expires")
        if gid:
            catalog.credits[gid] = {
                "id": gid,
                "customer_id": e.text("customer"),
                "subscription_id": e.text("subscription", required=False),
                "amount": e.decimal("amount", positive=True),
                "currency": e.currency(),
                "effective": effective,
                "expires": expires,
                "priority": e.integer("priority", 0, None, 100),
            }

    if problems:
        raise CatalogError(problems)
    return catalog


def _opt_dec(value: Any) -> Decimal | None:
    return None if value is None else Decimal(str(value))


def _items(
    e: _Entry, raw: Any, where: str, phase: int, phase_start: date | None, required: bool
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
        for key in sorted(set(item) - {"price", "timing", "pool"}):
            e.fail("unknown key (known: price, timing, pool)", f"{at}.{key}")
        price = item.get("price")
        if not price:
            e.fail("is required", f"{at}.price")
            continue
        if price in seen:
            e.fail(f"price {price} is listed twice in the same phase", f"{at}.price")
        seen.add(price)
        timing = item.get("timing", "in_arrears")
        if timing not in TIMINGS:
            e.fail(f"must be one of {', '.join(TIMINGS)}, got {timing!r}", f"{at}.timing")
        pool = item.get("pool")
        if pool is not None and pool not in POOL_MODES:
            e.fail(f"must be one of {', '.join(POOL_MODES)}, got {pool!r}", f"{at}.pool")
        out.append(
            {
                "phase": phase,
                "phase_start": phase_start,
                "price_code": str(price),
                "timing": timing,
                "pool": pool,
                "_where": at,
            }
        )
    return out


def _discounts(e: _Entry, raw: Any) -> list[dict]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        e.fail("must be a list", "discounts")
        return []
    out = []
    for j, item in enumerate(raw):
        sub = _Entry(f"{e.label}.discounts", j, item, e.problems, id_key="type")
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


# --- validation against the store, and the write -----------------------------------------


@dataclass
class ImportResult:
    """What an import changed, and which families' drafts it may have touched."""

    counts: dict[str, tuple[int, int]] = field(default_factory=dict)  # section -> (new, upd)
    affected_families: set[str] = field(default_factory=set)
    warnings: list[str] = field(default_factory=list)


def _rows(session: Session, model: Any) -> dict[str, dict]:
    table = model.__table__
    key = table.primary_key.columns.values()[0].name
    return {r[key]: dict(r) for r in session.execute(sa.select(table)).mappings()}


def _items_by_subscription(session: Session) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = defaultdict(list)
    table = SubscriptionItem.__table__
    for r in session.execute(sa.select(table).order_by(table.c.phase, table.c.id)).mappings():
        out[r["subscription_id"]].append(dict(r))
    return out


def import_catalog(session: Session, catalog: Catalog) -> ImportResult:
    """Validate the catalog merged with the store, then upsert it (the caller commits)."""
    old = {
        "customers": _rows(session, Customer),
        "metrics": _rows(session, Metric),
        "prices": _rows(session, Price),
        "subscriptions": _rows(session, Subscription),
        "credits": _rows(session, CreditGrant),
        "tax_rates": _rows(session, TaxRate),
    }
    old_items = _items_by_subscription(session)
    customers = {**old["customers"], **catalog.customers}
    metrics = {**old["metrics"], **catalog.metrics}
    prices = {**old["prices"], **catalog.prices}
    subscriptions = {**old["subscriptions"], **catalog.subscriptions}
    items = {**old_items, **catalog.items}

    problems: list[str] = []
    warnings: list[str] = []

    # Customers: parents exist, no cycles.
    for cid, row in catalog.customers.items():
        if row["parent_id"] is not None and row["parent_id"] not in customers:
            problems.append(f"customers ({cid}).parent: unknown customer {row['parent_id']!r}")
    hierarchy = Hierarchy(
        Node(
            c["id"],
            c["parent_id"] if c["parent_id"] in customers else None,
            c["bill_to"],
            c["currency"],
            c["name"],
        )
        for c in customers.values()
    )
    cycle = hierarchy.find_cycle()
    if cycle:
        problems.append(f"customers: parent cycle {' -> '.join(cycle)}")
        raise CatalogError(problems)

    # Metrics already measured keep their meaning.
    changed_metrics = [
        code
        for code, row in catalog.metrics.items()
        if code in old["metrics"]
        and (old["metrics"][code]["aggregation"], old["metrics"][code]["field"])
        != (row["aggregation"], row["field"])
    ]
    for code in changed_metrics:
        has_events = session.execute(
            sa.select(UsageEvent.event_id).where(UsageEvent.metric_code == code).limit(1)
        ).first()
        if has_events:
            problems.append(
                f"metrics ({code}): aggregation or field cannot change once usage is recorded "
                "(define a new metric instead)"
            )

    for code, row in catalog.prices.items():
        if row["metric_code"] is not None and row["metric_code"] not in metrics:
            problems.append(f"prices ({code}).metric: unknown metric {row['metric_code']!r}")

    # Subscriptions: references, currency, timing and pool rules.
    for sid, row in catalog.subscriptions.items():
        customer = customers.get(row["customer_id"])
        if customer is None:
            problems.append(
                f"subscriptions ({sid}).customer: unknown customer {row['customer_id']!r}"
            )
            continue
        codes = {i["price_code"] for i in items[sid]}
        for item in items[sid]:
            where = f"subscriptions ({sid}).{item['_where']}"
            price = prices.get(item["price_code"])
            if price is None:
                problems.append(f"{where}.price: unknown price {item['price_code']!r}")
                continue
            if price["currency"] != customer["currency"]:
                problems.append(
                    f"{where}.price: {item['price_code']} is in {price['currency']} but "
                    f"customer {customer['id']} pays in {customer['currency']} "
                    "(currency must match)"
                )
            usage = pricing.model(price["model"]).usage
            if item["timing"] == "in_advance" and usage:
                problems.append(
                    f"{where}.timing: usage cannot be billed in advance "
                    f"({item['price_code']} is {price['model']} on a metric)"
                )
            if item["pool"] is not None and not usage:
                problems.append(f"{where}.pool: only usage prices can be pooled")
        for d in row["discounts"] or []:
            if d.get("price") is not None and d["price"] not in codes:
                problems.append(
                    f"subscriptions ({sid}).discounts: price {d['price']!r} is not "
                    "an item of the subscription"
                )

    # No currency conversion: every roll-up and pool stays in one currency.
    for sid, row in subscriptions.items():
        if row["customer_id"] not in customers or sid not in items:
            continue
        rollup = (
            row["rollup"]
            if row["rollup"] is not None
            else hierarchy.default_rollup(row["customer_id"])
        )
        billed = hierarchy.billed_customer(row["customer_id"], rollup)
        serviced = customers[row["customer_id"]]
        if customers[billed]["currency"] != serviced["currency"]:
            problems.append(
                f"subscriptions ({sid}): rolls up from {serviced['id']} "
                f"({serviced['currency']}) to {billed} ({customers[billed]['currency']}); "
                "there is no currency conversion, so a roll-up must stay in one currency"
            )
        for item in items[sid]:
            if item["pool"] is None or item["price_code"] not in prices:
                continue
            for member in hierarchy.bills_through(row["customer_id"])[1:]:
                if customers[member]["currency"] != serviced["currency"]:
                    problems.append(
                        f"subscriptions ({sid}): pool on {item['price_code']} takes in "
                        f"{member} ({customers[member]['currency']}) but is billed in "
                        f"{serviced['currency']}; there is no currency conversion"
                    )

    for gid, row in catalog.credits.items():
        customer = customers.get(row["customer_id"])
        if customer is None:
            problems.append(f"credits ({gid}).customer: unknown customer {row['customer_id']!r}")
            continue
        if row["currency"] != customer["currency"]:
            problems.append(
                f"credits ({gid}).currency: {row['currency']} is not the currency "
                f"of {customer['id']} ({customer['currency']})"
            )
        scope = row["subscription_id"]
        if scope is not None:
            sub = subscriptions.get(scope)
            if sub is None:
                problems.append(f"credits ({gid}).subscription: unknown subscription {scope!r}")
            elif sub["customer_id"] != row["customer_id"]:
                problems.append(
                    f"credits ({gid}).subscription: {scope} belongs to "
                    f"{sub['customer_id']}, not to {row['customer_id']}"
                )

    if problems:
        raise CatalogError(problems)

    warnings += pool_warnings(hierarchy, subscriptions, items, prices)

    result = ImportResult(warnings=warnings)
    family = {cid: hierarchy.root(cid) for cid in customers}
    old_family = {cid: r["family_id"] for cid, r in old["customers"].items()}

    # Affected families: anything whose definition changed, before and after.
    def touch(*customer_ids: str | None) -> None:
        for cid in customer_ids:
            if cid is None:
                continue
            if cid in family:
                result.affected_families.add(family[cid])
            if cid in old_family:
                result.affected_families.add(old_family[cid])

    customer_rows = []
    for cid in _topological(hierarchy, catalog.customers):
        row = {k: v for k, v in catalog.customers[cid].items()}
        row["family_id"] = family[cid]
        customer_rows.append(row)
        before = old["customers"].get(cid)
        if before != row:
            touch(cid, before["parent_id"] if before else None, row["parent_id"])
    # Families move when a root is re-parented: refresh every customer's family id.
    moved = [
        {"id": cid, "family_id": family[cid]}
        for cid, r in old["customers"].items()
        if r["family_id"] != family[cid] and cid not in catalog.customers
    ]
    for row in moved:
        touch(row["id"])

    sub_rows = list(catalog.subscriptions.values())
    for row in sub_rows:
        before = old["subscriptions"].get(row["id"])
        before_items = [_item_key(i) for i in old_items.get(row["id"], [])]
        if before != row or before_items != [_item_key(i) for i in catalog.items[row["id"]]]:
            touch(row["customer_id"], before["customer_id"] if before else None)
    using: dict[str, set[str]] = defaultdict(set)
    for sid, sub_items in items.items():
        for item in sub_items:
            if sid in subscriptions:
                using[item["price_code"]].add(subscriptions[sid]["customer_id"])
    for code, row in catalog.prices.items():
        if old["prices"].get(code) != row:
            touch(*using[code])
    for gid, row in catalog.credits.items():
        before = old["credits"].get(gid)
        if before != row:
            touch(row["customer_id"], before["customer_id"] if before else None)
    for jurisdiction, row in catalog.tax_rates.items():
        if old["tax_rates"].get(jurisdiction) != row:
            touch(*[cid for cid, c in customers.items()])

    def count(section: str, keys) -> tuple[int, int]:
        new = sum(1 for k in keys if k not in old[section])
        return new, len(keys) - new

    if catalog.issuer:
        upsert(session, Issuer, [catalog.issuer], ["id"])
        result.counts["issuer"] = (1, 0)
    upsert(session, TaxRate, list(catalog.tax_rates.values()), ["jurisdiction"])
    result.counts["tax_rates"] = count("tax_rates", catalog.tax_rates)
    upsert(session, Customer, customer_rows, ["id"])
    for row in moved:
        session.execute(
            sa.update(Customer.__table__)
            .where(Customer.__table__.c.id == row["id"])
            .values(family_id=row["family_id"])
        )
    result.counts["customers"] = count("customers", catalog.customers)
    upsert(session, Metric, list(catalog.metrics.values()), ["code"])
    result.counts["metrics"] = count("metrics", catalog.metrics)
    upsert(session, Price, list(catalog.prices.values()), ["code"])
    result.counts["prices"] = count("prices", catalog.prices)
    upsert(session, Subscription, sub_rows, ["id"])
    delete_in(session, SubscriptionItem.__table__.c.subscription_id, list(catalog.items))
    insert_rows(
        session,
        SubscriptionItem,
        [
            {"subscription_id": sid, **{k: v for k, v in item.items() if not k.startswith("_")}}
            for sid, sub_items in catalog.items.items()
            for item in sub_items
        ],
    )
    result.counts["subscriptions"] = count("subscriptions", catalog.subscriptions)
    upsert(session, CreditGrant, list(catalog.credits.values()), ["id"])
    result.counts["credits"] = count("credits", catalog.credits)
    return result


def _item_key(item: dict) -> tuple:
    return (item["phase"], item["phase_start"], item["price_code"], item["timing"], item["pool"])


def _topological(hierarchy: Hierarchy, ids: dict[str, dict]) -> list[str]:
    """Customers in an order where parents come before their children."""
    depth = {cid: len(hierarchy.ancestors(cid)) for cid in ids}
    return sorted(ids, key=lambda cid: (depth[cid], cid))


def pool_warnings(
    hierarchy: Hierarchy,
    subscriptions: dict[str, dict],
    items: dict[str, list[dict]],
    prices: dict[str, dict],
) -> list[str]:
    """Descendants left out of a pool because they have their own price on its metric."""
    own_metrics: dict[str, set[str]] = defaultdict(set)
    for sid, sub in subscriptions.items():
        if sub["status"] == "draft":
            continue
        for item in items.get(sid, []):
            price = prices.get(item["price_code"])
            if price and price["metric_code"]:
                own_metrics[sub["customer_id"]].add(price["metric_code"])
    out = []
    for sid, sub in sorted(subscriptions.items()):
        if sub["status"] == "draft" or sub["customer_id"] not in hierarchy.nodes:
            continue
        for item in items.get(sid, []):
            price = prices.get(item["price_code"])
            if item["pool"] is None or price is None:
                continue
            for member in hierarchy.bills_through(sub["customer_id"])[1:]:
                if price["metric_code"] in own_metrics[member]:
                    out.append(
                        f"pool {sid}/{item['price_code']}: {member} has its own price on "
                        f"metric {price['metric_code']}, so it is rated on its own and left "
                        "out of the pool (billing it in both would double-bill)"
                    )
    return out
