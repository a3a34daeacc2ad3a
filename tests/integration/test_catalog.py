"""Catalog import: validated whole against the store, refused input changes nothing."""

from __future__ import annotations

import pytest

from billing_core.inputs.catalog import CatalogError
from tests.helpers import import_yaml

BASE = """
customers:
  - {id: hq, name: HQ, currency: USD}
  - {id: child, name: Child, currency: USD, parent: hq}
metrics:
  - {code: units, name: Units, aggregation: sum}
prices:
  - {code: fee, product: Fee, currency: USD, model: flat, amount: "10.00"}
  - {code: per-unit, product: Units, currency: USD, model: per_unit, metric: units,
     unit_price: "2.00"}
subscriptions:
  - {id: sub, customer: child, start: 2026-01-01, cadence: monthly, billing_day: 1,
     items: [{price: fee, timing: in_advance}]}
"""


def counts(store) -> tuple:
    return tuple(
        store.scalar(f"SELECT count(*) FROM {t}")
        for t in ("customers", "prices", "subscriptions", "subscription_items")
    )


@pytest.mark.parametrize(
    ("catalog", "needle"),
    [
        (
            "customers: [{id: a, name: A, currency: USD, parent: b},"
            " {id: b, name: B, currency: USD, parent: a}]",
            "cycle",
        ),
        (
            "customers: [{id: a, name: A, currency: USD, parent: hq}]\ncustomers_typo: []",
            "unknown section",
        ),
        (
            "customers: [{id: eu, name: EU, currency: EUR, parent: hq}]\n"
            "prices: [{code: eur, product: F, currency: EUR, model: flat, amount: '1'}]\n"
            "subscriptions: [{id: s2, customer: eu, start: 2026-01-01, rollup: true,"
            " items: [{price: eur}]}]",
            "currency",
        ),
        (
            "prices: [{code: bad, product: B, currency: USD, model: graduated, metric: units,"
            " tiers: [{up_to: 10, unit_price: '1'}, {up_to: 5, unit_price: '1'},"
            " {up_to: null, unit_price: '1'}]}]",
            "tier",
        ),
        (
            "subscriptions: [{id: s3, customer: hq, start: 2026-01-01,"
            " items: [{price: per-unit, timing: in_advance}]}]",
            "in advance",
        ),
        (
            "subscriptions: [{id: s4, customer: hq, start: 2026-01-01, items: [{price: nope}]}]",
            "unknown price",
        ),
        ("customers: [{id: x, name: X, currency: USDX}]", "currency"),
        (
            "prices: [{code: usd-for-eur, product: P, currency: EUR, model: flat, amount: '1'}]\n"
            "subscriptions: [{id: s5, customer: hq, start: 2026-01-01,"
            " items: [{price: usd-for-eur}]}]",
            "currency must match",
        ),
        (
            "credits: [{id: g, customer: hq, amount: '5', currency: USD, effective: 2026-01-01,"
            " subscription: sub}]",
            "belongs to child",
        ),
    ],
)
def test_refused_catalogs_change_nothing(store, catalog, needle):
    import_yaml(BASE)
    before = counts(store)
    with pytest.raises(CatalogError) as refused:
        import_yaml(catalog, name="bad.yaml")
    assert any(needle in problem for problem in refused.value.problems), refused.value.problems
    assert counts(store) == before


def test_every_problem_names_its_entry_and_field(store):
    with pytest.raises(CatalogError) as refused:
        import_yaml("""
        customers:
          - {id: a, name: A, currency: USD, billing_day: 32}
          - {id: b, currency: USD, timezone: Mars/Base}
        """)
    problems = refused.value.problems
    assert "customers[0] (a).billing_day: must be between 1 and 31" in problems
    assert "customers[1] (b).name: is required" in problems
    assert "customers[1] (b).timezone: unknown time zone 'Mars/Base'" in problems


def test_import_upserts_by_id(store):
    import_yaml(BASE)
    import_yaml(
        "prices: [{code: fee, product: Fee v2, currency: USD, model: flat, amount: '12.50'}]",
        name="update.yaml",
    )
    assert counts(store) == (2, 2, 1, 1)
    assert store.scalar("SELECT product FROM prices WHERE code = 'fee'") == "Fee v2"


def test_a_price_is_changed_by_its_value_not_by_how_it_is_written(store):
    import_yaml(BASE)
    same = BASE.replace('amount: "10.00"', 'amount: "10.0"')
    assert import_yaml(same, name="same.yaml").affected_families == set()
    dearer = BASE.replace('amount: "10.00"', 'amount: "10.01"')
    assert import_yaml(dearer, name="dearer.yaml").affected_families == {"hq"}


def test_metric_meaning_is_fixed_once_usage_exists(store):
    from tests.helpers import ingest_csv

    import_yaml(BASE)
    ingest_csv("event_id,customer,metric,timestamp,quantity\ne1,hq,units,2026-01-02T00:00:00Z,3\n")
    with pytest.raises(CatalogError, match="cannot change"):
        import_yaml("metrics: [{code: units, name: Units, aggregation: max}]", name="m.yaml")
