"""The pure planner (SPEC §3): slots per item, period part and serviced customer, their
due dates, and the billing date each lands on in its billed customer's calendar."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from billing_core.domain.planning import anchor_day, plan
from billing_core.store.reference import (
    CustomerInfo,
    ItemInfo,
    PriceInfo,
    Reference,
    SubscriptionInfo,
)

D = date

PRICES = {
    "fee": PriceInfo("fee", "Fee", None, "USD", "flat", None, {"model": "flat", "amount": "310"}),
    "pro": PriceInfo("pro", "Pro", None, "USD", "flat", None, {"model": "flat", "amount": "620"}),
    "calls": PriceInfo(
        "calls",
        "Calls",
        None,
        "USD",
        "per_unit",
        "api",
        {"model": "per_unit", "unit_price": "0.01"},
    ),
}


def customer(cid, parent=None, bill_to=None, billing_day=None, timezone="UTC"):
    bill_to = bill_to or ("parent" if parent else "self")
    return CustomerInfo(
        cid, cid.title(), "USD", timezone, parent, bill_to, billing_day, None, "billed", "x", ""
    )


def item(price, timing="in_arrears", phase=0, phase_start=None, pool=None):
    return ItemInfo(phase, phase_start or D(2000, 1, 1), price, timing, pool)


def sub(
    sid,
    customer_id,
    start,
    items,
    end=None,
    cadence="monthly",
    billing_day=1,
    rollup=None,
    align=False,
    status="active",
    minimum=None,
):
    return SubscriptionInfo(
        sid,
        customer_id,
        start,
        end,
        cadence,
        billing_day,
        rollup,
        align,
        status,
        minimum,
        (),
        tuple(items),
    )


def reference(customers, subscriptions) -> Reference:
    """A Reference with each customer's family set to the root of its tree."""
    by_id = {c.id: c for c in customers}

    def root(cid):
        while by_id[cid].parent_id:
            cid = by_id[cid].parent_id
        return cid

    fixed = {c.id: c.__class__(**{**c.__dict__, "family_id": root(c.id)}) for c in customers}
    return Reference(
        customers=fixed,
        subscriptions={s.id: s for s in subscriptions},
        prices=PRICES,
        metrics={"api": "sum"},
        metric_names={"api": "API calls"},
    )


def rows(result, **match):
    """(price or kind, serviced, period start, inclusive last day, due, billing date)."""
    out = []
    for s in result.slots:
        if all(getattr(s, k) == v for k, v in match.items()):
            last = D.fromordinal(s.period_end.toordinal() - 1)
            out.append(
                (s.price_code or s.kind, s.serviced_customer_id, s.period_start, last)
                + (s.due_date, s.billing_date)
            )
    return sorted(out, key=lambda r: (r[2], r[0], r[1]))


# --- due dates and backdating ---------------------------------------------------------------


def test_sequence_backdated_schedule_bills_february_on_1_march():
    # Created on 1 March, starting 1 February, monthly in arrears: February's period is
    # due the day after its last day, 1 March; March's is not due yet.
    ref = reference(
        [customer("late")], [sub("s", "late", D(2026, 2, 1), [item("fee")], end=D(2027, 1, 31))]
    )
    assert rows(plan(ref, D(2026, 3, 1), {})) == [
        ("fee", "late", D(2026, 2, 1), D(2026, 2, 28), D(2026, 3, 1), D(2026, 3, 1)),
    ]


def test_a_backdated_schedule_bills_every_past_period_in_the_first_close():
    ref = reference([customer("c")], [sub("s", "c", D(2025, 11, 1), [item("fee")])])
    got = rows(plan(ref, D(2026, 2, 1), {}))
    assert [(r[2], r[5]) for r in got] == [
        (D(2025, 11, 1), D(2025, 12, 1)),
        (D(2025, 12, 1), D(2026, 1, 1)),
        (D(2026, 1, 1), D(2026, 2, 1)),
    ]


def test_in_advance_fees_are_due_on_the_first_day_of_each_period():
    # Sequence: start 14 March, periods on the 1st, in advance: the partial period is due
    # (and billed) on 14 March, April's on 1 April.
    ref = reference([customer("uk")], [sub("s", "uk", D(2023, 3, 14), [item("fee", "in_advance")])])
    got = plan(ref, D(2023, 4, 1), {})
    assert rows(got) == [
        ("fee", "uk", D(2023, 3, 14), D(2023, 3, 31), D(2023, 3, 14), D(2023, 3, 14)),
        ("fee", "uk", D(2023, 4, 1), D(2023, 4, 30), D(2023, 4, 1), D(2023, 4, 1)),
    ]
    first = next(s for s in got.slots if s.period_start == D(2023, 3, 14))
    assert (first.full_start, first.full_end) == (D(2023, 3, 1), D(2023, 4, 1))  # 18/31


def test_slots_due_after_the_close_date_are_left_for_a_later_close():
    ref = reference(
        [customer("c")],
        [sub("s", "c", D(2026, 1, 1), [item("fee", "in_advance"), item("calls")])],
    )
    got = rows(plan(ref, D(2026, 2, 1), {}))
    # In advance: January (due 1 Jan) and February (due 1 Feb). In arrears: January's
    # usage (due 1 Feb); February's usage is due 1 March, after the close.
    assert [(r[0], r[2]) for r in got] == [
        ("calls", D(2026, 1, 1)),
        ("fee", D(2026, 1, 1)),
        ("fee", D(2026, 2, 1)),
    ]


def test_a_trailing_partial_period_is_due_the_day_after_the_end():
    ref = reference(
        [customer("c")], [sub("s", "c", D(2026, 1, 1), [item("fee")], end=D(2026, 2, 14))]
    )
    got = plan(ref, D(2026, 12, 31), {})
    assert rows(got) == [
        ("fee", "c", D(2026, 1, 1), D(2026, 1, 31), D(2026, 2, 1), D(2026, 2, 1)),
        ("fee", "c", D(2026, 2, 1), D(2026, 2, 14), D(2026, 2, 15), D(2026, 2, 15)),
    ]
    last = got.slots[-1]
    assert (last.full_start, last.full_end) == (D(2026, 2, 1), D(2026, 3, 1))  # 14/28


def test_draft_subscriptions_bill_nothing_and_give_no_billing_dates():
    ref = reference(
        [customer("p"), customer("k", parent="p")],
        [
            sub("own", "p", D(2026, 1, 10), [item("fee")], status="draft"),
            sub("kid", "k", D(2026, 1, 1), [item("fee")]),
        ],
    )
    got = plan(ref, D(2026, 3, 1), {})
    assert {s.subscription_id for s in got.slots} == {"kid"}
    # The payer's only own schedule is a draft, so it has no own dates: the child's charge
    # lands on its own due date, not on the 10th.
    assert [s.billing_date for s in got.slots] == [D(2026, 2, 1), D(2026, 3, 1)]


# --- phases -------------------------------------------------------------------------------


def test_a_phase_from_a_period_boundary_replaces_the_items():
    ref = reference(
        [customer("c")],
        [
            sub(
                "s",
                "c",
                D(2026, 1, 1),
                [item("fee"), item("calls"), item("pro", phase=1, phase_start=D(2026, 3, 1))],
            )
        ],
    )
    got = rows(plan(ref, D(2026, 5, 1), {}))
    assert [(r[0], r[2]) for r in got] == [
        ("calls", D(2026, 1, 1)),
        ("fee", D(2026, 1, 1)),
        ("calls", D(2026, 2, 1)),
        ("fee", D(2026, 2, 1)),
        ("pro", D(2026, 3, 1)),  # only the phase's items from its start
        ("pro", D(2026, 4, 1)),
    ]


def test_a_phase_inside_a_period_splits_it_and_every_part_is_due_with_the_period():
    ref = reference(
        [customer("c")],
        [
            sub(
                "s",
                "c",
                D(2026, 1, 1),
                [
                    item("fee", "in_advance"),
                    item("pro", "in_advance", phase=1, phase_start=D(2026, 2, 15)),
                ],
            )
        ],
    )
    got = plan(ref, D(2026, 2, 1), {})
    february = [s for s in got.slots if s.full_start == D(2026, 2, 1)]
    assert [(s.price_code, s.period_start, s.period_end, s.due_date) for s in february] == [
        ("fee", D(2026, 2, 1), D(2026, 2, 15), D(2026, 2, 1)),  # 14/28 of 310 = 155
        ("pro", D(2026, 2, 15), D(2026, 3, 1), D(2026, 2, 1)),  # 14/28 of 620 = 310
    ]
    assert all((s.full_start, s.full_end) == (D(2026, 2, 1), D(2026, 3, 1)) for s in february)


def test_a_minimum_is_one_slot_per_period_even_when_a_phase_splits_it():
    ref = reference(
        [customer("c")],
        [
            sub(
                "s",
                "c",
                D(2026, 1, 14),
                [item("fee"), item("pro", phase=1, phase_start=D(2026, 2, 10))],
                minimum=Decimal("1000"),
            )
        ],
    )
    got = rows(plan(ref, D(2026, 3, 1), {}), kind="minimum")
    # Leading partial 14-31 January, then February whole (the phase cut is inside it);
    # each minimum is due like an in-arrears charge.
    assert got == [
        ("minimum", "c", D(2026, 1, 14), D(2026, 1, 31), D(2026, 2, 1), D(2026, 2, 1)),
        ("minimum", "c", D(2026, 2, 1), D(2026, 2, 28), D(2026, 3, 1), D(2026, 3, 1)),
    ]


# --- billing dates and placement -------------------------------------------------------------


def test_a_payer_with_a_billing_day_bills_on_its_monthly_calendar():
    ref = reference(
        [customer("p", billing_day=15), customer("k", parent="p")],
        [sub("kid", "k", D(2026, 1, 1), [item("fee")])],
    )
    got = rows(plan(ref, D(2026, 3, 20), {}))
    # Due 1 Feb and 1 Mar: each on the payer's next 15th.
    assert [(r[4], r[5]) for r in got] == [
        (D(2026, 2, 1), D(2026, 2, 15)),
        (D(2026, 3, 1), D(2026, 3, 15)),
    ]
    assert all(r[1] == "k" for r in got)  # serviced by the child, billed to the parent


def test_a_payer_without_billing_day_bills_on_its_own_subscriptions_due_dates():
    # The parent's own schedule is due on the 10th (in advance, periods on the 10th); the
    # child's in-arrears charges due on the 1st wait for the parent's next 10th.
    ref = reference(
        [customer("p"), customer("k", parent="p")],
        [
            sub("own", "p", D(2026, 1, 10), [item("pro", "in_advance")], billing_day=10),
            sub("kid", "k", D(2026, 1, 1), [item("fee")]),
        ],
    )
    got = plan(ref, D(2026, 3, 31), {})
    assert rows(got, subscription_id="kid") == [
        ("fee", "k", D(2026, 1, 1), D(2026, 1, 31), D(2026, 2, 1), D(2026, 2, 10)),
        ("fee", "k", D(2026, 2, 1), D(2026, 2, 28), D(2026, 3, 1), D(2026, 3, 10)),
        # Due 1 April: the charge exists only once it is due.
    ]
    assert [s.billing_date for s in got.slots if s.subscription_id == "own"] == [
        D(2026, 1, 10),
        D(2026, 2, 10),
        D(2026, 3, 10),
    ]


def test_a_payer_without_own_subscriptions_bills_each_childs_due_dates():
    # Children keep their own cadence: A due on the 1st, B on the 15th.
    ref = reference(
        [customer("p"), customer("a", parent="p"), customer("b", parent="p")],
        [
            sub("sa", "a", D(2026, 1, 1), [item("fee")]),
            sub("sb", "b", D(2026, 1, 15), [item("fee")], billing_day=15),
        ],
    )
    got = rows(plan(ref, D(2026, 2, 28), {}))
    assert [(r[1], r[4], r[5]) for r in got] == [
        ("a", D(2026, 2, 1), D(2026, 2, 1)),
        ("b", D(2026, 2, 15), D(2026, 2, 15)),
    ]


def test_a_charge_waits_while_its_payer_has_no_billing_date_yet():
    # The parent's own schedule starts in June: the child's charge due 1 February lands
    # on the parent's first own due date, 1 June, after the close date.
    ref = reference(
        [customer("p"), customer("k", parent="p")],
        [
            sub("own", "p", D(2026, 6, 1), [item("pro", "in_advance")]),
            sub("kid", "k", D(2026, 1, 1), [item("fee")]),
        ],
    )
    (slot,) = plan(ref, D(2026, 2, 1), {}).slots
    assert (slot.due_date, slot.billing_date) == (D(2026, 2, 1), D(2026, 6, 1))


def test_after_the_payers_own_schedule_ends_rolled_up_charges_keep_their_due_dates():
    ref = reference(
        [customer("p"), customer("k", parent="p")],
        [
            sub("own", "p", D(2026, 1, 1), [item("pro", "in_advance")], end=D(2026, 1, 31)),
            sub("kid", "k", D(2026, 1, 15), [item("fee")], billing_day=15),
        ],
    )
    got = rows(plan(ref, D(2026, 3, 15), {}), subscription_id="kid")
    # The parent's only own date is 1 January (January in advance); the child's charges
    # due 15 February and 15 March come after it and land on their own due dates.
    assert [(r[4], r[5]) for r in got] == [
        (D(2026, 2, 15), D(2026, 2, 15)),
        (D(2026, 3, 15), D(2026, 3, 15)),
    ]


def test_a_child_paying_for_itself_is_its_own_billed_customer():
    ref = reference(
        [customer("p", billing_day=20), customer("k", parent="p")],
        [sub("kid", "k", D(2026, 1, 1), [item("fee")], rollup=False)],
    )
    (slot,) = plan(ref, D(2026, 2, 1), {}).slots
    assert (slot.billed_customer_id, slot.billing_date) == ("k", D(2026, 2, 1))


def test_frozen_billing_dates_push_charges_to_the_next_open_one():
    ref = reference([customer("c")], [sub("s", "c", D(2026, 1, 1), [item("fee")])])
    got = plan(ref, D(2026, 3, 1), {"c": {D(2026, 2, 1)}})
    # January's charge was never billed on 1 February (issued without it): next date.
    assert [(s.due_date, s.billing_date) for s in got.slots] == [
        (D(2026, 2, 1), D(2026, 3, 1)),
        (D(2026, 3, 1), D(2026, 3, 1)),
    ]


# --- align_to_parent ---------------------------------------------------------------------


def test_align_to_parent_reanchors_on_the_payers_billing_day_and_prorates_the_first():
    ref = reference(
        [customer("p", billing_day=1), customer("k", parent="p")],
        [sub("kid", "k", D(2026, 1, 10), [item("fee")], billing_day=15, align=True)],
    )
    assert anchor_day(ref.subscriptions["kid"], ref, ref.hierarchy()) == 1
    got = plan(ref, D(2026, 3, 1), {})
    assert [(s.period_start, s.period_end, s.full_start, s.billing_date) for s in got.slots] == [
        # 10-31 January (22 days) against January's 31: 310 x 22/31 = 220.
        (D(2026, 1, 10), D(2026, 2, 1), D(2026, 1, 1), D(2026, 2, 1)),
        (D(2026, 2, 1), D(2026, 3, 1), D(2026, 2, 1), D(2026, 3, 1)),
    ]


def test_align_to_parent_without_a_billing_day_takes_the_payers_first_schedule():
    ref = reference(
        [customer("p"), customer("k", parent="p")],
        [
            sub("later", "p", D(2026, 3, 1), [item("pro")], billing_day=20),
            sub("first", "p", D(2026, 1, 5), [item("pro")], billing_day=5),
            sub("draft", "p", D(2025, 1, 1), [item("pro")], billing_day=25, status="draft"),
            sub("kid", "k", D(2026, 1, 1), [item("fee")], billing_day=1, align=True),
        ],
    )
    # The draft does not count; of the active ones, the earliest start is on the 5th.
    assert anchor_day(ref.subscriptions["kid"], ref, ref.hierarchy()) == 5
    kid = [s for s in plan(ref, D(2026, 2, 5), {}).slots if s.subscription_id == "kid"]
    # 1-4 January (4 days) against 5 Dec - 4 Jan (31 days), then 5 January on.
    assert [(s.period_start, s.period_end, s.full_start) for s in kid] == [
        (D(2026, 1, 1), D(2026, 1, 5), D(2025, 12, 5)),
        (D(2026, 1, 5), D(2026, 2, 5), D(2026, 1, 5)),
    ]


def test_without_align_to_parent_a_child_keeps_its_own_anchor():
    ref = reference(
        [customer("p", billing_day=1), customer("k", parent="p")],
        [sub("kid", "k", D(2026, 1, 10), [item("fee")], billing_day=15)],
    )
    got = plan(ref, D(2026, 2, 28), {})
    assert [(s.period_start, s.period_end) for s in got.slots] == [
        (D(2026, 1, 10), D(2026, 1, 15)),  # leading partial up to its own anchor
        (D(2026, 1, 15), D(2026, 2, 15)),
    ]
    assert [s.billing_date for s in got.slots] == [D(2026, 2, 1), D(2026, 3, 1)]


# --- pools -------------------------------------------------------------------------------


def test_a_pool_takes_in_descendants_billing_through_the_owner_but_not_own_pricers():
    ref = reference(
        [
            customer("hq"),
            customer("a", parent="hq"),
            customer("b", parent="hq"),
            customer("own", parent="hq", bill_to="self"),
        ],
        [
            sub("pool", "hq", D(2026, 1, 1), [item("calls", pool="breakdown")]),
            sub("sb", "b", D(2026, 1, 1), [item("calls")], rollup=False),
        ],
    )
    got = plan(ref, D(2026, 2, 1), {})
    pooled = sorted(s.serviced_customer_id for s in got.slots if s.subscription_id == "pool")
    assert pooled == ["a", "hq"]  # b prices the metric itself; own pays for itself
    assert any("b has its own price" in w for w in got.warnings)


def test_a_child_pool_bills_each_members_share_to_that_member():
    ref = reference(
        [customer("hq"), customer("a", parent="hq")],
        [sub("pool", "hq", D(2026, 1, 1), [item("calls", pool="child")])],
    )
    got = plan(ref, D(2026, 2, 1), {})
    assert sorted((s.serviced_customer_id, s.billed_customer_id) for s in got.slots) == [
        ("a", "a"),
        ("hq", "hq"),
    ]


def test_phase_numbers_with_a_gap_still_bill_each_phase_from_its_start():
    # Items stored under phases 0 and 2 only (phase 1 had none): phase 2's items start
    # on phase 2's date, not on the list position's.
    ref = reference(
        [customer("c")],
        [
            sub(
                "s",
                "c",
                D(2026, 1, 1),
                [item("fee", "in_advance"), item("pro", "in_advance", 2, D(2026, 3, 1))],
            )
        ],
    )
    got = rows(plan(ref, D(2026, 4, 1), {}))
    assert [(r[0], r[2]) for r in got] == [
        ("fee", D(2026, 1, 1)),
        ("fee", D(2026, 2, 1)),
        ("pro", D(2026, 3, 1)),
        ("pro", D(2026, 4, 1)),
    ]


def test_align_to_parent_on_a_child_paying_for_itself_follows_its_own_calendar():
    # The billed customer is the child itself: its billing_day (20) is the anchor; without
    # one, the schedule keeps its own day.
    ref = reference(
        [customer("p", billing_day=1), customer("k", parent="p", billing_day=20)],
        [
            sub("kid", "k", D(2026, 1, 1), [item("fee")], billing_day=5, rollup=False, align=True),
            sub("plain", "p", D(2026, 1, 1), [item("fee")], billing_day=5, align=True),
        ],
    )
    h = ref.hierarchy()
    assert anchor_day(ref.subscriptions["kid"], ref, h) == 20
    assert anchor_day(ref.subscriptions["plain"], ref, h) == 1  # p's own billing_day
    ref.customers["k"] = customer("k", parent="p")  # the same child without a billing_day
    assert anchor_day(ref.subscriptions["kid"], ref, ref.hierarchy()) == 5


def test_a_child_pool_share_is_due_on_the_pool_items_billing_date():
    # The owner bills on its 15th; the pool item (January, in arrears) is due 1 February
    # and billed 15 February. Each member's share is due that day, then placed on the
    # member's own calendar: A has none (15 February), B bills on its 20th.
    ref = reference(
        [
            customer("hq", billing_day=15),
            customer("a", parent="hq"),
            customer("b", parent="hq", billing_day=20),
        ],
        [sub("pool", "hq", D(2026, 1, 1), [item("calls", pool="child")])],
    )
    got = plan(ref, D(2026, 2, 28), {})
    assert sorted((s.serviced_customer_id, s.due_date, s.billing_date) for s in got.slots) == [
        ("a", D(2026, 2, 15), D(2026, 2, 15)),
        ("b", D(2026, 2, 15), D(2026, 2, 20)),
        ("hq", D(2026, 2, 1), D(2026, 2, 15)),
    ]
    # Before the pool item's billing date the members' shares are not due yet.
    early = plan(ref, D(2026, 2, 10), {})
    assert [(s.serviced_customer_id, s.billing_date) for s in early.slots] == [
        ("hq", D(2026, 2, 15))
    ]
