"""Rating's reads of usage: the windows every usage charge is rated over, aggregated in one
set-based pass, and the members of the pools being rated."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from billing_core.domain.model import Reference, SubscriptionInfo
from billing_core.domain.schedules import window_utc
from billing_core.store.models import BillingPeriod
from billing_core.store.rows import select_in
from billing_core.store.usage_totals import Window, aggregate


@dataclass
class UsageWindows:
    """Registry of usage windows to aggregate in one pass."""

    ref: Reference

    def __post_init__(self) -> None:
        self.keys: dict[tuple, int] = {}
        self.windows: list[Window] = []
        self.quantities: dict[int, Decimal] = {}

    def add(self, customer: str, metric: str, start: datetime, end: datetime) -> int:
        key = (customer, metric, start, end)
        if key not in self.keys:
            self.keys[key] = len(self.keys) + 1
            self.windows.append(Window(self.keys[key], customer, metric, start, end))
        return self.keys[key]

    def run(self, session: Session, every_customer: bool = False) -> None:
        self.quantities = aggregate(session, self.windows, self.ref.metrics, every_customer)

    def quantity(self, customer: str, metric: str, start: datetime, end: datetime) -> Decimal:
        return self.quantities[self.keys[(customer, metric, start, end)]]

    def add_slots(self, item_slots: list[Any], members: dict[tuple, set[str]]) -> None:
        """The window of every usage slot, then of every member of the pools rated."""
        ref = self.ref
        for s in item_slots:
            price = ref.prices[s.price_code]
            if price.usage:
                sub = ref.subscriptions[s.subscription_id]
                self.add(
                    s.serviced_customer_id,
                    price.metric_code,
                    *usage_window(ref, sub, s.period_start, s.period_end),
                )
        part_of = {(s.subscription_id, s.price_code, s.period_start): s for s in item_slots}
        for key, customers in members.items():
            s = part_of[key]
            sub = ref.subscriptions[s.subscription_id]
            window = usage_window(ref, sub, s.period_start, s.period_end)
            for customer_id in customers:
                self.add(customer_id, ref.prices[s.price_code].metric_code, *window)


def usage_window(ref: Reference, sub: SubscriptionInfo, start: date, end: date):
    """Usage window of a period: local midnights in the subscription customer's zone."""
    return window_utc(start, end, ref.customers[sub.customer_id].timezone)


def pool_members(
    session: Session, item_slots: list[Any], through: date, totalled: set[str]
) -> tuple[dict[tuple, set[str]], dict[tuple, list[Any]]]:
    """(subscription, price, part start) -> every serviced customer of that pool part,
    whatever the billing date or invoice of its share (a block is rated whole); and, for
    the `totalled` subscriptions, the slots of the part's child-mode shares that bill
    after `through`."""
    pooled = {(s.subscription_id, s.price_code, s.period_start) for s in item_slots if s.pool}
    out: dict[tuple, set[str]] = defaultdict(set)
    later: dict[tuple, list[Any]] = defaultdict(list)
    if not pooled:
        return out, later
    bp = BillingPeriod.__table__
    c = bp.c
    stmt = sa.select(c.subscription_id, c.price_code, c.period_start, c.serviced_customer_id)
    stmt = stmt.where(c.pool.is_not(None))
    for r in select_in(session, stmt, c.subscription_id, sorted({k[0] for k in pooled})):
        key = (r.subscription_id, r.price_code, r.period_start)
        if key in pooled:
            out[key].add(r.serviced_customer_id)
    stmt = sa.select(bp).where(c.pool == "child", c.billing_date > through)
    for r in select_in(session, stmt, c.subscription_id, sorted({k[0] for k in pooled} & totalled)):
        key = (r.subscription_id, r.price_code, r.period_start)
        if key in pooled:
            later[key].append(r)
    return out, later
