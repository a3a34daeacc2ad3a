"""A checked catalog written to the store: upserts by id, and the families whose drafts the
change may touch."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

import sqlalchemy as sa
from sqlmodel import Session

from billing_core.domain.hierarchy import Hierarchy
from billing_core.inputs.catalog_check import Merged
from billing_core.inputs.catalog_parse import Catalog
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
from billing_core.store.rows import delete_in, insert_rows, upsert


@dataclass
class ImportResult:
    """What an import changed, and which families' drafts it may have touched."""

    counts: dict[str, tuple[int, int]] = field(default_factory=dict)  # section -> (new, upd)
    affected_families: set[str] = field(default_factory=set)
    warnings: list[str] = field(default_factory=list)


@dataclass
class _Changes:
    """The customer rows to write, the families moved under customers not in the file,
    and every family whose definition changed, before and after."""

    customer_rows: list[dict]
    moved: list[dict]
    affected: set[str]


def _changes(catalog: Catalog, m: Merged) -> _Changes:
    hierarchy = m.hierarchy
    family = {cid: hierarchy.root(cid) for cid in m.customers}
    old_family = {cid: r["family_id"] for cid, r in m.old["customers"].items()}
    affected: set[str] = set()

    def touch(*customer_ids: str | None) -> None:
        for cid in customer_ids:
            if cid is None:
                continue
            if cid in family:
                affected.add(family[cid])
            if cid in old_family:
                affected.add(old_family[cid])

    customer_rows = []
    for cid in _topological(hierarchy, catalog.customers):
        row = {k: v for k, v in catalog.customers[cid].items()}
        row["family_id"] = family[cid]
        customer_rows.append(row)
        before = m.old["customers"].get(cid)
        if before != row:
            touch(cid, before["parent_id"] if before else None, row["parent_id"])
    # Families move when a root is re-parented: refresh every customer's family id.
    moved = [
        {"id": cid, "family_id": family[cid]}
        for cid, r in m.old["customers"].items()
        if r["family_id"] != family[cid] and cid not in catalog.customers
    ]
    for row in moved:
        touch(row["id"])
    _touch_the_rest(catalog, m, touch)
    return _Changes(customer_rows, moved, affected)


def _by_value(value):
    """A stored price compared by what its numbers are worth, not how they are written
    ("10.00" and "10.0" are one price, as they were in numeric columns)."""
    if isinstance(value, dict):
        return {k: _by_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_by_value(v) for v in value]
    if isinstance(value, str):
        try:
            number = Decimal(value)
        except InvalidOperation:
            return value
        return number if number.is_finite() else value
    return value


def _touch_the_rest(catalog: Catalog, m: Merged, touch) -> None:
    """Touch the customers of subscriptions, prices, credits and tax rates that changed."""
    for row in catalog.subscriptions.values():
        before = m.old["subscriptions"].get(row["id"])
        before_items = [_item_key(i) for i in m.old_items.get(row["id"], [])]
        if before != row or before_items != [_item_key(i) for i in catalog.items[row["id"]]]:
            touch(row["customer_id"], before["customer_id"] if before else None)
    using: dict[str, set[str]] = defaultdict(set)
    for sid, sub_items in m.items.items():
        for item in sub_items:
            if sid in m.subscriptions:
                using[item["price_code"]].add(m.subscriptions[sid]["customer_id"])
    for code, row in catalog.prices.items():
        if _by_value(m.old["prices"].get(code)) != _by_value(row):
            touch(*using[code])
    for gid, row in catalog.credits.items():
        before = m.old["credits"].get(gid)
        if before != row:
            touch(row["customer_id"], before["customer_id"] if before else None)
    for jurisdiction, row in catalog.tax_rates.items():
        if m.old["tax_rates"].get(jurisdiction) != row:
            touch(*[cid for cid, c in m.customers.items()])


def write(session: Session, catalog: Catalog, m: Merged, warnings: list[str]) -> ImportResult:
    """Upsert the checked catalog (the caller commits)."""
    changes = _changes(catalog, m)
    result = ImportResult(warnings=warnings, affected_families=changes.affected)

    def count(section: str, keys) -> tuple[int, int]:
        new = sum(1 for k in keys if k not in m.old[section])
        return new, len(keys) - new

    if catalog.issuer:
        upsert(session, Issuer, [catalog.issuer], ["id"])
        result.counts["issuer"] = (1, 0)
    upsert(session, TaxRate, list(catalog.tax_rates.values()), ["jurisdiction"])
    result.counts["tax_rates"] = count("tax_rates", catalog.tax_rates)
    upsert(session, Customer, changes.customer_rows, ["id"])
    for row in changes.moved:
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
    upsert(session, Subscription, list(catalog.subscriptions.values()), ["id"])
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
