"""A parsed catalog checked against its other entries and the store: references, cycles,
currencies, pools. Every problem is reported at once; nothing here writes.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from billing_core.domain import pricing
from billing_core.domain.hierarchy import Hierarchy, Node
from billing_core.domain.money import shown
from billing_core.domain.planning import rollup_of
from billing_core.inputs.catalog_entry import CatalogError
from billing_core.inputs.catalog_parse import Catalog
from billing_core.store.models import (
    Charge,
    CreditGrant,
    Customer,
    Invoice,
    Metric,
    Price,
    Subscription,
    SubscriptionItem,
    TaxRate,
    UsageEvent,
)


@dataclass
class Merged:
    """The catalog merged with what the store holds, as the checks and the write read it."""

    old: dict[str, dict[str, dict]]  # section -> id -> the store's row
    old_items: dict[str, list[dict]]
    customers: dict[str, dict]
    metrics: dict[str, dict]
    prices: dict[str, dict]
    subscriptions: dict[str, dict]
    items: dict[str, list[dict]]
    hierarchy: Hierarchy
    cycles: list[list[str]]


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


def merge(session: Session, catalog: Catalog) -> Merged:
    """The store's catalog with the file's entries over it, and the customers' tree."""
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
    return Merged(
        old=old,
        old_items=old_items,
        customers=customers,
        metrics={**old["metrics"], **catalog.metrics},
        prices={**old["prices"], **catalog.prices},
        subscriptions={**old["subscriptions"], **catalog.subscriptions},
        items={**old_items, **catalog.items},
        hierarchy=hierarchy,
        cycles=hierarchy.find_cycles(),
    )


def check(session: Session, catalog: Catalog) -> Merged:
    """The catalog merged with the store; refused (CatalogError) with every problem of
    its entries and against the store if there is any."""
    merged = merge(session, catalog)
    problems: list[str] = list(catalog.problems)
    _customers(catalog, merged, problems)
    _currencies_kept(session, catalog, merged, problems)
    _metrics(session, catalog, merged, problems)
    _prices(catalog, merged, problems)
    _subscriptions(catalog, merged, problems)
    # These need a tree: with a parent cycle they wait until it is fixed.
    if not merged.cycles:
        _one_currency(catalog, merged, problems)
    _credits(catalog, merged, problems)
    if problems:
        raise CatalogError(problems)
    return merged


def _customers(catalog: Catalog, m: Merged, problems: list[str]) -> None:
    """Parents exist, no cycles."""
    at = catalog.label
    for cid, row in catalog.customers.items():
        if row["parent_id"] is not None and row["parent_id"] not in m.customers:
            problems.append(
                f"{at('customers', cid)}.parent: unknown customer {shown(row['parent_id'])}"
            )
    for cycle in m.cycles:
        # A cycle always takes in a customer of the file (the store holds none): name it.
        blamed = next((c for c in cycle if c in catalog.customers), cycle[0])
        path = cycle if len(cycle) <= 12 else [*cycle[:10], f"… ({len(cycle) - 1} customers)"]
        problems.append(f"{at('customers', blamed)}.parent: parent cycle {' -> '.join(path)}")


def _currencies_kept(session: Session, catalog: Catalog, m: Merged, problems: list[str]) -> None:
    """A customer with charges or invoices keeps its currency: they are in it, and there is
    no conversion (the next close would stop on a roll-up in two currencies)."""
    for cid, row in catalog.customers.items():
        before = m.old["customers"].get(cid)
        if before is None or row["currency"] in (None, before["currency"]):
            continue
        charges = session.execute(
            sa.select(sa.func.count())
            .select_from(Charge)
            .where(sa.or_(Charge.serviced_customer_id == cid, Charge.billed_customer_id == cid))
        ).scalar_one()
        invoices = session.execute(
            sa.select(sa.func.count()).select_from(Invoice).where(Invoice.billed_customer_id == cid)
        ).scalar_one()
        if charges or invoices:
            old, new = before["currency"], row["currency"]
            problems.append(
                f"{catalog.label('customers', cid)}.currency: cannot change from {old} to "
                f"{new}: {cid} already has {charges} charge(s) and {invoices} invoice(s) in "
                f"{old}, and there is no currency conversion (bill {new} to a new customer)"
            )


def _metrics(session: Session, catalog: Catalog, m: Merged, problems: list[str]) -> None:
    """Metrics already measured keep their meaning."""
    old = m.old["metrics"]
    changed_metrics = [
        code
        for code, row in catalog.metrics.items()
        if code in old
        and row["aggregation"] is not None
        and (old[code]["aggregation"], old[code]["field"]) != (row["aggregation"], row["field"])
    ]
    for code in changed_metrics:
        has_events = session.execute(
            sa.select(UsageEvent.event_id).where(UsageEvent.metric_code == code).limit(1)
        ).first()
        if has_events:
            problems.append(
                f"{catalog.label('metrics', code)}.aggregation: aggregation or field cannot "
                "change once usage is recorded (define a new metric instead)"
            )


def _prices(catalog: Catalog, m: Merged, problems: list[str]) -> None:
    for code, row in catalog.prices.items():
        if row["metric_code"] is not None and row["metric_code"] not in m.metrics:
            problems.append(
                f"{catalog.label('prices', code)}.metric: unknown metric "
                f"{shown(row['metric_code'])}"
            )


def _subscriptions(catalog: Catalog, m: Merged, problems: list[str]) -> None:
    """References, currency, timing and pool rules."""
    at = catalog.label
    for sid, row in catalog.subscriptions.items():
        if row["customer_id"] is None:
            continue  # reported with the entry
        customer = m.customers.get(row["customer_id"])
        if customer is None:
            problems.append(
                f"{at('subscriptions', sid)}.customer: unknown customer {shown(row['customer_id'])}"
            )
            continue
        for item in m.items[sid]:
            _item(f"{at('subscriptions', sid)}.{item['_where']}", item, customer, m, problems)
        codes = {i["price_code"] for i in m.items[sid]}
        for j, d in enumerate(row["discounts"] or []):
            if d.get("price") is not None and d["price"] not in codes:
                problems.append(
                    f"{at('subscriptions', sid)}.discounts[{j}].price: price "
                    f"{shown(d['price'])} is not an item of the subscription"
                )


def _item(where: str, item: dict, customer: dict, m: Merged, problems: list[str]) -> None:
    price = m.prices.get(item["price_code"])
    if price is None:
        problems.append(f"{where}.price: unknown price {shown(item['price_code'])}")
        return
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
        return  # reported with the price
    if item["timing"] == "in_advance" and model.usage:
        problems.append(
            f"{where}.timing: usage cannot be billed in advance "
            f"({item['price_code']} is {price['model']} on a metric)"
        )
    if item["pool"] is not None and not model.usage:
        problems.append(f"{where}.pool: only usage prices can be pooled")


def _one_currency(catalog: Catalog, m: Merged, problems: list[str]) -> None:
    """No currency conversion: every roll-up and pool stays in one currency."""
    at, customers, hierarchy = catalog.label, m.customers, m.hierarchy
    currencies_below = (
        hierarchy.below_in_pools(lambda cid: [customers[cid]["currency"]], keep=3)
        if any(i["pool"] is not None for sub_items in m.items.values() for i in sub_items)
        else {}
    )
    for sid, row in m.subscriptions.items():
        if row["customer_id"] not in customers or sid not in m.items:
            continue
        billed = hierarchy.billed_customer(
            row["customer_id"], rollup_of(row["rollup"], row["customer_id"], hierarchy)
        )
        serviced = customers[row["customer_id"]]
        currency = serviced["currency"]
        if currency is not None and customers[billed]["currency"] not in (None, currency):
            problems.append(
                f"{at('subscriptions', sid)}.rollup: rolls up from {serviced['id']} "
                f"({currency}) to {billed} ({customers[billed]['currency']}); "
                "there is no currency conversion, so a roll-up must stay in one currency"
            )
        for item in m.items[sid]:
            if item["pool"] is None or item["price_code"] not in m.prices:
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


def _credits(catalog: Catalog, m: Merged, problems: list[str]) -> None:
    at = catalog.label
    for gid, row in catalog.credits.items():
        if row["customer_id"] is None:
            continue  # reported with the entry
        customer = m.customers.get(row["customer_id"])
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
        if scope is None:
            continue
        sub = m.subscriptions.get(scope)
        if sub is None:
            problems.append(
                f"{at('credits', gid)}.subscription: unknown subscription {shown(scope)}"
            )
        elif sub["customer_id"] != row["customer_id"]:
            problems.append(
                f"{at('credits', gid)}.subscription: {scope} belongs to "
                f"{sub['customer_id']}, not to {row['customer_id']}"
            )


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
