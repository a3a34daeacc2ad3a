"""Periods, proration and billing dates: pure functions over dates.

Dates here are local calendar dates in the customer's time zone; a period is half-open
`[start, end)`. Instants only appear in `window_utc`, which turns a local period into the
UTC interval that selects its usage.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from fractions import Fraction
from functools import lru_cache
from zoneinfo import ZoneInfo

CADENCE_MONTHS = {"monthly": 1, "quarterly": 3, "annual": 12}
ONE_DAY = timedelta(days=1)


def days_in_month(year: int, month: int) -> int:
    """Number of days in a month."""
    if month == 12:
        return 31
    return (date(year, month + 1, 1) - date(year, month, 1)).days


def anchored(year: int, month: int, day: int) -> date:
    """The anchor day in a month, clamped to the month's last day (31 -> 30, 28 or 29)."""
    year, month = year + (month - 1) // 12, (month - 1) % 12 + 1
    return date(year, month, min(day, days_in_month(year, month)))


def shift_months(anchor: date, months: int, day: int) -> date:
    """`anchor` moved by whole months, landing on `day` clamped (back to 31 after a 30)."""
    return anchored(anchor.year, anchor.month + months, day)


def first_anchor(start: date, billing_day: int) -> date:
    """The first date on or after `start` that falls on the (clamped) billing day."""
    candidate = anchored(start.year, start.month, billing_day)
    return candidate if candidate >= start else anchored(start.year, start.month + 1, billing_day)


@dataclass(frozen=True)
class Period:
    """A part of a service period, with the whole cadence period it is prorated against.

    `start`/`end` is the part (split by phases), `service_start`/`service_end` the service
    period it belongs to (its due dates), `full_start`/`full_end` the whole cadence period.
    """

    start: date
    end: date
    service_start: date
    service_end: date
    full_start: date
    full_end: date
    phase: int = 0

    @property
    def days(self) -> int:
        return (self.end - self.start).days

    @property
    def factor(self) -> Fraction:
        """Share of the whole cadence period this part covers (1 for a whole period)."""
        return Fraction(self.days, (self.full_end - self.full_start).days)

    @property
    def last_day(self) -> date:
        return self.end - ONE_DAY

    def due_date(self, timing: str) -> date:
        """In advance: the service period's first day; in arrears: the day after its last."""
        return self.service_start if timing == "in_advance" else self.service_end


def cadence_boundaries(first: date, billing_day: int, months: int) -> Iterator[date]:
    """Anchors from `first` on, every `months` months, each clamped to its month."""
    k = 0
    while True:
        yield shift_months(first, k * months, billing_day)
        k += 1


def service_periods(
    start: date,
    end: date | None,
    cadence: str,
    billing_day: int,
    until: date,
) -> Iterator[Period]:
    """Service periods of a schedule that begin before `until`.

    `end` is the inclusive last day of service. Leading and trailing partial periods are
    returned with the whole cadence period that contains them, for proration.
    """
    months = CADENCE_MONTHS[cadence]
    stop = end + ONE_DAY if end is not None else None
    anchor = first_anchor(start, billing_day)
    previous = shift_months(anchor, -months, billing_day)
    if start < anchor:
        part_end = min(anchor, stop) if stop else anchor
        if start < until and start < part_end:
            yield Period(start, part_end, start, part_end, previous, anchor)
    k = 0
    while True:
        lo = shift_months(anchor, k * months, billing_day)
        hi = shift_months(anchor, (k + 1) * months, billing_day)
        if lo >= until or (stop is not None and lo >= stop):
            return
        part_end = min(hi, stop) if stop else hi
        yield Period(lo, part_end, lo, part_end, lo, hi)
        k += 1


def split_by_phases(period: Period, phase_starts: Sequence[date]) -> list[Period]:
    """Split a period at phase starts inside it; each part keeps the whole cadence period.

    `phase_starts[i]` is the first day of phase i (index 0 is the subscription's start).
    """
    cuts = [p for p in phase_starts if period.start < p < period.end]
    bounds = [period.start, *cuts, period.end]
    parts = []
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        phase = bisect.bisect_right(list(phase_starts), lo) - 1
        parts.append(
            Period(
                lo,
                hi,
                period.service_start,
                period.service_end,
                period.full_start,
                period.full_end,
                max(phase, 0),
            )
        )
    return parts


def periods_with_phases(
    start: date,
    end: date | None,
    cadence: str,
    billing_day: int,
    phase_starts: Sequence[date],
    until: date,
) -> Iterator[Period]:
    """Service periods split by phases (ramps)."""
    for period in service_periods(start, end, cadence, billing_day, until):
        yield from split_by_phases(period, phase_starts)


def prorate(amount, factor: Fraction):
    """`amount × factor` exactly (a Decimal); the caller rounds once."""
    if factor == 1:
        return amount
    return amount * factor.numerator / factor.denominator


def monthly_calendar_on_or_after(day: date, billing_day: int) -> Iterator[date]:
    """A monthly billing calendar on `billing_day`, from the first date on or after `day`."""
    first = first_anchor(day, billing_day)
    yield from cadence_boundaries(first, billing_day, 1)


@lru_cache(maxsize=65536)
def window_utc(start: date, end: date, timezone: str) -> tuple[datetime, datetime]:
    """The UTC instants of local midnight at `start` and `end` in `timezone`."""
    zone = ZoneInfo(timezone)
    return (
        datetime.combine(start, time(0), zone).astimezone(UTC),
        datetime.combine(end, time(0), zone).astimezone(UTC),
    )


def lifecycle(status: str, start: date, end: date | None, today: date) -> str:
    """draft, upcoming, active or completed, from the status and the dates."""
    if status == "draft":
        return "draft"
    if start > today:
        return "upcoming"
    if end is not None and end < today:
        return "completed"
    return "active"


class Calendar:
    """A billed customer's billing dates, and where a charge due on a day lands.

    With a `billing_day` the calendar is monthly on that day. Otherwise it is the due dates
    of the customer's own subscriptions; when those have ended before a charge's due date
    (or there are none), the due dates of everything billed to the customer.
    """

    def __init__(
        self,
        billing_day: int | None,
        own_dates: Iterable[date] = (),
        all_dates: Iterable[date] = (),
        taken: Iterable[date] = (),
    ):
        self.billing_day = billing_day
        self.own = sorted(set(own_dates))
        self.all = sorted(set(all_dates))
        self.taken = set(taken)

    def place(self, due: date) -> date | None:
        """The first billing date on or after `due` without a frozen invoice, or None."""
        return self._first(due, self.taken)

    def scheduled(self, due: date) -> date | None:
        """The first billing date on or after `due`, whether or not an invoice was issued
        on it: where the calendar bills what is due then (a pool item's billing date, the
        due date of a child-mode member's share), not where something new still fits."""
        return self._first(due, frozenset())

    def _first(self, due: date, skip: set[date] | frozenset[date]) -> date | None:
        if self.billing_day is not None:
            for candidate in monthly_calendar_on_or_after(due, self.billing_day):
                if candidate not in skip:
                    return candidate
        dates = self.own if self.own and self.own[-1] >= due else self.all
        for candidate in dates[bisect.bisect_left(dates, due) :]:
            if candidate not in skip:
                return candidate
        return None
