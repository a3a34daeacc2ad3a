"""Rating's cadence periods: discounts and minimum true-ups look at every charge of a
subscription's cadence period, the frozen ones in the store and the ones rated now."""

from __future__ import annotations

from collections import defaultdict
from datetime import date, datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from billing_core.domain.charge import ChargeRow
from billing_core.domain.model import Reference
from billing_core.domain.rating import discounts, minimum_charge
from billing_core.store.models import Charge, Invoice, charges_joined
from billing_core.store.reference import Scope


class PeriodCharges:
    """All charges of a subscription's cadence period: frozen ones from the store and the
    ones rated now (discounts and minimums look at both)."""

    def __init__(
        self,
        session: Session,
        scope: Scope,
        frozen: set[str],
        fresh: dict[str, ChargeRow],
        minimum_slots: list[Any],
        concerned: set[str],
    ):
        """`concerned`: the subscriptions with discounts or minimums (no other is asked)."""
        self.by_period: dict[tuple[str, date], list[ChargeRow]] = defaultdict(list)
        self.frozen_keys = frozen
        needed = set()
        for row in fresh.values():
            if row["subscription_id"] in concerned:
                key = (row["subscription_id"], row["full_start"])
                self.by_period[key].append(row)
                needed.add(key)
        needed |= {(s.subscription_id, s.full_start) for s in minimum_slots}
        if not needed:
            return
        ch = Charge.__table__.c
        v = Invoice.__table__.c
        stmt = (
            sa.select(Charge.__table__)
            .select_from(charges_joined(outer=False))
            .where(
                v.status != "draft",
                ch.full_start >= min(p for _, p in needed),
                ch.kind.in_(("fixed", "usage", "discount")),
            )
            .where(scope.where(ch.family_id))
        )
        for row in session.execute(stmt).mappings():
            key = (row["subscription_id"], row["full_start"])
            if key in needed:
                self.by_period[key].append(dict(row))

    def periods(self, subscription_id: str) -> list[date]:
        return sorted(p for s, p in self.by_period if s == subscription_id)

    def of(self, subscription_id: str, full_start: date) -> list[ChargeRow]:
        return self.by_period.get((subscription_id, full_start), [])


def settle_periods(
    ref: Reference,
    context: PeriodCharges,
    minimum_slots: list[Any],
    through: date,
    now: datetime,
) -> list[ChargeRow]:
    """Discounts, then minimum true-ups, per subscription and cadence period: the charges
    to write."""
    out: list[ChargeRow] = []
    for sub in ref.subscriptions.values():
        if not sub.discounts:
            continue
        for full_start in context.periods(sub.id):
            rows = context.of(sub.id, full_start)
            for row in discounts(sub, full_start, rows, context.frozen_keys, now):
                context.by_period[(sub.id, full_start)].append(row)
                # One that reduces a share billed later (see `rate`) is counted for the
                # period's minimum now, written when that date is closed.
                if row["billing_date"] <= through:
                    out.append(row)
    for slot in minimum_slots:
        sub = ref.subscriptions[slot.subscription_id]
        currency = ref.customers[sub.customer_id].currency
        out.append(minimum_charge(slot, sub, currency, context.of(sub.id, slot.full_start), now))
    return out
