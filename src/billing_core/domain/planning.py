"""Schedule recalculation, the pure part: subscriptions and the customer tree in, the slots
to bill (item or minimum × service period × serviced customer) and their billing dates out.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date
from functools import lru_cache

from billing_core.domain.hierarchy import Hierarchy
from billing_core.domain.model import ItemInfo, Reference, SubscriptionInfo
from billing_core.domain.schedules import Calendar, Period, periods_with_phases


@dataclass
class Slot:
    """One thing to rate: a row of `billing_periods`."""

    slot_key: str
    kind: str  # item | minimum
    subscription_id: str
    price_code: str | None
    timing: str | None
    serviced_customer_id: str
    billed_customer_id: str
    family_id: str
    pool: str | None
    pool_owner_id: str | None
    period_start: date
    period_end: date
    full_start: date
    full_end: date
    due_date: date
    billing_date: date | None = None

    def row(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Plan:
    slots: list[Slot] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    calendars: dict[str, Calendar] = field(default_factory=dict)


def slot_key(
    subscription_id: str, kind: str, price_code: str | None, serviced: str, period_start: date
) -> str:
    return f"{subscription_id}|{kind}|{price_code or '-'}|{serviced}|{period_start.isoformat()}"


def rollup_of(rollup: bool | None, customer_id: str, hierarchy: Hierarchy) -> bool:
    """A subscription's roll-up flag: its own, else its customer's bill_to default."""
    return rollup if rollup is not None else hierarchy.default_rollup(customer_id)


def billed_customer_of(sub: SubscriptionInfo, hierarchy: Hierarchy) -> str:
    rollup = rollup_of(sub.rollup, sub.customer_id, hierarchy)
    return hierarchy.billed_customer(sub.customer_id, rollup)


def anchor_day(sub: SubscriptionInfo, ref: Reference, hierarchy: Hierarchy) -> int:
    """The subscription's billing day, re-anchored on its payer's with align_to_parent:
    the billed customer's `billing_day`, else the day of its first active schedule."""
    if not sub.align_to_parent:
        return sub.billing_day
    billed = billed_customer_of(sub, hierarchy)
    payer = ref.customers[billed]
    if payer.billing_day is not None:
        return payer.billing_day
    if billed == sub.customer_id:
        # Paying for itself without a calendar: the schedule is its own anchor.
        return sub.billing_day
    own = sorted(
        (
            s
            for s in ref.subscriptions.values()
            if s.customer_id == billed
            and s.status != "draft"
            and billed_customer_of(s, hierarchy) == billed
        ),
        key=lambda s: (s.start, s.id),
    )
    return own[0].billing_day if own else sub.billing_day


def phases_of(sub: SubscriptionInfo) -> tuple[list[date], list[int]]:
    """The first day and the phase number of each phase, in order (phase 0 at the start).

    A part's `phase` is a position in this list; the number is what items are stored
    under, so a gap in the numbering never shifts one phase's items onto another.
    """
    starts = {0: sub.start}
    for item in sub.items:
        if item.phase:
            starts[item.phase] = item.phase_start
    numbers = sorted(starts)
    return [starts[n] for n in numbers], numbers


def periods_through(sub: SubscriptionInfo, day: int, through: date) -> tuple[Period, ...]:
    """Period parts starting on or before `through`, then those of the next period: enough
    to know each due date on or before `through` and the first one after it."""
    starts, _ = phases_of(sub)
    return _periods_through(sub.start, sub.end, sub.cadence, day, tuple(starts), through)


@lru_cache(maxsize=4096)
def _periods_through(
    start: date, end: date | None, cadence: str, day: int, starts: tuple[date, ...], through: date
) -> tuple[Period, ...]:
    # Subscriptions that share their terms share their periods (cached: a store of
    # thousands of monthly subscriptions starting on the same day computes them once).
    out: list[Period] = []
    next_start: date | None = None
    for part in periods_with_phases(start, end, cadence, day, list(starts), date.max):
        if part.service_start > through:
            if next_start is None:
                next_start = part.service_start
            elif part.service_start != next_start:
                break
        out.append(part)
    return tuple(out)


def own_metric_prices(ref: Reference) -> dict[str, set[str]]:
    """customer -> metrics it has a price of its own on (any non-draft subscription)."""
    out: dict[str, set[str]] = defaultdict(set)
    for sub in ref.subscriptions.values():
        if sub.status == "draft":
            continue
        for item in sub.items:
            price = ref.prices.get(item.price_code)
            if price is not None and price.metric_code:
                out[sub.customer_id].add(price.metric_code)
    return out


def pool_members(
    owner: str, metric: str | None, hierarchy: Hierarchy, own_metrics: dict[str, set[str]]
) -> tuple[list[str], list[str]]:
    """(members, left out): the owner and descendants billing through it, minus those with
    their own price on the metric."""
    members, left_out = [], []
    for customer in hierarchy.bills_through(owner):
        if customer != owner and metric in own_metrics.get(customer, set()):
            left_out.append(customer)
        else:
            members.append(customer)
    return members, left_out


def plan(ref: Reference, through: date, taken: dict[str, set[date]]) -> Plan:
    """Slots due on or before `through`, each placed on its billed customer's calendar."""
    planner = _Planner(ref, through)
    for sub in sorted(ref.subscriptions.values(), key=lambda s: s.id):
        if sub.status == "draft" or sub.customer_id not in ref.customers:
            continue
        planner.subscription(sub)
    return planner.placed(taken)


class _Planner:
    """A plan's slots as the subscriptions give them, and the dates each payer bills on
    (`all_dates`; `own_dates` those of its own subscriptions)."""

    def __init__(self, ref: Reference, through: date):
        self.ref = ref
        self.through = through
        self.result = Plan()
        self.hierarchy = ref.hierarchy()
        self.own_metrics = own_metric_prices(ref)
        self.own_dates: dict[str, set[date]] = defaultdict(set)
        self.all_dates: dict[str, set[date]] = defaultdict(set)
        self.warned: set[str] = set()
        # A child-mode pool member's share, with the payer of the pool item.
        self.child_shares: list[tuple[Slot, str]] = []

    def subscription(self, sub: SubscriptionInfo) -> None:
        """One subscription's slots, period part by period part: its items', its minimum's."""
        ref, through = self.ref, self.through
        family = ref.customers[sub.customer_id].family_id
        billed = billed_customer_of(sub, self.hierarchy)
        own = billed == sub.customer_id
        day = anchor_day(sub, ref, self.hierarchy)
        all_dates, own_dates = self.all_dates, self.own_dates
        slots = self.result.slots
        minimum_done: set[date] = set()
        _, phase_numbers = phases_of(sub)
        for part in periods_through(sub, day, through):
            for item in sub.items_in_phase(phase_numbers[part.phase]):
                price = ref.prices.get(item.price_code)
                if price is None:
                    continue
                due = part.due_date(item.timing)
                all_dates[billed].add(due)
                if own:
                    own_dates[billed].add(due)
                if item.pool is not None:
                    self._pool(sub, item, price.metric_code, part, due, billed, family)
                elif due <= through:
                    slots.append(
                        _slot(
                            sub,
                            "item",
                            item.price_code,
                            item.timing,
                            sub.customer_id,
                            billed,
                            family,
                            None,
                            None,
                            part,
                            due,
                        )
                    )
            if sub.minimum is not None and part.service_start not in minimum_done:
                minimum_done.add(part.service_start)
                self._minimum(sub, part, billed, own, family)

    def _pool(
        self,
        sub: SubscriptionInfo,
        item: ItemInfo,
        metric: str | None,
        part: Period,
        due: date,
        billed: str,
        family: str,
    ) -> None:
        """A pooled item's slots: one per member, paid by the member itself in child mode."""
        members, left_out = pool_members(sub.customer_id, metric, self.hierarchy, self.own_metrics)
        for customer_id in left_out:
            message = (
                f"pool {sub.id}/{item.price_code}: {customer_id} has its own "
                f"price on metric {metric}; it is rated on its own "
                "and left out of the pool"
            )
            if message not in self.warned:
                self.warned.add(message)
                self.result.warnings.append(message)
        for member in members:
            payer = member if item.pool == "child" and member != sub.customer_id else billed
            if payer == billed:
                self.all_dates[payer].add(due)
            if due <= self.through:
                slot = _slot(
                    sub,
                    "item",
                    item.price_code,
                    item.timing,
                    member,
                    payer,
                    family,
                    item.pool,
                    sub.customer_id,
                    part,
                    due,
                )
                if payer == billed:
                    self.result.slots.append(slot)
                else:
                    self.child_shares.append((slot, billed))

    def _minimum(
        self, sub: SubscriptionInfo, part: Period, billed: str, own: bool, family: str
    ) -> None:
        """The minimum's slot of a service period (whole, whatever its phases)."""
        whole = Period(
            part.service_start,
            part.service_end,
            part.service_start,
            part.service_end,
            part.full_start,
            part.full_end,
        )
        due = whole.due_date("in_arrears")
        self.all_dates[billed].add(due)
        if own:
            self.own_dates[billed].add(due)
        if due <= self.through:
            self.result.slots.append(
                _slot(
                    sub,
                    "minimum",
                    None,
                    "in_arrears",
                    sub.customer_id,
                    billed,
                    family,
                    None,
                    None,
                    whole,
                    due,
                )
            )

    def _calendar(self, payer: str, taken: dict[str, set[date]]) -> Calendar:
        info = self.ref.customers.get(payer)
        return Calendar(
            info.billing_day if info else None,
            self.own_dates.get(payer, ()),
            self.all_dates[payer],
            taken.get(payer, ()),
        )

    def placed(self, taken: dict[str, set[date]]) -> Plan:
        """The plan: each payer's calendar, and each slot's billing date on its payer's."""
        result = self.result
        for payer in set(self.all_dates):
            result.calendars[payer] = self._calendar(payer, taken)
        # A child-mode pool member's share is due on the pool item's billing date (the pool
        # owner's payer's), then lands on the member's own calendar. That due date is the
        # item's date on the owner's payer's calendar whatever that payer has issued since:
        # an issued invoice of the owner's payer says where the owner's charges went, not
        # when the member's share falls due (else issuing it would push the share a period
        # later).
        members_paying: set[str] = set()
        for slot, owner_payer in self.child_shares:
            item_date = result.calendars[owner_payer].scheduled(slot.due_date)
            if item_date is None or item_date > self.through:
                continue
            slot.due_date = item_date
            self.all_dates[slot.billed_customer_id].add(item_date)
            members_paying.add(slot.billed_customer_id)
            result.slots.append(slot)
        for payer in members_paying:
            result.calendars[payer] = self._calendar(payer, taken)
        for slot in result.slots:
            slot.billing_date = result.calendars[slot.billed_customer_id].place(slot.due_date)
        return result


def _slot(
    sub: SubscriptionInfo,
    kind: str,
    price_code: str | None,
    timing: str | None,
    serviced: str,
    billed: str,
    family: str,
    pool: str | None,
    owner: str | None,
    part: Period,
    due: date,
) -> Slot:
    return Slot(
        slot_key=slot_key(sub.id, kind, price_code, serviced, part.start),
        kind=kind,
        subscription_id=sub.id,
        price_code=price_code,
        timing=timing,
        serviced_customer_id=serviced,
        billed_customer_id=billed,
        family_id=family,
        pool=pool,
        pool_owner_id=owner,
        period_start=part.start,
        period_end=part.end,
        full_start=part.full_start,
        full_end=part.full_end,
        due_date=due,
    )
