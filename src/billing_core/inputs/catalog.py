"""Catalog files: parse, validate whole against the store, then upsert by id.

A catalog is YAML or JSON with the keys `issuer`, `tax_rates`, `customers`, `metrics`,
`prices`, `subscriptions` and `credits`. Nothing is written unless every entry of the
file, merged with what the store already holds, is valid.
"""

from __future__ import annotations

import functools
import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import sqlalchemy as sa
from sqlmodel import Session

from billing_core.domain import pricing
from billing_core.domain.hierarchy import Hierarchy, Node
from billing_core.domain.limits import FIRST_DAY, LAST_DAY, TEXT_BYTES
from billing_core.domain.money import MINOR_UNITS, MoneyError, parse_decimal, shown
from billing_core.domain.schedules import CADENCE_MONTHS
from billing_core.inputs.catalog_files import FileRefused, load_data
from billing_core.store.aggregations import AGGREGATIONS
from billing_core.store.models import (
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
from billing_core.store.rows import delete_in, insert_rows, upsert

SECTIONS = ("issuer", "tax_rates", "customers", "metrics", "prices", "subscriptions", "credits")
ID_KEYS = {
    "issuer": "name",
    "tax_rates": "jurisdiction",
    "customers": "id",
    "metrics": "code",
    "prices": "code",
    "subscriptions": "id",
    "credits": "id",
}
POOL_MODES = ("breakdown", "summary", "child")
TIMINGS = ("in_advance", "in_arrears")

# What the calendar and the store hold (SPEC §10).
MAX_INT = 2_147_483_647  # an INTEGER column on PostgreSQL
_ISO_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
_NOT_STORABLE = re.compile("[\x00\ud800-\udfff]")


@functools.cache
def _length(model: Any, column: str) -> int | None:
    """The most characters a column holds (VARCHAR(n) on PostgreSQL), or None."""
    return getattr(model.__table__.c[column].type, "length", None)


class CatalogError(ValueError):
    """A catalog refused whole: one problem per entry and field, each on one line."""

    def __init__(self, problems: list[str]):
        problems = [_one_line(p) for p in problems]
        super().__init__("; ".join(problems))
        self.problems = problems


def _one_line(text: str) -> str:
    """Text fit for one line of a terminal: line breaks, escape codes and bytes that were
    not UTF-8 are written as escapes."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def text_problem(value: str) -> str | None:
    """Why the store cannot hold a text value, or None."""
    if len(value) <= TEXT_BYTES // 4 and value.isprintable():
        return None  # the common case, quickly: no NUL, no surrogate, short enough
    bad = _NOT_STORABLE.search(value)
    if bad is not None:
        at = f"character {bad.start() + 1}"
        if bad.group() == "\x00":
            return f"holds a NUL character ({at}), which the store cannot hold"
        return f"is not UTF-8 text ({at})"
    if len(value) * 4 > TEXT_BYTES and len(value.encode("utf-8")) > TEXT_BYTES:
        return f"is longer than 64 KiB ({len(value.encode('utf-8'))} bytes)"
    return None


# --- reading files ---------------------------------------------------------------------


def load_file(path: Path) -> dict:
    """A catalog file's content: JSON by extension, YAML otherwise. What cannot be read
    safely (aliases, nesting deeper than 32 levels, not UTF-8 as a whole) is refused."""
    try:
        data = load_data(path)
    except FileRefused as refused:
        raise CatalogError(refused.problems) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise CatalogError(["a catalog must be a mapping with the keys " + ", ".join(SECTIONS)])
    return data


# --- validation of single entries --------------------------------------------------------


def _key(value: Any) -> str | None:
    """An entry's id as its label shows it: only clean text of a sensible length."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, int) and not isinstance(value, bool):
        text = str(value)
    else:
        return None
    if len(text) > 128 or text_problem(text) is not None:
        return None
    return text


def _label(section: str, index: int | None, raw: Any) -> str:
    key = _key(raw.get(ID_KEYS[section])) if isinstance(raw, dict) else None
    where = section if index is None else f"{section}[{index}]"
    return f"{where} ({key})" if key is not None else where


def _sorted_keys(keys: Any) -> list:
    return sorted(keys, key=lambda k: (not isinstance(k, str), str(k)))


class _Entry:
    """Reads the fields of one catalog entry, collecting problems with their location."""

    def __init__(
        self,
        section: str,
        index: int | None,
        raw: Any,
        problems: list[str],
        label: str | None = None,
    ):
        self.raw = raw if isinstance(raw, dict) else {}
        self.label = label or _label(section, index, raw)
        self.problems = problems
        if not isinstance(raw, dict):
            self.fail("must be a mapping")

    def fail(self, message: str, name: str | None = None) -> None:
        self.problems.append(f"{self.label}{'.' + name if name else ''}: {message}")

    def known(self, *names: str) -> None:
        for name in _sorted_keys(set(self.raw) - set(names)):
            self.fail(f"unknown key (known: {', '.join(names)})", _shown_key(name))

    def text(
        self,
        name: str,
        required: bool = True,
        default: str | None = None,
        max_length: int | None = None,
    ) -> str | None:
        value = self.raw.get(name)
        if (
            value.__class__ is str
            and value
            and len(value) <= (max_length or TEXT_BYTES // 4)
            and value.isprintable()
        ):
            return value  # the common case, quickly
        return self.text_of(value, name, required, default, max_length)

    def text_of(
        self,
        value: Any,
        name: str,
        required: bool = True,
        default: str | None = None,
        max_length: int | None = None,
    ) -> str | None:
        if value is None or value == "":
            if required:
                self.fail("is required", name)
            return default
        if isinstance(value, bool) or not isinstance(value, str | int):
            self.fail(f"must be text, got {shown(value)}", name)
            return default
        text = str(value)
        problem = text_problem(text)
        if problem is None and max_length is not None and len(text) > max_length:
            problem = f"must be at most {max_length} characters"
        if problem is not None:
            self.fail(problem, name)
            return default
        return text

    def choice(self, name: str, choices: tuple[str, ...], default: str | None) -> str | None:
        value = self.text(name, required=default is None, default=default)
        if value is not None and value not in choices:
            self.fail(f"must be one of {', '.join(choices)}, got {shown(value)}", name)
        return value

    def boolean(self, name: str, default: bool | None) -> bool | None:
        value = self.raw.get(name)
        if value is None:  # left out, or written as null: the default
            return default
        if not isinstance(value, bool):
            self.fail(f"must be true or false, got {shown(value)}", name)
            return default
        return value

    def integer(self, name: str, lo: int, hi: int, default: int | None) -> int | None:
        value = self.raw.get(name)
        if value is None:  # left out, or written as null: the default
            return default
        number = None
        if isinstance(value, Decimal | str) or (
            isinstance(value, int) and not isinstance(value, bool)
        ):
            try:
                number = Decimal(value.strip() if isinstance(value, str) else value)
            except InvalidOperation:
                number = None
        if number is None or not number.is_finite() or number != number.to_integral_value():
            self.fail(f"must be a whole number, got {shown(value)}", name)
            return default
        if number < lo or number > hi:
            self.fail(f"must be between {lo} and {hi}", name)
            return default
        return int(number)

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
        return self.day_of(self.raw.get(name), name, required)

    def day_of(self, value: Any, name: str, required: bool = True) -> date | None:
        if value is None:
            if required:
                self.fail("is required", name)
            return None
        day = None
        if isinstance(value, date) and not isinstance(value, datetime):
            day = value
        elif isinstance(value, str) and _ISO_DAY.fullmatch(value):
            try:
                day = date.fromisoformat(value)
            except ValueError:
                day = None
        if day is None:
            self.fail(f"must be a date (YYYY-MM-DD), got {shown(value)}", name)
            return None
        if not FIRST_DAY <= day <= LAST_DAY:
            self.fail(f"must be between {FIRST_DAY} and {LAST_DAY}, got {day}", name)
            return None
        return day

    def currency(self, name: str = "currency") -> str | None:
        value = self.text(name)
        if value is not None and value not in MINOR_UNITS:
            self.fail(f"unknown currency code {shown(value)} (ISO 4217)", name)
            return None
        return value


def _shown_key(name: Any) -> str:
    """A key of the file as a location names it (cut if long)."""
    text = name if isinstance(name, str) else repr(name)
    return text if len(text) <= 60 else text[:59] + "…"


def _list(data: dict, section: str, problems: list[str]) -> list:
    value = data.get(section) or []
    if not isinstance(value, list):
        problems.append(f"{section}: must be a list")
        return []
    return value


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
        shown_key = _key(key)
        return f"{section} ({shown_key if shown_key is not None else '?'}, in the store)"


def parse(data: dict) -> Catalog:
    """Validate each entry on its own. Problems are kept in `catalog.problems` (every one
    found) for `import_catalog` to report with those against the store."""
    problems: list[str] = []
    catalog = Catalog(problems=problems)
    for key in _sorted_keys(set(data) - set(SECTIONS)):
        problems.append(f"{_shown_key(key)}: unknown section (known: {', '.join(SECTIONS)})")

    def entries(section: str) -> Iterator[_Entry]:
        """The section's entries, each labelled `section[i] (id)`; an id listed twice
        is a problem."""
        seen: set[str] = set()
        for i, raw in enumerate(_list(data, section, problems)):
            key = _key(raw.get(ID_KEYS[section])) if isinstance(raw, dict) else None
            if key is None:
                yield _Entry(section, i, raw, problems, label=f"{section}[{i}]")
                continue
            label = f"{section}[{i}] ({key})"
            if key in seen:
                problems.append(f"{label}: listed twice in the file")
            seen.add(key)
            catalog.labels[(section, key)] = label
            yield _Entry(section, i, raw, problems, label=label)

    if data.get("issuer") is not None:
        e = _Entry("issuer", None, data["issuer"], problems)
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
            max_length=_length(Issuer, "invoice_prefix"),
        )
        if prefix is not None and not prefix.replace("-", "").replace("_", "").isalnum():
            e.fail("may hold letters, digits, - and _ only", "invoice_prefix")
        catalog.issuer = {
            "id": "default",
            "name": e.text("name"),
            "invoice_prefix": prefix,
            "address": address,
        }

    for e in entries("tax_rates"):
        e.known("jurisdiction", "rate")
        jurisdiction = e.text("jurisdiction", max_length=_length(TaxRate, "jurisdiction"))
        rate = e.decimal("rate", at_most=Decimal(1))
        if jurisdiction:
            catalog.tax_rates[jurisdiction] = {"jurisdiction": jurisdiction, "rate": rate}

    for e in entries("customers"):
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
        cid = e.text("id", max_length=_length(Customer, "id"))
        timezone = e.text(
            "timezone", required=False, default="UTC", max_length=_length(Customer, "timezone")
        )
        try:
            ZoneInfo(timezone or "UTC")
        except (ZoneInfoNotFoundError, ValueError, OSError):
            e.fail(f"unknown time zone {shown(timezone)}", "timezone")
        parent = e.text("parent", required=False, max_length=_length(Customer, "parent_id"))
        if parent is not None and parent == cid:
            e.fail("a customer cannot be its own parent (cycle)", "parent")
        row = {
            "id": cid,
            "name": e.text("name"),
            "currency": e.currency(),
            "timezone": timezone,
            "jurisdiction": e.text(
                "jurisdiction", required=False, max_length=_length(Customer, "jurisdiction")
            ),
            "parent_id": parent,
            "bill_to": e.choice("bill_to", ("parent", "self"), "parent" if parent else "self"),
            "billing_day": e.integer("billing_day", 1, 31, None),
            "tax_basis": e.choice("tax_basis", ("billed", "serviced"), "billed"),
            "rollup_lines": e.choice("rollup_lines", ("breakdown", "summary"), "breakdown"),
        }
        if cid:
            catalog.customers[cid] = row

    for e in entries("metrics"):
        e.known("code", "name", "aggregation", "field")
        code = e.text("code", max_length=_length(Metric, "code"))
        aggregation = e.choice("aggregation", AGGREGATIONS, None)
        metric_field = e.text("field", required=False, max_length=_length(Metric, "field"))
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

    for e in entries("prices"):
        code = e.text("code", max_length=_length(Price, "code"))
        model_name = e.text("model")
        try:
            price_model = pricing.model(model_name) if model_name else None
        except pricing.UnknownModel as err:
            e.fail(_one_line(str(err)) if len(str(err)) < 200 else "unknown price model", "model")
            price_model = None
        base = ("code", "product", "bundle", "currency", "model", "metric")
        e.known(
            *base,
            *(price_model.fields if price_model else ()),
            *(("tiers",) if model_name in ("graduated", "volume") else ()),
        )
        metric = e.text("metric", required=False, max_length=_length(Price, "metric_code"))
        terms: dict[str, Any] = {}
        if price_model is not None:
            if price_model.usage and metric is None:
                e.fail(f"a {model_name} price rates usage: it needs a metric", "metric")
            if not price_model.usage and metric is not None:
                e.fail("a flat price rates no usage: remove the metric", "metric")
            term_problems = price_model.validate(e.raw)
            for problem in term_problems:
                named = next((f for f in price_model.fields if problem.startswith(f + " ")), None)
                if named is not None:
                    e.fail(problem.removeprefix(named + " "), named)
                else:
                    e.fail(problem, "tiers" if problem.startswith("tier") else None)
            if not term_problems:
                terms = price_model.normalize(e.raw)
        size = _opt_dec(terms.get("package_size"))
        if size is not None and size != size.to_integral_value():
            e.fail("must be a whole number of units", "package_size")
            size = None
        elif size is not None and size > MAX_INT:
            e.fail(f"must be at most {MAX_INT}", "package_size")
            size = None
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
                "package_size": int(size) if size is not None else None,
                "package_price": _opt_dec(terms.get("package_price")),
                "tiers": terms.get("tiers"),
            }

    for e in entries("subscriptions"):
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
        sid = e.text("id", max_length=_length(Subscription, "id"))
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
            for key in _sorted_keys(set(phase) - {"start", "items"}):
                e.fail("unknown key (known: start, items)", f"{where}.{_shown_key(key)}")
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
        discounts = _discounts(e, e.raw.get("discounts"))
        customer = e.text("customer", max_length=_length(Subscription, "customer_id"))
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

    for e in entries("credits"):
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
        gid = e.text("id", max_length=_length(CreditGrant, "id"))
        effective = e.day("effective")
        expires = e.day("expires", required=False)
        if effective and expires and expires < effective:
            e.fail(f"expires ({expires}) before it is effective ({effective})", "expires")
        row = {
            "id": gid,
            "customer_id": e.text("customer", max_length=_length(CreditGrant, "customer_id")),
            "subscription_id": e.text(
                "subscription", required=False, max_length=_length(CreditGrant, "subscription_id")
            ),
            "amount": e.decimal("amount", positive=True),
            "currency": e.currency(),
            "effective": effective,
            "expires": expires,
            "priority": e.integer("priority", 0, MAX_INT, 100),
        }
        if gid:
            catalog.credits[gid] = row

    return catalog


def _opt_dec(value: Any) -> Decimal | None:
    return None if value is None else parse_decimal(value, "value")


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
        for key in _sorted_keys(set(item) - {"price", "timing", "pool"}):
            e.fail("unknown key (known: price, timing, pool)", f"{at}.{_shown_key(key)}")
        price = e.text_of(
            item.get("price"), f"{at}.price", max_length=_length(SubscriptionItem, "price_code")
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


def _discounts(e: _Entry, raw: Any) -> list[dict]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        e.fail("must be a list", "discounts")
        return []
    out = []
    for j, item in enumerate(raw):
        sub = _Entry("discounts", j, item, e.problems, label=f"{e.label}.discounts[{j}]")
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
    """Validate the catalog merged with the store, then upsert it (the caller commits).

    Every problem is reported at once: those of single entries (`parse`) and those
    against the other entries and the store. Nothing is written if there is any."""
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
    at = catalog.label

    problems: list[str] = list(catalog.problems)
    warnings: list[str] = []

    # Customers: parents exist, no cycles.
    for cid, row in catalog.customers.items():
        if row["parent_id"] is not None and row["parent_id"] not in customers:
            problems.append(
                f"{at('customers', cid)}.parent: unknown customer {shown(row['parent_id'])}"
            )
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
    cycles = hierarchy.find_cycles()
    for cycle in cycles:
        # A cycle always takes in a customer of the file (the store holds none): name it.
        blamed = next((c for c in cycle if c in catalog.customers), cycle[0])
        path = cycle if len(cycle) <= 12 else [*cycle[:10], f"… ({len(cycle) - 1} customers)"]
        problems.append(f"{at('customers', blamed)}.parent: parent cycle {' -> '.join(path)}")

    # Metrics already measured keep their meaning.
    changed_metrics = [
        code
        for code, row in catalog.metrics.items()
        if code in old["metrics"]
        and row["aggregation"] is not None
        and (old["metrics"][code]["aggregation"], old["metrics"][code]["field"])
        != (row["aggregation"], row["field"])
    ]
    for code in changed_metrics:
        has_events = session.execute(
            sa.select(UsageEvent.event_id).where(UsageEvent.metric_code == code).limit(1)
        ).first()
        if has_events:
            problems.append(
                f"{at('metrics', code)}.aggregation: aggregation or field cannot change once "
                "usage is recorded (define a new metric instead)"
            )

    for code, row in catalog.prices.items():
        if row["metric_code"] is not None and row["metric_code"] not in metrics:
            problems.append(
                f"{at('prices', code)}.metric: unknown metric {shown(row['metric_code'])}"
            )

    # Subscriptions: references, currency, timing and pool rules.
    for sid, row in catalog.subscriptions.items():
        if row["customer_id"] is None:
            continue  # reported with the entry
        customer = customers.get(row["customer_id"])
        if customer is None:
            problems.append(
                f"{at('subscriptions', sid)}.customer: unknown customer {shown(row['customer_id'])}"
            )
            continue
        codes = {i["price_code"] for i in items[sid]}
        for item in items[sid]:
            where = f"{at('subscriptions', sid)}.{item['_where']}"
            price = prices.get(item["price_code"])
            if price is None:
                problems.append(f"{where}.price: unknown price {shown(item['price_code'])}")
                continue
            if None not in (price["currency"], customer["currency"]) and (
                price["currency"] != customer["currency"]
            ):
                problems.append(
                    f"{where}.price: {item['price_code']} is in {price['currency']} but "
                    f"customer {customer['id']} pays in {customer['currency']} "
                    "(currency must match)"
                )
            model = pricing.MODELS.get(price["model"])
            if model is None:
                continue  # reported with the price
            if item["timing"] == "in_advance" and model.usage:
                problems.append(
                    f"{where}.timing: usage cannot be billed in advance "
                    f"({item['price_code']} is {price['model']} on a metric)"
                )
            if item["pool"] is not None and not model.usage:
                problems.append(f"{where}.pool: only usage prices can be pooled")
        for j, d in enumerate(row["discounts"] or []):
            if d.get("price") is not None and d["price"] not in codes:
                problems.append(
                    f"{at('subscriptions', sid)}.discounts[{j}].price: price "
                    f"{shown(d['price'])} is not an item of the subscription"
                )

    # No currency conversion: every roll-up and pool stays in one currency. These need
    # a tree: with a parent cycle they wait until it is fixed.
    if not cycles:
        currencies_below = (
            hierarchy.below_in_pools(lambda cid: [customers[cid]["currency"]], keep=3)
            if any(i["pool"] is not None for sub_items in items.values() for i in sub_items)
            else {}
        )
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
            currency = serviced["currency"]
            if currency is not None and customers[billed]["currency"] not in (None, currency):
                problems.append(
                    f"{at('subscriptions', sid)}.rollup: rolls up from {serviced['id']} "
                    f"({currency}) to {billed} ({customers[billed]['currency']}); "
                    "there is no currency conversion, so a roll-up must stay in one currency"
                )
            for item in items[sid]:
                if item["pool"] is None or item["price_code"] not in prices:
                    continue
                others = [
                    (members, count, other)
                    for other, (members, count) in currencies_below[row["customer_id"]].items()
                    if other not in (None, currency)
                ]
                for members, count, other in others:
                    more = f" and {count - len(members)} more" if count > len(members) else ""
                    where = item.get("_where", f"items ({item['price_code']})")
                    problems.append(
                        f"{at('subscriptions', sid)}.{where}.pool: pool on "
                        f"{item['price_code']} takes in {', '.join(members)}{more} ({other}) "
                        f"but is billed in {currency}; there is no currency conversion"
                    )

    for gid, row in catalog.credits.items():
        if row["customer_id"] is None:
            continue  # reported with the entry
        customer = customers.get(row["customer_id"])
        if customer is None:
            problems.append(
                f"{at('credits', gid)}.customer: unknown customer {shown(row['customer_id'])}"
            )
            continue
        if None not in (row["currency"], customer["currency"]) and (
            row["currency"] != customer["currency"]
        ):
            problems.append(
                f"{at('credits', gid)}.currency: {row['currency']} is not the currency "
                f"of {customer['id']} ({customer['currency']})"
            )
        scope = row["subscription_id"]
        if scope is not None:
            sub = subscriptions.get(scope)
            if sub is None:
                problems.append(
                    f"{at('credits', gid)}.subscription: unknown subscription {shown(scope)}"
                )
            elif sub["customer_id"] != row["customer_id"]:
                problems.append(
                    f"{at('credits', gid)}.subscription: {scope} belongs to "
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
    return sorted(ids, key=lambda cid: (hierarchy.depth(cid), cid))


def pool_warnings(
    hierarchy: Hierarchy,
    subscriptions: dict[str, dict],
    items: dict[str, list[dict]],
    prices: dict[str, dict],
) -> list[str]:
    """Descendants left out of a pool because they have their own price on its metric
    (ten named per pool, then how many more)."""
    own_metrics: dict[str, set[str]] = defaultdict(set)
    pooled = False
    for sid, sub in subscriptions.items():
        if sub["status"] == "draft":
            continue
        for item in items.get(sid, []):
            price = prices.get(item["price_code"])
            if price and price["metric_code"]:
                own_metrics[sub["customer_id"]].add(price["metric_code"])
            pooled = pooled or item["pool"] is not None
    if not pooled:
        return []
    below = hierarchy.below_in_pools(lambda cid: own_metrics.get(cid, ()), keep=10)
    out = []
    for sid, sub in sorted(subscriptions.items()):
        if sub["status"] == "draft" or sub["customer_id"] not in hierarchy.nodes:
            continue
        for item in items.get(sid, []):
            price = prices.get(item["price_code"])
            if item["pool"] is None or price is None:
                continue
            members, count = below[sub["customer_id"]].get(price["metric_code"], ([], 0))
            for member in members:
                out.append(
                    f"pool {sid}/{item['price_code']}: {member} has its own price on "
                    f"metric {price['metric_code']}, so it is rated on its own and left "
                    "out of the pool (billing it in both would double-bill)"
                )
            if count > len(members):
                out.append(
                    f"pool {sid}/{item['price_code']}: and {count - len(members)} more "
                    f"customers with their own price on metric {price['metric_code']}, "
                    "left out of the pool likewise"
                )
    return out
