"""The catalog as the close reads it: customers, subscriptions and prices as plain values.

The store loads them (billing_core.store.reference); planning, pricing and the steps work
on them without a session.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal

from billing_core.domain.hierarchy import Hierarchy, Node
from billing_core.domain.pricing import model as price_model


@dataclass(frozen=True)
class CustomerInfo:
    id: str
    name: str
    currency: str
    timezone: str
    parent_id: str | None
    bill_to: str
    billing_day: int | None
    jurisdiction: str | None
    tax_basis: str
    rollup_lines: str
    family_id: str


@dataclass(frozen=True)
class ItemInfo:
    phase: int
    phase_start: date
    price_code: str
    timing: str
    pool: str | None


@dataclass(frozen=True)
class SubscriptionInfo:
    id: str
    customer_id: str
    start: date
    end: date | None
    cadence: str
    billing_day: int
    rollup: bool | None
    align_to_parent: bool
    status: str
    minimum: Decimal | None
    discounts: tuple[dict, ...]
    items: tuple[ItemInfo, ...]

    @property
    def phase_starts(self) -> list[date]:
        starts = {0: self.start}
        for item in self.items:
            if item.phase:
                starts[item.phase] = item.phase_start
        return [starts[k] for k in sorted(starts)]

    def items_in_phase(self, phase: int) -> list[ItemInfo]:
        return [i for i in self.items if i.phase == phase]


@dataclass(frozen=True)
class PriceInfo:
    code: str
    product: str
    bundle: str | None
    currency: str
    model: str
    metric_code: str | None
    terms: dict = field(hash=False)

    @property
    def usage(self) -> bool:
        return price_model(self.model).usage


@dataclass
class Reference:
    """Customers, subscriptions, prices and metrics of one scope."""

    customers: dict[str, CustomerInfo]
    subscriptions: dict[str, SubscriptionInfo]
    prices: dict[str, PriceInfo]
    metrics: dict[str, str]  # code -> aggregation
    metric_names: dict[str, str]

    def hierarchy(self) -> Hierarchy:
        return Hierarchy(
            Node(c.id, c.parent_id, c.bill_to, c.currency, c.name) for c in self.customers.values()
        )
