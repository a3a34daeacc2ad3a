"""Property-based tests of the period rules: for any schedule, periods tile its service
exactly, and proration of whole periods adds up to whole periods."""

from __future__ import annotations

from datetime import date, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from billing_core.domain.schedules import (
    CADENCE_MONTHS,
    anchored,
    first_anchor,
    periods_with_phases,
    service_periods,
    shift_months,
    window_utc,
)

DAY = timedelta(days=1)
cadences = st.sampled_from(sorted(CADENCE_MONTHS))
billing_days = st.integers(min_value=1, max_value=31)
starts = st.dates(min_value=date(2019, 1, 1), max_value=date(2032, 12, 31))


@st.composite
def schedules(draw):
    """A start, an inclusive end (within ~4 years), a cadence, a billing day, phases."""
    start = draw(starts)
    end = start + timedelta(days=draw(st.integers(min_value=0, max_value=1500)))
    span = (end - start).days
    offsets = draw(st.sets(st.integers(min_value=1, max_value=span), max_size=4)) if span else ()
    phase_starts = [start] + [start + timedelta(days=o) for o in sorted(offsets)]
    return start, end, draw(cadences), draw(billing_days), phase_starts


@given(schedules())
@settings(max_examples=400, deadline=None)
def test_periods_tile_start_to_end_without_gap_or_overlap(schedule):
    start, end, cadence, day, phase_starts = schedule
    parts = list(periods_with_phases(start, end, cadence, day, phase_starts, date.max))
    assert parts[0].start == start
    assert parts[-1].end == end + DAY  # `end` is the inclusive last day
    for before, after in zip(parts, parts[1:], strict=False):
        assert before.end == after.start  # no gap, no overlap
    for part in parts:
        assert part.start < part.end
        # Each part lies in its service period, which lies in its whole cadence period.
        assert part.service_start <= part.start < part.end <= part.service_end
        assert part.full_start <= part.service_start < part.service_end <= part.full_end
        assert 0 < part.factor <= 1
        # The phase of a part is the last phase started on or before its first day.
        assert phase_starts[part.phase] <= part.start
        assert part.phase == len(phase_starts) - 1 or phase_starts[part.phase + 1] >= part.end


@given(schedules())
@settings(max_examples=300, deadline=None)
def test_whole_cadence_periods_start_on_the_clamped_billing_day(schedule):
    start, end, cadence, day, _ = schedule
    for period in service_periods(start, end, cadence, day, date.max):
        full_start, full_end = period.full_start, period.full_end
        assert full_start.day == min(day, anchored(full_start.year, full_start.month, 31).day)
        assert shift_months(full_start, CADENCE_MONTHS[cadence], day) == full_end
        # Every cadence boundary is a whole number of cadence steps from the first anchor.
        first = first_anchor(start, day)
        months = (full_end.year - first.year) * 12 + full_end.month - first.month
        assert months % CADENCE_MONTHS[cadence] == 0


@st.composite
def whole_periods(draw):
    """A schedule that starts on an anchor and serves exactly n cadence periods, with
    phases cutting anywhere inside."""
    cadence = draw(cadences)
    day = draw(billing_days)
    anchor = first_anchor(draw(starts), day)
    n = draw(st.integers(min_value=1, max_value=30 if cadence == "monthly" else 8))
    stop = shift_months(anchor, n * CADENCE_MONTHS[cadence], day)
    inside = st.integers(min_value=1, max_value=(stop - anchor).days - 1)
    offsets = draw(st.sets(inside, max_size=5))
    phases = [anchor] + [anchor + timedelta(days=o) for o in sorted(offsets)]
    return anchor, stop - DAY, cadence, day, phases, n


@given(whole_periods())
@settings(max_examples=400, deadline=None)
def test_proration_factors_of_whole_periods_sum_to_their_number(case):
    start, end, cadence, day, phases, n = case
    parts = list(periods_with_phases(start, end, cadence, day, phases, date.max))
    assert sum(p.factor for p in parts) == n  # exact fractions: no rounding drift
    assert len({p.service_start for p in parts}) == n


@given(schedules())
@settings(max_examples=200, deadline=None)
def test_partial_periods_are_prorated_by_days_against_their_cadence_period(schedule):
    start, end, cadence, day, _ = schedule
    for period in service_periods(start, end, cadence, day, date.max):
        full_days = (period.full_end - period.full_start).days
        assert period.factor * full_days == period.days


@given(
    st.dates(min_value=date(2020, 1, 1), max_value=date(2030, 12, 31)),
    st.sampled_from(
        ["UTC", "America/New_York", "Europe/London", "Australia/Sydney", "America/Santiago"]
    ),
)
@settings(max_examples=300, deadline=None)
def test_consecutive_usage_windows_meet_whatever_the_time_zone(day, zone):
    first = window_utc(day, day + DAY, zone)
    second = window_utc(day + DAY, day + 2 * DAY, zone)
    assert first[1] == second[0]
    # A local day lasts 23, 24 or 25 hours, never anything else.
    assert (first[1] - first[0]).total_seconds() / 3600 in (23, 24, 25)
