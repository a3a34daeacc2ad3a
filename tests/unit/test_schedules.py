"""Periods, proration, due dates, usage windows, lifecycle and calendars (SPEC §3).

Every expectation is counted by hand from the calendar; the comments show the count.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from fractions import Fraction

import pytest

from billing_core.domain.money import round_money
from billing_core.domain.schedules import (
    Calendar,
    Period,
    anchored,
    days_in_month,
    first_anchor,
    lifecycle,
    periods_with_phases,
    prorate,
    service_periods,
    shift_months,
    split_by_phases,
    window_utc,
)

D = date


def spans(periods) -> list[tuple[date, date]]:
    """(first day, inclusive last day) of each period, as an invoice shows it."""
    return [(p.start, p.last_day) for p in periods]


def periods(start, end, cadence, day, until=D(2030, 1, 1)) -> list[Period]:
    return list(service_periods(start, end, cadence, day, until))


# --- anchors and clamping ----------------------------------------------------------------


def test_month_lengths_know_leap_years():
    assert days_in_month(2024, 2) == 29  # 2024 is divisible by 4
    assert days_in_month(2026, 2) == 28
    assert days_in_month(2100, 2) == 28  # a century not divisible by 400
    assert days_in_month(2000, 2) == 29
    assert days_in_month(2026, 4) == 30
    assert days_in_month(2026, 12) == 31


def test_day_31_clamps_to_the_months_last_day():
    assert anchored(2026, 4, 31) == D(2026, 4, 30)
    assert anchored(2026, 2, 31) == D(2026, 2, 28)
    assert anchored(2024, 2, 31) == D(2024, 2, 29)
    assert anchored(2024, 2, 30) == D(2024, 2, 29)
    # Month 13 is January of the next year, month 0 December of the previous.
    assert anchored(2026, 13, 31) == D(2027, 1, 31)
    assert anchored(2026, 0, 15) == D(2025, 12, 15)


def test_shifting_returns_to_the_anchor_day_after_a_short_month():
    # From 28 February (31 clamped), one month on is 31 March, not 28 March.
    assert shift_months(D(2026, 2, 28), 1, 31) == D(2026, 3, 31)
    assert shift_months(D(2026, 3, 31), -1, 31) == D(2026, 2, 28)


def test_first_anchor_is_on_or_after_the_start():
    assert first_anchor(D(2026, 3, 1), 1) == D(2026, 3, 1)  # the start itself
    assert first_anchor(D(2026, 3, 14), 1) == D(2026, 4, 1)  # next month
    assert first_anchor(D(2026, 3, 14), 20) == D(2026, 3, 20)  # later the same month
    assert first_anchor(D(2026, 2, 10), 31) == D(2026, 2, 28)  # clamped in February
    assert first_anchor(D(2026, 12, 15), 1) == D(2027, 1, 1)  # across the year


# --- monthly, quarterly and annual periods -------------------------------------------------


def test_monthly_on_the_31st_through_february_of_a_non_leap_year():
    got = periods(D(2026, 1, 31), None, "monthly", 31, until=D(2026, 6, 1))
    assert spans(got) == [
        (D(2026, 1, 31), D(2026, 2, 27)),  # 31 Jan - 27 Feb: the next anchor is 28 Feb
        (D(2026, 2, 28), D(2026, 3, 30)),  # back on the 31st in March
        (D(2026, 3, 31), D(2026, 4, 29)),  # 30 April is April's anchor
        (D(2026, 4, 30), D(2026, 5, 30)),
        (D(2026, 5, 31), D(2026, 6, 29)),
    ]
    assert all(p.factor == 1 for p in got)  # whole periods, whatever their length


def test_monthly_on_the_31st_through_february_of_a_leap_year():
    got = periods(D(2024, 1, 31), None, "monthly", 31, until=D(2024, 4, 1))
    assert spans(got) == [
        (D(2024, 1, 31), D(2024, 2, 28)),  # the anchor in February 2024 is the 29th
        (D(2024, 2, 29), D(2024, 3, 30)),
        (D(2024, 3, 31), D(2024, 4, 29)),
    ]


def test_monthly_on_the_30th_and_29th_in_february():
    assert [p.start for p in periods(D(2026, 1, 30), None, "monthly", 30, D(2026, 4, 1))] == [
        D(2026, 1, 30),
        D(2026, 2, 28),
        D(2026, 3, 30),
    ]
    assert [p.start for p in periods(D(2024, 1, 29), None, "monthly", 29, D(2024, 4, 1))] == [
        D(2024, 1, 29),
        D(2024, 2, 29),
        D(2024, 3, 29),
    ]


def test_a_start_between_anchors_gives_a_leading_partial_period_on_the_31st():
    # Start 5 March, anchor 31: the first anchor is 31 March; the cadence period holding
    # 5-30 March is 28 February - 30 March (31 days), of which 26 are served.
    first = periods(D(2026, 3, 5), None, "monthly", 31, until=D(2026, 4, 1))[0]
    assert (first.start, first.end) == (D(2026, 3, 5), D(2026, 3, 31))
    assert (first.full_start, first.full_end) == (D(2026, 2, 28), D(2026, 3, 31))
    assert first.factor == Fraction(26, 31)


def test_sequence_monthly_proration_from_14_march():
    # Sequence: £500 a month, periods on the 1st, start 14 March 2023:
    # 14-31 March is 18 of March's 31 days; 500 x 18/31 = 290.3225... -> 290.32.
    first, second = periods(D(2023, 3, 14), None, "monthly", 1, until=D(2023, 4, 2))
    assert (first.start, first.last_day) == (D(2023, 3, 14), D(2023, 3, 31))
    assert first.days == 18 and first.factor == Fraction(18, 31)
    assert round_money(prorate(Decimal("500.00"), first.factor), "GBP") == Decimal("290.32")
    assert (second.start, second.last_day, second.factor) == (D(2023, 4, 1), D(2023, 4, 30), 1)
    assert prorate(Decimal("500.00"), second.factor) == Decimal("500.00")


def test_sequence_annual_fee_from_24_january_with_periods_on_1_february():
    # The first anchor on or after 24 January 2026 on day 1 is 1 February 2026. The
    # annual period that holds 24-31 January runs 1 Feb 2025 - 31 Jan 2026: 365 days
    # (no 29 February in it). 24..31 January is 8 days: 8/365.
    got = periods(D(2026, 1, 24), None, "annual", 1, until=D(2028, 3, 1))
    assert spans(got) == [
        (D(2026, 1, 24), D(2026, 1, 31)),
        (D(2026, 2, 1), D(2027, 1, 31)),
        (D(2027, 2, 1), D(2028, 1, 31)),
        (D(2028, 2, 1), D(2029, 1, 31)),
    ]
    assert (got[0].full_start, got[0].full_end) == (D(2025, 2, 1), D(2026, 2, 1))
    assert got[0].factor == Fraction(8, 365)
    # 12000 x 8/365 = 263.0136... -> 263.01
    assert round_money(prorate(Decimal("12000"), got[0].factor), "USD") == Decimal("263.01")


def test_annual_partial_against_a_leap_year_period():
    # 1 Feb 2023 - 31 Jan 2024 holds no 29 February (365 days); 1 Feb 2024 - 31 Jan 2025
    # does (366). A start on 24 January 2025 is prorated against the second: 8/366.
    first = periods(D(2025, 1, 24), None, "annual", 1, until=D(2025, 3, 1))[0]
    assert (first.full_start, first.full_end) == (D(2024, 2, 1), D(2025, 2, 1))
    assert first.factor == Fraction(8, 366)


def test_annual_anchor_on_29_february_clamps_in_common_years():
    got = periods(D(2024, 2, 29), None, "annual", 29, until=D(2028, 3, 1))
    assert [p.start for p in got] == [
        D(2024, 2, 29),
        D(2025, 2, 28),
        D(2026, 2, 28),
        D(2027, 2, 28),
        D(2028, 2, 29),  # back on the 29th in the next leap year
    ]


def test_quarterly_every_three_months_from_the_first_anchor_after_the_start():
    # Start 24 January on day 1: the first anchor is 1 February, then 1 May, 1 August.
    # The quarter holding 24-31 January is 1 Nov - 31 Jan: 30 + 31 + 31 = 92 days.
    got = periods(D(2026, 1, 24), None, "quarterly", 1, until=D(2026, 8, 2))
    assert spans(got) == [
        (D(2026, 1, 24), D(2026, 1, 31)),
        (D(2026, 2, 1), D(2026, 4, 30)),
        (D(2026, 5, 1), D(2026, 7, 31)),
        (D(2026, 8, 1), D(2026, 10, 31)),
    ]
    assert (got[0].full_start, got[0].full_end) == (D(2025, 11, 1), D(2026, 2, 1))
    assert got[0].factor == Fraction(8, 92)


def test_quarterly_on_the_31st_clamps_and_returns():
    got = periods(D(2025, 11, 30), None, "quarterly", 31, until=D(2026, 12, 1))
    # First anchor on or after 30 Nov on day 31: 30 November (clamped), then every three
    # months: 28 Feb (clamped), 31 May, 31 Aug, 30 Nov.
    assert [p.start for p in got] == [
        D(2025, 11, 30),
        D(2026, 2, 28),
        D(2026, 5, 31),
        D(2026, 8, 31),
        D(2026, 11, 30),
    ]


# --- end dates: trailing partial periods ---------------------------------------------------


def test_an_end_mid_period_gives_a_trailing_partial_period():
    # End 15 June (the last day served): 1-15 June is 15 of June's 30 days.
    got = periods(D(2026, 4, 1), D(2026, 6, 15), "monthly", 1)
    assert spans(got) == [
        (D(2026, 4, 1), D(2026, 4, 30)),
        (D(2026, 5, 1), D(2026, 5, 31)),
        (D(2026, 6, 1), D(2026, 6, 15)),
    ]
    last = got[-1]
    assert (last.full_start, last.full_end) == (D(2026, 6, 1), D(2026, 7, 1))
    assert last.factor == Fraction(15, 30)
    assert prorate(Decimal("500.00"), last.factor) == Decimal("250.00")


def test_an_end_on_the_last_day_of_a_period_leaves_no_partial():
    got = periods(D(2026, 2, 1), D(2027, 1, 31), "monthly", 1)
    assert len(got) == 12 and all(p.factor == 1 for p in got)
    assert got[-1].last_day == D(2027, 1, 31)


def test_an_end_mid_year_on_an_annual_schedule():
    # 1 Feb 2026 - 31 Jan 2027 is 365 days; served 1 Feb - 31 Mar 2026: 28 + 31 = 59.
    (only,) = periods(D(2026, 2, 1), D(2026, 3, 31), "annual", 1)
    assert (only.start, only.last_day) == (D(2026, 2, 1), D(2026, 3, 31))
    assert only.factor == Fraction(59, 365)


def test_start_and_end_inside_one_cadence_period():
    # 14-20 March served (7 days) of March's 31.
    (only,) = periods(D(2026, 3, 14), D(2026, 3, 20), "monthly", 1)
    assert (only.start, only.last_day, only.full_start, only.full_end) == (
        D(2026, 3, 14),
        D(2026, 3, 20),
        D(2026, 3, 1),
        D(2026, 4, 1),
    )
    assert only.factor == Fraction(7, 31)


def test_a_one_day_schedule():
    (only,) = periods(D(2026, 2, 10), D(2026, 2, 10), "monthly", 1)
    assert only.days == 1 and only.factor == Fraction(1, 28)


def test_periods_stop_before_until():
    got = periods(D(2026, 1, 1), None, "monthly", 1, until=D(2026, 3, 1))
    assert [p.start for p in got] == [D(2026, 1, 1), D(2026, 2, 1)]  # 1 March is not before


# --- due dates --------------------------------------------------------------------------


def test_in_advance_is_due_on_the_first_day_and_in_arrears_the_day_after_the_last():
    first, second = periods(D(2023, 3, 14), None, "monthly", 1, until=D(2023, 4, 2))
    assert first.due_date("in_advance") == D(2023, 3, 14)
    assert first.due_date("in_arrears") == D(2023, 4, 1)
    assert second.due_date("in_advance") == D(2023, 4, 1)
    assert second.due_date("in_arrears") == D(2023, 5, 1)


def test_a_trailing_partial_in_arrears_is_due_the_day_after_the_end():
    last = periods(D(2026, 4, 1), D(2026, 6, 15), "monthly", 1)[-1]
    assert last.due_date("in_arrears") == D(2026, 6, 16)
    assert last.due_date("in_advance") == D(2026, 6, 1)


# --- phases ---------------------------------------------------------------------------


def test_a_phase_starting_on_a_boundary_splits_nothing():
    phases = [D(2026, 1, 1), D(2026, 3, 1)]
    got = list(periods_with_phases(D(2026, 1, 1), None, "monthly", 1, phases, D(2026, 5, 1)))
    assert [(p.start, p.phase, p.factor) for p in got] == [
        (D(2026, 1, 1), 0, 1),
        (D(2026, 2, 1), 0, 1),
        (D(2026, 3, 1), 1, 1),
        (D(2026, 4, 1), 1, 1),
    ]


def test_a_phase_starting_inside_a_period_splits_it_and_both_parts_are_prorated():
    # February 2026 has 28 days; a phase from 15 February: 1-14 (14 days) in phase 0,
    # 15-28 (14 days) in phase 1, both against the whole of February and due with it.
    phases = [D(2026, 1, 1), D(2026, 2, 15)]
    got = list(periods_with_phases(D(2026, 1, 1), None, "monthly", 1, phases, D(2026, 3, 2)))
    assert [(p.start, p.last_day, p.phase, p.factor) for p in got] == [
        (D(2026, 1, 1), D(2026, 1, 31), 0, 1),
        (D(2026, 2, 1), D(2026, 2, 14), 0, Fraction(14, 28)),
        (D(2026, 2, 15), D(2026, 2, 28), 1, Fraction(14, 28)),
        (D(2026, 3, 1), D(2026, 3, 31), 1, 1),
    ]
    before, after = got[1], got[2]
    for part in (before, after):
        assert (part.service_start, part.service_end) == (D(2026, 2, 1), D(2026, 3, 1))
        assert part.due_date("in_advance") == D(2026, 2, 1)
        assert part.due_date("in_arrears") == D(2026, 3, 1)
    # 300 a month before, 600 after: 300 x 14/28 + 600 x 14/28 = 150 + 300.
    assert prorate(Decimal(300), before.factor) + prorate(Decimal(600), after.factor) == 450


def test_a_phase_inside_a_leading_partial_period():
    # Start 14 March, periods on the 1st, phase from 21 March: 14-20 (7 days) and
    # 21-31 (11 days), both against March's 31 days.
    parts = split_by_phases(
        periods(D(2026, 3, 14), None, "monthly", 1, until=D(2026, 3, 15))[0],
        [D(2026, 3, 14), D(2026, 3, 21)],
    )
    assert [(p.start, p.days, p.phase, p.factor) for p in parts] == [
        (D(2026, 3, 14), 7, 0, Fraction(7, 31)),
        (D(2026, 3, 21), 11, 1, Fraction(11, 31)),
    ]


def test_two_phases_inside_one_quarter():
    # Quarter 1 Jan - 31 Mar 2026: 31 + 28 + 31 = 90 days; phases from 1 Feb and 15 Mar
    # cut it into 31, 42 (28 + 14) and 17 days.
    phases = [D(2026, 1, 1), D(2026, 2, 1), D(2026, 3, 15)]
    got = list(periods_with_phases(D(2026, 1, 1), None, "quarterly", 1, phases, D(2026, 2, 1)))
    assert [(p.start, p.days, p.phase) for p in got] == [
        (D(2026, 1, 1), 31, 0),
        (D(2026, 2, 1), 42, 1),
        (D(2026, 3, 15), 17, 2),
    ]
    assert sum(p.factor for p in got) == 1


# --- time zones -------------------------------------------------------------------------


def test_usage_windows_are_local_midnights_across_the_new_york_spring_change():
    # Clocks go forward on 8 March 2026 in New York: EST (UTC-5) before, EDT (UTC-4) after.
    start, end = window_utc(D(2026, 3, 1), D(2026, 4, 1), "America/New_York")
    assert start == datetime(2026, 3, 1, 5, tzinfo=UTC)
    assert end == datetime(2026, 4, 1, 4, tzinfo=UTC)
    # The period still counts 31 calendar days; the window is one hour shorter.
    assert (end - start).total_seconds() == 31 * 86400 - 3600


def test_usage_windows_are_local_midnights_across_the_london_autumn_change():
    # London leaves BST (UTC+1) on 25 October 2026.
    start, end = window_utc(D(2026, 10, 1), D(2026, 11, 1), "Europe/London")
    assert start == datetime(2026, 9, 30, 23, tzinfo=UTC)
    assert end == datetime(2026, 11, 1, 0, tzinfo=UTC)


def test_usage_windows_of_consecutive_periods_meet_across_a_change():
    # London enters BST on 29 March 2026: March ends at 23:00 UTC on the 31st.
    _, march_end = window_utc(D(2026, 3, 1), D(2026, 4, 1), "Europe/London")
    april_start, _ = window_utc(D(2026, 4, 1), D(2026, 5, 1), "Europe/London")
    assert march_end == april_start == datetime(2026, 3, 31, 23, tzinfo=UTC)


def test_usage_windows_in_utc_and_east_of_it():
    assert window_utc(D(2026, 1, 1), D(2026, 2, 1), "UTC") == (
        datetime(2026, 1, 1, tzinfo=UTC),
        datetime(2026, 2, 1, tzinfo=UTC),
    )
    # Tokyo is UTC+9 all year: local midnight is 15:00 UTC the day before.
    assert window_utc(D(2026, 1, 1), D(2026, 2, 1), "Asia/Tokyo")[0] == datetime(
        2025, 12, 31, 15, tzinfo=UTC
    )


# --- lifecycle ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "end", "today", "expected"),
    [
        ("draft", None, D(2026, 3, 1), "draft"),  # draft whatever the dates
        ("draft", D(2026, 1, 31), D(2027, 1, 1), "draft"),
        ("active", None, D(2026, 1, 31), "upcoming"),  # starts tomorrow
        ("active", None, D(2026, 2, 1), "active"),  # its first day
        ("active", D(2026, 6, 30), D(2026, 6, 30), "active"),  # its last day
        ("active", D(2026, 6, 30), D(2026, 7, 1), "completed"),  # the day after
        ("active", None, D(2099, 1, 1), "active"),  # no end: never completes
    ],
)
def test_lifecycle_follows_from_status_and_dates(status, end, today, expected):
    assert lifecycle(status, D(2026, 2, 1), end, today) == expected


# --- calendars and placement ---------------------------------------------------------------


def test_a_billing_day_calendar_places_a_charge_on_the_next_calendar_day():
    calendar = Calendar(15)
    assert calendar.place(D(2026, 3, 1)) == D(2026, 3, 15)
    assert calendar.place(D(2026, 3, 15)) == D(2026, 3, 15)  # on or after
    assert calendar.place(D(2026, 3, 16)) == D(2026, 4, 15)


def test_a_billing_day_31_calendar_clamps():
    calendar = Calendar(31)
    assert calendar.place(D(2026, 2, 1)) == D(2026, 2, 28)
    assert calendar.place(D(2026, 3, 1)) == D(2026, 3, 31)
    assert calendar.place(D(2026, 4, 1)) == D(2026, 4, 30)


def test_a_calendar_of_own_due_dates_ignores_other_dates_while_it_lasts():
    calendar = Calendar(
        None,
        own_dates=[D(2026, 1, 1), D(2026, 2, 1), D(2026, 3, 1)],
        all_dates=[D(2026, 1, 1), D(2026, 1, 15), D(2026, 2, 1), D(2026, 3, 1), D(2026, 3, 15)],
    )
    assert calendar.place(D(2026, 1, 15)) == D(2026, 2, 1)  # not the 15th: not own
    assert calendar.place(D(2026, 3, 1)) == D(2026, 3, 1)
    # Own dates have run out: everything billed to the customer is its calendar.
    assert calendar.place(D(2026, 3, 2)) == D(2026, 3, 15)
    assert calendar.place(D(2026, 3, 16)) is None  # waits for a date to come


def test_frozen_billing_dates_are_skipped():
    assert Calendar(1, taken=[D(2026, 3, 1)]).place(D(2026, 2, 20)) == D(2026, 4, 1)
    own = Calendar(None, own_dates=[D(2026, 3, 1), D(2026, 4, 1)], taken=[D(2026, 3, 1)])
    assert own.place(D(2026, 3, 1)) == D(2026, 4, 1)
