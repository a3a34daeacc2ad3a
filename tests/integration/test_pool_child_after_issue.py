"""Where a pooled share lands does not depend on what an earlier close issued (SPEC §3, §4,
§9): a close that issues through one date, then a close through a later one, give every
later invoice exactly as one close through the later date gives it.

A `pool: child` member's share is due on the pool item's billing date (on the pool owner's
payer's calendar), then lands on the member's own first billing date on or after that.
Issuing the owner's invoice of that date must not push the share's due date to the owner's
next billing date, and so the share a month later on the member's calendar.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from tests.conftest import using_store
from tests.helpers import close, import_yaml, ingest_csv, invoices

SYDNEY = ZoneInfo("Australia/Sydney")
FIRST_USAGE, LAST_USAGE = date(2027, 7, 11), date(2027, 12, 5)
LAST_CLOSE = "2027-12-05"


# The member's own schedule, paid by itself: its calendar is its own subscription's due
# dates (the 7th), not a billing day.
MEMBER_OWN_SCHEDULE = (
    "  - {id: member-seats, customer: member, start: 2027-07-07, cadence: monthly,"
    " billing_day: 7, rollup: false, items: [{price: member-seats, timing: in_arrears}]}\n"
)


def catalog(
    *,
    pool: str = "child",
    cadence: str = "monthly",
    member: str = "billing_day: 7",
    owner: str = "billing_day: 17",
    top: bool = False,
    align: bool = False,
    sub_day: int = 17,
    own_schedule: bool = False,
    terms: str = "",
) -> str:
    """A KWD family in Sydney: `owner` pools its members' usage on a graduated price;
    `member` bills through it (`bill_to: parent`) with no pooled price of its own.
    With `top`, the owner itself bills to a parent (`top`, billing day 17)."""
    owner_parent = "parent: top, bill_to: parent, " if top else ""
    top_line = (
        "  - {id: top, name: Top Holdings, currency: KWD, timezone: Australia/Sydney,"
        " billing_day: 17}\n"
        if top
        else ""
    )
    return (
        "customers:\n"
        + top_line
        + "  - {id: owner, name: Owner Co, currency: KWD, timezone: Australia/Sydney"
        + (", " + owner_parent + owner if owner_parent or owner else "").rstrip(", ")
        + "}\n"
        "  - {id: member, name: Member Co, currency: KWD, timezone: Australia/Sydney,"
        " parent: owner, bill_to: parent" + (", " + member if member else "") + "}\n"
        "metrics:\n"
        "  - {code: calls, name: Calls, aggregation: sum, field: quantity}\n"
        "  - {code: seats, name: Seats, aggregation: max, field: quantity}\n"
        "prices:\n"
        "  - {code: calls-tiered, product: Calls, currency: KWD, model: graduated,"
        ' metric: calls, tiers: [{up_to: 1000, unit_price: "0.125"},'
        ' {up_to: 5000, unit_price: "0.1005", flat_fee: "2.500"},'
        ' {up_to: null, unit_price: "0.0875"}]}\n'
        "  - {code: member-seats, product: Seats, currency: KWD, model: per_unit,"
        ' metric: seats, unit_price: "1.750"}\n'
        "subscriptions:\n"
        f"  - {{id: pool, customer: owner, start: 2027-07-11, cadence: {cadence},"
        f" billing_day: {sub_day}, align_to_parent: {str(align).lower()},"
        f" items: [{{price: calls-tiered, timing: in_arrears, pool: {pool}}}]{terms}}}\n"
        + (MEMBER_OWN_SCHEDULE if own_schedule else "")
    )


def usage() -> str:
    """Usage of both customers every three days from 11 July to 5 December 2027, at local
    times in Sydney: the owner's at local midnight (one on its period boundary of 17 July,
    which belongs to the period it starts), the member's in the afternoon."""
    rows = ["event_id,customer,metric,timestamp,quantity"]
    day, n = FIRST_USAGE, 0
    while day <= LAST_USAGE:
        for customer, hour, base in (("owner", 0, 310), ("member", 13, 170)):
            n += 1
            stamp = datetime(day.year, day.month, day.day, hour, 0, tzinfo=SYDNEY)
            quantity = base + (n * 37) % 290
            rows.append(f"e{n},{customer},calls,{stamp.isoformat()},{quantity}")
            if customer == "member":
                rows.append(f"s{n},member,seats,{stamp.isoformat()},{3 + n % 4}")
        day += timedelta(days=3)
    return "\n".join(rows) + "\n"


def comparable(invoice: dict) -> dict:
    """An invoice without what only issuing gives it (number, status, dates of issue)."""
    drop = {"id", "number", "status", "issued_at", "issue_date", "due_date"}
    return {k: v for k, v in invoice.items() if k not in drop}


def by_date(found: list[dict]) -> dict[tuple[str, str], dict]:
    return {(i["billed_customer"], i["billing_date"]): comparable(i) for i in found}


def closed_in_one(another_store, text: str) -> list[dict]:
    """A fresh store of the same backend, closed once through the last date."""
    with using_store(another_store("single")) as other:
        import_yaml(text, folder=other.workdir)
        ingest_csv(usage(), folder=other.workdir)
        close(LAST_CLOSE)
        return invoices()


# case: (catalog options, date of the issuing close, where the member's share of the
# owner's period from 17 July lands).
CASES = {
    # The reported case: the member's own billing day is the 7th; the share is due with
    # the owner's 17 August invoice, issued by the first close, and lands on 7 September.
    "member-billing-day": (dict(), "2027-08-20", "2027-09-07"),
    # The member has no billing day: its calendar is its own schedule's due dates (the 7th).
    "member-own-schedule": (dict(member="", own_schedule=True), "2027-08-20", "2027-09-07"),
    # The owner has no billing day: its calendar is its own schedule's due dates (the 17th).
    "owner-own-schedule": (dict(owner=""), "2027-08-20", "2027-09-07"),
    # A quarterly pool: the owner's 17 October invoice is issued before the member's share.
    "quarterly": (dict(cadence="quarterly"), "2027-10-20", "2027-11-07"),
    # The owner bills to its own parent, its schedule (day 11) re-anchored on the parent's
    # billing day, the 17th.
    # A minimum and discounts on the pool's subscription: the true-up settled with the
    # owner's invoice counts the member's share of the period (and its discounts) that
    # bills later, as a single close through a later date counts it.
    "minimum-and-discounts": (
        dict(
            terms=', minimum: "900.000", discounts: [{type: percentage, value: "10"},'
            ' {type: fixed, amount: "600.000"}]'
        ),
        "2027-08-20",
        "2027-09-07",
    ),
    "align-to-parent": (
        dict(top=True, align=True, sub_day=11, owner=""),
        "2027-08-20",
        "2027-09-07",
    ),
}


def member_shares(found: list[dict]) -> dict[str, str]:
    """Period start -> billing date of each of the member's shares of the pool."""
    return {
        x["period_start"]: i["billing_date"]
        for i in found
        if i["billed_customer"] == "member"
        for x in i["lines"]
        if x["price"] == "calls-tiered" and x["kind"] == "usage"
    }


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_child_share_lands_where_one_close_puts_it_after_an_issuing_close(
    store, another_store, case
):
    options, issued_through, expected = CASES[case]
    text = catalog(**options)
    single = closed_in_one(another_store, text)

    import_yaml(text)
    ingest_csv(usage())
    close(issued_through, issue=True)
    assert {i["billing_date"] for i in invoices("issued")} >= {"2027-07-17", "2027-08-07"}
    close(LAST_CLOSE)
    stepped = invoices()

    # Every invoice after the issuing close is the one a single close gives, and the
    # issued ones are what a single close drafts for their dates.
    later = {k: v for k, v in by_date(stepped).items() if k[1] > issued_through}
    assert later == {k: v for k, v in by_date(single).items() if k[1] > issued_through}
    assert by_date(stepped) == by_date(single)

    # The share of the owner's period from 17 July is on the member's first billing date
    # on or after the pool item's billing date.
    shares = member_shares(stepped)
    assert shares["2027-07-17"] == expected
    # And so is every other share: on the member's first invoice on or after the owner's
    # payer's first invoice after the period starts.
    owner_dates = sorted({i["billing_date"] for i in stepped if i["billed_customer"] != "member"})
    member_dates = sorted({i["billing_date"] for i in stepped if i["billed_customer"] == "member"})
    for start, billed_on in shares.items():
        item_date = min(d for d in owner_dates if d > start)
        assert billed_on == min(d for d in member_dates if d >= item_date), (start, billed_on)


@pytest.mark.parametrize("pool", ["breakdown", "summary"])
def test_a_shared_pool_is_billed_alike_with_or_without_an_issuing_close(store, another_store, pool):
    text = catalog(pool=pool)
    single = closed_in_one(another_store, text)
    import_yaml(text)
    ingest_csv(usage())
    close("2027-08-20", issue=True)
    close(LAST_CLOSE)
    assert by_date(invoices()) == by_date(single)
