"""Property-based tests of the planner: for random schedules and close dates, every item
bills each day of service exactly once, nothing is billed before it is due, and no charge
lands before its due date."""

from __future__ import annotations

from datetime import date, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from billing_core.domain.planning import plan
from billing_core.domain.schedules import service_periods
from tests.unit.test_planning import customer, item, reference, sub

DAY = timedelta(days=1)


@st.composite
def cases(draw):
    start = draw(st.dates(min_value=date(2023, 1, 1), max_value=date(2027, 12, 31)))
    end = draw(st.none() | st.integers(0, 800).map(lambda n: start + timedelta(days=n)))
    cadence = draw(st.sampled_from(["monthly", "quarterly", "annual"]))
    billing_day = draw(st.integers(1, 31))
    timing = draw(st.sampled_from(["in_advance", "in_arrears"]))
    payer_day = draw(st.none() | st.integers(1, 31))
    through = start + timedelta(days=draw(st.integers(0, 900)))
    return start, end, cadence, billing_day, timing, payer_day, through


@given(cases())
@settings(max_examples=300, deadline=None)
def test_each_day_of_service_is_billed_once_and_never_early(case):
    start, end, cadence, billing_day, timing, payer_day, through = case
    ref = reference(
        [customer("p", billing_day=payer_day), customer("k", parent="p")],
        [
            sub(
                "s",
                "k",
                start,
                [item("fee", timing)],
                end=end,
                cadence=cadence,
                billing_day=billing_day,
            )
        ],
    )
    slots = sorted(plan(ref, through, {}).slots, key=lambda s: s.period_start)
    for slot in slots:
        assert slot.due_date <= through  # only what is due by the close
        assert slot.billing_date is not None and slot.billing_date >= slot.due_date
        if payer_day is None:
            # No calendar and no own schedule: the payer bills on the charges' due dates.
            assert slot.billing_date == slot.due_date
        expected_due = slot.period_start if timing == "in_advance" else slot.period_end
        assert slot.due_date == expected_due
    # The billed parts are consecutive from the start: no day twice, none skipped.
    if slots:
        assert slots[0].period_start == start
    for before, after in zip(slots, slots[1:], strict=False):
        assert before.period_end == after.period_start
    # Everything served and due by the close is billed, nothing more.
    periods = service_periods(start, end, cadence, billing_day, through + DAY)
    due = [(p.start, p.end) for p in periods if p.due_date(timing) <= through]
    assert [(s.period_start, s.period_end) for s in slots] == due
