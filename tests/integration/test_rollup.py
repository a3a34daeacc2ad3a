"""Roll-up on each store: who pays through any depth, mixed bill_to, per-subscription
opt-out, section order, summary lines, tax bases, and no currency conversion."""

from __future__ import annotations

import pytest

from billing_core.inputs.catalog import CatalogError
from tests.helpers import close, import_yaml, invoices, lines, one

# root pays for emea and, through emea, for germany; labs pays for itself and for labs-x;
# apac bills one subscription to root and keeps the other.
FAMILY = """
customers:
  - {id: root, name: Orbit Group, currency: USD}
  - {id: emea, name: Orbit EMEA, currency: USD, parent: root}
  - {id: germany, name: Orbit Germany, currency: USD, parent: emea}
  - {id: labs, name: Orbit Labs, currency: USD, parent: root, bill_to: self}
  - {id: labs-x, name: Labs X, currency: USD, parent: labs}
  - {id: apac, name: Orbit APAC, currency: USD, parent: root, bill_to: parent}
prices:
  - {code: platform, product: Platform, bundle: Core, currency: USD, model: flat, amount: "1000.00"}
  - {code: support, product: Support, currency: USD, model: flat, amount: "10.00"}
  - {code: emea-fee, product: Regional fee, currency: USD, model: flat, amount: "200.00"}
  - {code: de-fee, product: Country fee, currency: USD, model: flat, amount: "300.00"}
  - {code: labs-fee, product: Lab seats, currency: USD, model: flat, amount: "400.00"}
  - {code: labs-own, product: Lab tools, currency: USD, model: flat, amount: "50.00"}
  - {code: labsx-fee, product: Experiments, currency: USD, model: flat, amount: "70.00"}
  - {code: apac-fee, product: Regional fee, currency: USD, model: flat, amount: "500.00"}
  - {code: apac-own, product: Local add-on, currency: USD, model: flat, amount: "80.00"}
subscriptions:
  - {id: s-root, customer: root, start: 2026-01-01, cadence: monthly, billing_day: 1,
     items: [{price: support, timing: in_arrears}, {price: platform, timing: in_arrears}]}
  - {id: s-emea, customer: emea, start: 2026-01-01, cadence: monthly, billing_day: 1,
     items: [{price: emea-fee, timing: in_arrears}]}
  - {id: s-germany, customer: germany, start: 2026-01-01, cadence: monthly, billing_day: 1,
     items: [{price: de-fee, timing: in_arrears}]}
  - {id: s-labs-up, customer: labs, start: 2026-01-01, cadence: monthly, billing_day: 1,
     rollup: true, items: [{price: labs-fee, timing: in_arrears}]}
  - {id: s-labs-own, customer: labs, start: 2026-01-01, cadence: monthly, billing_day: 1,
     items: [{price: labs-own, timing: in_arrears}]}
  - {id: s-labs-x, customer: labs-x, start: 2026-01-01, cadence: monthly, billing_day: 1,
     items: [{price: labsx-fee, timing: in_arrears}]}
  - {id: s-apac, customer: apac, start: 2026-01-01, cadence: monthly, billing_day: 1,
     items: [{price: apac-fee, timing: in_arrears}]}
  - {id: s-apac-own, customer: apac, start: 2026-01-01, cadence: monthly, billing_day: 1,
     rollup: false, items: [{price: apac-own, timing: in_arrears}]}
"""


def test_multi_level_rollup_mixed_bill_to_and_opt_out(store):
    import_yaml(FAMILY)
    close("2026-02-01")
    assert sorted((i["billed_customer"], i["total"]) for i in invoices()) == [
        ("apac", "80.00"),  # s-apac-own opted out of the roll-up: apac pays it
        ("labs", "120.00"),  # labs' own 50.00 + labs-x's 70.00 (labs bills itself)
        # root: its own 1000.00 + 10.00, emea 200.00, germany 300.00 (two levels up),
        # labs' rolled-up 400.00, apac's 500.00 = 2410.00
        ("root", "2410.00"),
    ]
    root = one(billed_customer="root")
    # The billed customer's section first, then the others by name; within a section
    # bundles first (Core), then products.
    assert [(x["serviced_customer"], x["subscription"], x["product"]) for x in root["lines"]] == [
        ("root", "s-root", "Platform"),
        ("root", "s-root", "Support"),
        ("apac", "s-apac", "Regional fee"),
        ("emea", "s-emea", "Regional fee"),
        ("germany", "s-germany", "Country fee"),
        ("labs", "s-labs-up", "Lab seats"),
    ]
    labs = one(billed_customer="labs")
    assert [(x["serviced_customer"], x["amount"]) for x in labs["lines"]] == [
        ("labs", "50.00"),  # the billed customer first, though "Labs X" sorts before
        ("labs-x", "70.00"),
    ]


def test_moving_a_child_rebuilds_the_drafts_of_both_payers(store):
    import_yaml(FAMILY)
    close("2026-02-01")
    # germany now pays for itself: root's draft loses 300.00, germany gets its own.
    import_yaml(
        """
    customers:
      - {id: germany, name: Orbit Germany, currency: USD, parent: emea, bill_to: self}
    """,
        name="move.yaml",
    )
    close("2026-02-01")
    assert one(billed_customer="root")["total"] == "2110.00"  # 2410.00 - 300.00
    assert one(billed_customer="germany")["total"] == "300.00"


def test_summary_lines_and_the_credits_of_whoever_they_merge(store):
    import_yaml(
        """
    customers:
      - {id: hq, name: HQ, currency: USD, rollup_lines: summary}
      - {id: a, name: Branch A, currency: USD, parent: hq}
      - {id: b, name: Branch B, currency: USD, parent: hq}
    prices:
      - {code: seat-fee, product: Seat fee, currency: USD, model: flat, amount: "100.00"}
    subscriptions:
      - {id: sub-a, customer: a, start: 2026-01-01, cadence: monthly, billing_day: 1,
         items: [{price: seat-fee, timing: in_arrears}]}
      - {id: sub-b, customer: b, start: 2026-01-01, cadence: monthly, billing_day: 1,
         items: [{price: seat-fee, timing: in_arrears}]}
    credits:
      - {id: a-own, customer: a, amount: "30.00", currency: USD, effective: 2026-01-01}
      - {id: b-sub, customer: b, subscription: sub-b, amount: "20.00", currency: USD,
         effective: 2026-01-01}
    """
    )
    close("2026-02-01")
    invoice = one(billed_customer="hq")
    fixed = lines(invoice, kind="fixed")
    # one merged line: 2 x 100.00 on the billed customer
    assert [(x["serviced_customer"], x["quantity"], x["amount"]) for x in fixed] == [
        ("hq", "2", "200.00")
    ]
    # Each branch's grant still finds its branch's share; the credit sits in the holder's
    # section: 200.00 - 20.00 - 30.00 = 150.00.
    credits = [
        (x["serviced_customer"], x["grant"], x["amount"]) for x in lines(invoice, kind="credit")
    ]
    assert sorted(credits) == [("a", "a-own", "-30.00"), ("b", "b-sub", "-20.00")]
    assert invoice["total"] == "150.00"


TAXED = """
tax_rates:
  - {jurisdiction: US-NY, rate: "0.08875"}
  - {jurisdiction: DE, rate: "0.19"}
customers:
  - {id: hq, name: HQ, currency: USD, jurisdiction: US-NY, tax_basis: %s}
  - {id: berlin, name: Berlin office, currency: USD, parent: hq, jurisdiction: DE}
  - {id: nowhere, name: Unregistered office, currency: USD, parent: hq}
prices:
  - {code: fee, product: Fee, currency: USD, model: flat, amount: "1000.00"}
  - {code: small, product: Small fee, currency: USD, model: flat, amount: "0.05"}
subscriptions:
  - {id: s-hq, customer: hq, start: 2026-01-01, cadence: monthly, billing_day: 1,
     items: [{price: fee, timing: in_arrears}]}
  - {id: s-berlin, customer: berlin, start: 2026-01-01, cadence: monthly, billing_day: 1,
     items: [{price: fee, timing: in_arrears}, {price: small, timing: in_arrears}]}
  - {id: s-nowhere, customer: nowhere, start: 2026-01-01, cadence: monthly, billing_day: 1,
     items: [{price: fee, timing: in_arrears}]}
"""


@pytest.mark.parametrize(
    ("basis", "taxes", "tax_total", "total"),
    [
        # Every line at the billed customer's 8.875%: 1000.00 -> 88.75, three times, and
        # 0.05 -> 0.0044375 -> 0.00 (left off). 3 x 88.75 = 266.25; 3000.05 + 266.25.
        ("billed", [("berlin", "US-NY", "88.75"), ("hq", "US-NY", "88.75"),
                    ("nowhere", "US-NY", "88.75")], "266.25", "3266.30"),
        # Each line where it is consumed: hq 88.75; berlin 1000.00 x 19% = 190.00 and
        # 0.05 x 19% = 0.0095 -> 0.01 (rounded per line); nowhere has no jurisdiction.
        # 88.75 + 190.00 + 0.01 = 278.76; 3000.05 + 278.76 = 3278.81.
        ("serviced", [("berlin", "DE", "0.01"), ("berlin", "DE", "190.00"),
                      ("hq", "US-NY", "88.75")], "278.76", "3278.81"),
    ],
)  # fmt: skip
def test_tax_on_the_billed_or_each_serviced_customer(store, basis, taxes, tax_total, total):
    import_yaml(TAXED % basis)
    close("2026-02-01")
    invoice = one(billed_customer="hq")
    rate = {"US-NY": "0.08875", "DE": "0.19"}
    assert sorted(
        (x["serviced_customer"], x["tax_rate"], x["amount"]) for x in lines(invoice, kind="tax")
    ) == [(c, rate[j], a) for c, j, a in taxes]
    assert (invoice["subtotal"], invoice["tax_total"], invoice["total"]) == (
        "3000.05",
        tax_total,
        total,
    )


def test_cross_currency_rollup_is_refused_at_import(store):
    with pytest.raises(CatalogError, match="currency") as refused:
        import_yaml(
            """
        customers:
          - {id: us, name: US parent, currency: USD}
          - {id: eu, name: EU child, currency: EUR, parent: us}
        prices:
          - {code: fee-eur, product: Fee, currency: EUR, model: flat, amount: "100.00"}
        subscriptions:
          - {id: s-eu, customer: eu, start: 2026-01-01, cadence: monthly, billing_day: 1,
             items: [{price: fee-eur, timing: in_arrears}]}
        """
        )
    assert "no currency conversion" in str(refused.value.problems)
    assert store.scalar("SELECT count(*) FROM customers") == 0


def test_a_child_in_another_currency_may_pay_for_itself(store):
    import_yaml(
        """
    customers:
      - {id: us, name: US parent, currency: USD}
      - {id: eu, name: EU child, currency: EUR, parent: us, bill_to: self}
    prices:
      - {code: fee-eur, product: Fee, currency: EUR, model: flat, amount: "100.00"}
    subscriptions:
      - {id: s-eu, customer: eu, start: 2026-01-01, cadence: monthly, billing_day: 1,
         items: [{price: fee-eur, timing: in_arrears}]}
    """
    )
    close("2026-02-01")
    assert [(i["billed_customer"], i["currency"], i["total"]) for i in invoices()] == [
        ("eu", "EUR", "100.00")
    ]


def test_reparenting_into_another_currency_is_refused_and_changes_nothing(store):
    import_yaml(
        """
    customers:
      - {id: us, name: US parent, currency: USD}
      - {id: eu, name: EU solo, currency: EUR}
    prices:
      - {code: fee-eur, product: Fee, currency: EUR, model: flat, amount: "100.00"}
    subscriptions:
      - {id: s-eu, customer: eu, start: 2026-01-01, cadence: monthly, billing_day: 1,
         items: [{price: fee-eur, timing: in_arrears}]}
    """
    )
    close("2026-02-01")
    before = invoices()
    with pytest.raises(CatalogError, match="currency"):
        import_yaml(
            """
        customers:
          - {id: eu, name: EU solo, currency: EUR, parent: us}
        """,
            name="reparent.yaml",
        )
    assert store.scalar("SELECT parent_id FROM customers WHERE id = 'eu'") is None
    close("2026-02-01")
    assert invoices() == before
