"""A key given twice in one mapping of a catalog is refused, YAML and JSON alike.

Both parsers would keep the last value silently (a customer's second `currency`, a second
`customers` section replacing the first), as a CSV header with a duplicate column would.
Each duplicate is one line naming the mapping, the line and the key; every duplicate of
the file is reported in one run; nothing is written.
"""

from __future__ import annotations

import json

import pytest

from tests.helpers import import_yaml
from tests.integration.test_catalog_attacks import BASE, imported, refused, snapshot, write


@pytest.fixture
def based_store(store):
    import_yaml(BASE, name="base.yaml")
    return store, snapshot(store)


def test_a_yaml_key_given_twice_is_refused_with_its_entry_line_and_key(based_store, tmp_path):
    store, before = based_store
    text = """\
    customers:
      - id: twice
        name: First
        name: Second
        currency: USD
      - {id: flow, name: Flow, currency: USD, currency: EUR}
    prices:
      - code: p
        product: P
        currency: USD
        model: flat
        amount: "1.00"
        "amount": "9.00"
    subscriptions:
      - {id: s, customer: hq, start: 2026-01-01,
         items: [{price: fee, timing: in_advance, timing: in_arrears}]}
    customers: []
    """
    path = write(tmp_path, "catalog.yaml", text)
    assert refused(path) == [
        "customers[0] (line 4): the key name is given twice",
        "customers[1] (line 6): the key currency is given twice",
        # A quoted key is the same key.
        "prices[0] (line 13): the key amount is given twice",
        "subscriptions[0].items[0] (line 16): the key timing is given twice",
        "the catalog (line 17): the key customers is given twice",
    ]
    assert snapshot(store) == before


def test_a_json_key_given_twice_is_refused_with_its_path_line_and_key(based_store, tmp_path):
    store, before = based_store
    text = (
        '{"customers": [\n'
        '  {"id": "twice", "name": "First",\n'
        '   "name": "Second", "currency": "USD"},\n'
        # An escaped key is the same key.
        '  {"id": "flow", "name": "Flow", "currency": "USD", "curr\\u0065ncy": "EUR"}\n'
        "],\n"
        ' "subscriptions": [{"id": "s", "customer": "hq", "start": "2026-01-01",\n'
        '   "items": [{"price": "fee", "timing": "in_advance", "timing": "in_arrears"}]}],\n'
        ' "customers": []}\n'
    )
    path = write(tmp_path, "catalog.json", text)
    assert refused(path) == [
        "customers[0] (line 3): the key name is given twice",
        "customers[1] (line 4): the key currency is given twice",
        "subscriptions[0].items[0] (line 7): the key timing is given twice",
        "the catalog (line 8): the key customers is given twice",
    ]
    assert snapshot(store) == before


@pytest.mark.parametrize("suffix", ["yaml", "json"])
def test_a_duplicate_that_would_change_what_is_billed_is_not_taken(based_store, tmp_path, suffix):
    """The last value would have won: a flat fee of 10.00 silently becoming 99999.00."""
    store, before = based_store
    entry = '{"code": "fee", "product": "Fee", "currency": "USD", "model": "flat", '
    text = '{"prices": [' + entry + '"amount": "10.00", "amount": "99999.00"}]}'
    if suffix == "yaml":
        text = text.replace('{"prices": [', "prices:\n  - ").removesuffix("]}") + "\n"
    assert refused(write(tmp_path, f"fee.{suffix}", text)) == [
        f"prices[0] (line {1 if suffix == 'json' else 2}): the key amount is given twice"
    ]
    assert snapshot(store) == before  # the fee is still 10.00


@pytest.mark.parametrize("suffix", ["yaml", "json"])
def test_the_same_key_in_different_mappings_is_not_a_duplicate(based_store, tmp_path, suffix):
    store, _ = based_store
    catalog = {
        "customers": [
            {"id": f"c{i}", "name": f"C {i}", "currency": "USD", "parent": "hq"} for i in range(3)
        ],
        "subscriptions": [
            {
                "id": "s2",
                "customer": "c1",
                "start": "2026-01-01",
                "items": [{"price": "fee", "timing": "in_advance"}],
                "phases": [
                    {"start": "2026-03-01", "items": [{"price": "fee", "timing": "in_arrears"}]}
                ],
            }
        ],
    }
    text = json.dumps(catalog, indent=1)  # JSON is YAML too
    imported(write(tmp_path, f"fine.{suffix}", text))
    assert store.scalar("SELECT count(*) FROM customers WHERE id LIKE 'c_'") == 3


def test_a_long_duplicate_key_is_shortened_and_kept_on_one_line(based_store, tmp_path):
    store, before = based_store
    key = "k" * 200 + "\\nx"
    text = '{"customers": [{"id": "a", "' + key + '": 1, "' + key + '": 2}]}'
    lines = refused(write(tmp_path, "long.json", text))
    assert lines == ["customers[0] (line 1): the key " + "k" * 80 + "… is given twice"]
    assert snapshot(store) == before
