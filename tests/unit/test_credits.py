"""Credit planning without a store: order within a scope, narrowest scope first, never
below zero, usable dates."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from billing_core.steps.credits import grant_order, plan_credits, usable_on

D = Decimal


@dataclass
class Grant:
    id: str
    customer_id: str
    amount: str = "1000.00"
    subscription_id: str | None = None
    priority: int = 100
    effective: date = date(2026, 1, 1)
    expires: date | None = None
    currency: str = "USD"


def plan(parts, grants, billed="hq", balance=None):
    balance = balance or {g.id: D(g.amount) for g in grants}
    return [(g.id, a) for g, a in plan_credits(parts, billed, grants, balance)]


def test_order_within_a_scope():
    grants = [
        Grant("z-late-expiry", "hq", priority=5, expires=date(2026, 12, 31)),
        Grant("no-expiry", "hq", priority=5),
        Grant("early-expiry", "hq", priority=5, expires=date(2026, 3, 31)),
        Grant("low-priority-number", "hq", priority=1),
        Grant("b-same", "hq", priority=5, expires=date(2026, 12, 31), effective=date(2025, 6, 1)),
        Grant("a-same", "hq", priority=5, expires=date(2026, 12, 31), effective=date(2025, 6, 1)),
    ]
    assert [g.id for g in sorted(grants, key=grant_order)] == [
        "low-priority-number",  # lower priority number first
        "early-expiry",  # then the earliest expiry
        "a-same",  # same expiry: the earliest effective date, then the id
        "b-same",
        "z-late-expiry",
        "no-expiry",  # no expiry last
    ]


def test_narrowest_scope_first_whatever_the_priority():
    parts = [
        ("hq", "sub-hq", D("100.00")),
        ("child", "sub-child", D("60.00")),
        ("child", "sub-child-2", D("40.00")),
    ]
    grants = [
        Grant("billed", "hq", "500.00", priority=1),
        Grant("child-own", "child", "30.00", priority=50),
        Grant("child-sub", "child", "50.00", subscription_id="sub-child", priority=99),
    ]
    # sub-child's grant takes 50.00 of sub-child's 60.00; the child's own grant takes
    # 30.00 of the child's remaining 10.00 + 40.00; the billed customer's grant pays the
    # rest: 200.00 - 50.00 - 30.00 = 120.00.
    assert plan(parts, grants) == [
        ("child-sub", D("50.00")),
        ("child-own", D("30.00")),
        ("billed", D("120.00")),
    ]


def test_a_subscription_grant_offsets_only_that_subscription_with_its_tax():
    parts = [
        ("child", "sub-a", D("40.00")),
        ("child", "sub-a", D("4.00")),  # its tax
        ("child", "sub-b", D("500.00")),
    ]
    grants = [Grant("for-a", "child", "100.00", subscription_id="sub-a")]
    assert plan(parts, grants) == [("for-a", D("44.00"))]


def test_a_child_grant_offsets_only_that_child():
    parts = [("child", "s1", D("25.00")), ("other", "s2", D("500.00")), ("hq", "s3", D("10"))]
    grants = [Grant("child-own", "child", "100.00")]
    assert plan(parts, grants) == [("child-own", D("25.00"))]


def test_the_total_never_goes_below_zero():
    # A negative late-usage adjustment on the parent leaves 80.00 - 30.00 = 50.00 to pay;
    # the child's grant may offset its 80.00 only up to what the invoice owes.
    parts = [("child", "s1", D("80.00")), ("hq", "s0", D("-30.00"))]
    grants = [Grant("child-own", "child", "100.00"), Grant("billed", "hq", "100.00")]
    assert plan(parts, grants) == [("child-own", D("50.00"))]


def test_balance_is_drawn_down_across_invoices():
    grants = [Grant("promo", "hq", "150.00")]
    balance = {"promo": D("150.00")}
    first = plan([("hq", "s", D("100.00"))], grants, balance=balance)
    second = plan([("hq", "s", D("100.00"))], grants, balance=balance)
    assert first == [("promo", D("100.00"))]
    assert second == [("promo", D("50.00"))]  # 150.00 - 100.00 left
    assert balance == {"promo": D("0.00")}


def test_usable_from_effective_through_expires_in_its_currency():
    grant = Grant("g", "hq", effective=date(2026, 2, 1), expires=date(2026, 3, 1))
    assert not usable_on(grant, date(2026, 1, 31), "USD")
    assert usable_on(grant, date(2026, 2, 1), "USD")  # effective day included
    assert usable_on(grant, date(2026, 3, 1), "USD")  # expiry day included
    assert not usable_on(grant, date(2026, 3, 2), "USD")
    assert not usable_on(grant, date(2026, 2, 15), "EUR")
