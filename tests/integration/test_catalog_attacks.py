"""Catalog import refuses at the door what the calendar or the store cannot hold (SPEC §10).

Each refusal is one line per problem on stderr, `FILE: section[index] (id).field: reason`,
a non-zero exit, the store unchanged, and every problem of the file in the same run.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from decimal import Decimal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from billing_core.cli.app import app
from billing_core.domain.money import shown
from billing_core.inputs.catalog import CatalogError
from tests.helpers import close, import_yaml, invoices

BILLING = Path(sys.executable).with_name("billing")

BASE = """
customers:
  - {id: hq, name: HQ, currency: USD}
  - {id: child, name: Child, currency: USD, parent: hq}
metrics:
  - {code: units, name: Units, aggregation: sum}
prices:
  - {code: fee, product: Fee, currency: USD, model: flat, amount: "10.00"}
subscriptions:
  - {id: sub, customer: child, start: 2026-01-01, cadence: monthly, billing_day: 1,
     items: [{price: fee, timing: in_advance}]}
"""

TABLES = (
    "issuers",
    "tax_rates",
    "customers",
    "metrics",
    "prices",
    "subscriptions",
    "subscription_items",
    "credit_grants",
)


def snapshot(store) -> dict[str, list]:
    """Every catalog row, as text, in a stable order."""
    return {
        table: sorted(tuple(str(v) for v in row) for row in store.rows(f"SELECT * FROM {table}"))
        for table in TABLES
    }


def write(folder: Path, name: str, text: str | bytes) -> Path:
    path = folder / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def refused(path: Path) -> list[str]:
    """`billing import PATH` refused: exit 1, no traceback, every line names the file.
    Returns the lines without the file prefix."""
    result = CliRunner().invoke(app, ["import", str(path)])
    assert isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 1, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert lines, "a refusal says why"
    prefix = f"{path}: "
    assert all(line.startswith(prefix) for line in lines), lines
    return [line.removeprefix(prefix) for line in lines]


def imported(path: Path) -> str:
    result = CliRunner().invoke(app, ["import", str(path)])
    assert result.exit_code == 0, (result.stderr, result.exception)
    return result.stdout


@pytest.fixture
def based(store):
    """A store holding BASE; returns it with its snapshot taken."""
    import_yaml(BASE, name="base.yaml")
    return store, snapshot(store)


# --- 1. dates the calendar cannot hold ------------------------------------------------------

DATED = """
subscriptions:
  - id: s2
    customer: hq
    start: {start}
    end: {end}
    items: [{{price: fee, timing: in_advance}}]
    phases: [{{start: {phase}, items: [{{price: fee, timing: in_arrears}}]}}]
credits:
  - {{id: g, customer: hq, amount: "5", currency: USD, effective: {effective},
     expires: {expires}}}
"""
GOOD_DATES = {
    "start": "2026-01-01",
    "end": "2026-12-31",
    "phase": "2026-06-01",
    "effective": "2026-01-01",
    "expires": "2026-12-31",
}


@pytest.mark.parametrize(
    ("field", "value", "where"),
    [
        ("start", "0001-01-01", "subscriptions[0] (s2).start"),
        ("start", "9999-12-01", "subscriptions[0] (s2).start"),
        ("start", "1899-12-31", "subscriptions[0] (s2).start"),
        ("end", "2200-01-01", "subscriptions[0] (s2).end"),
        ("phase", "1899-12-31", "subscriptions[0] (s2).phases[0].start"),
        ("effective", "0001-01-01", "credits[0] (g).effective"),
        ("expires", "9999-12-31", "credits[0] (g).expires"),
    ],
)
def test_dates_outside_the_calendar_are_refused(based, tmp_path, field, value, where):
    store, before = based
    dates = {**GOOD_DATES, field: value}
    if field == "start":
        dates["phase"] = dates["end"] = "2199-12-31"
    lines = refused(write(tmp_path, "dates.yaml", DATED.format(**dates)))
    assert f"{where}: must be between 1900-01-01 and 2199-12-31, got {value}" in lines, lines
    assert snapshot(store) == before


def test_a_refused_far_date_leaves_the_close_working(based, tmp_path):
    store, before = based
    far = "subscriptions: [{id: far, customer: hq, start: 9999-12-01, items: [{price: fee}]}]"
    assert refused(write(tmp_path, "far.yaml", far)) == [
        "subscriptions[0] (far).start: must be between 1900-01-01 and 2199-12-31, got 9999-12-01"
    ]
    assert snapshot(store) == before
    close("2026-02-01")
    assert {i["billing_date"] for i in invoices()} == {"2026-01-01", "2026-02-01"}


def test_the_calendar_bounds_themselves_are_accepted(based, tmp_path):
    store, _ = based
    imported(write(tmp_path, "edges.yaml", DATED.format(**{
        **GOOD_DATES, "start": "1900-01-01", "end": "2199-12-31", "phase": "2199-12-01",
        "effective": "1900-01-01", "expires": "2199-12-31",
    })))  # fmt: skip
    assert str(store.scalar("SELECT start FROM subscriptions WHERE id = 's2'")) == "1900-01-01"
    assert str(store.scalar("SELECT expires FROM credit_grants WHERE id = 'g'")) == "2199-12-31"


@pytest.mark.parametrize(
    ("written", "shown"),
    [
        ("2026-01-34", "'2026-01-34'"),
        ("2026-02-30", "'2026-02-30'"),
        ("0000-01-01", "'0000-01-01'"),
        ("2026-01-01T10:00:00Z", "2026-01-01 10:00:00+00:00"),
        ("'2026-1-1'", "'2026-1-1'"),
    ],
)
def test_impossible_dates_are_one_line(based, tmp_path, written, shown):
    store, before = based
    text = f"subscriptions: [{{id: s2, customer: hq, start: {written}, items: [{{price: fee}}]}}]"
    assert refused(write(tmp_path, "bad-date.yaml", text)) == [
        f"subscriptions[0] (s2).start: must be a date (YYYY-MM-DD), got {shown}"
    ]
    assert snapshot(store) == before


# --- 2. amounts the store and the rating cannot hold -----------------------------------------

EVERY_AMOUNT = """
tax_rates: [{{jurisdiction: X, rate: {v}}}]
prices:
  - {{code: a, product: A, currency: USD, model: flat, amount: {v}}}
  - {{code: b, product: B, currency: USD, model: per_unit, metric: units, unit_price: {v}}}
  - {{code: c, product: C, currency: USD, model: package, metric: units,
     package_size: {v}, package_price: {v}}}
  - {{code: d, product: D, currency: USD, model: graduated, metric: units,
     tiers: [{{up_to: {v}, unit_price: {v}, flat_fee: {v}}}, {{up_to: null, unit_price: "1"}}]}}
subscriptions:
  - {{id: s2, customer: hq, start: 2026-01-01, items: [{{price: fee}}], minimum: {v},
     discounts: [{{type: percentage, value: {v}}}, {{type: fixed, amount: {v}}}]}}
credits:
  - {{id: g, customer: hq, amount: {v}, currency: USD, effective: 2026-01-01}}
"""


def every_amount_problem(reason: str) -> list[str]:
    return [
        f"tax_rates[0] (X).rate: {reason}",
        f"prices[0] (a).amount: {reason}",
        f"prices[1] (b).unit_price: {reason}",
        f"prices[2] (c).package_size: {reason}",
        f"prices[2] (c).package_price: {reason}",
        f"prices[3] (d).tiers: tier 1 up_to {reason}",
        f"prices[3] (d).tiers: tier 1 unit_price {reason}",
        f"prices[3] (d).tiers: tier 1 flat_fee {reason}",
        f"subscriptions[0] (s2).discounts[0].value: {reason}",
        f"subscriptions[0] (s2).discounts[1].amount: {reason}",
        f"subscriptions[0] (s2).minimum: {reason}",
        f"credits[0] (g).amount: {reason}",
    ]


@pytest.mark.parametrize(
    ("written", "reason"),
    [
        ('"1e400"', "must be at most 10^15, got '1e400'"),
        ("1.0e+400", "must be at most 10^15, got 1.0E+400"),
        ("1000000000000001", "must be at most 10^15, got 1000000000000001"),
        ('"1e-400"', "must have at most 12 decimal places, got '1e-400'"),
        ("1.0e-400", "must have at most 12 decimal places, got 1.0E-400"),
        ('"0.0000000000001"', "must have at most 12 decimal places, got '0.0000000000001'"),
        ('"NaN"', "is not a finite number: 'NaN'"),
        ("'-Infinity'", "is not a finite number: '-Infinity'"),
        (".nan", "is not a number: '.nan'"),
        (".inf", "is not a number: '.inf'"),
        ("true", "must be a decimal string or integer, got True"),
    ],
)
def test_every_amount_field_refuses_what_it_cannot_hold(based, tmp_path, written, reason):
    store, before = based
    lines = refused(write(tmp_path, "amounts.yaml", EVERY_AMOUNT.format(v=written)))
    assert lines == every_amount_problem(reason)
    assert snapshot(store) == before


def test_a_price_of_1e400_no_longer_breaks_rating(based, tmp_path):
    store, before = based
    text = """
    prices: [{code: fee, product: Fee, currency: USD, model: flat, amount: "1e400"}]
    """
    assert refused(write(tmp_path, "huge.yaml", text)) == [
        "prices[0] (fee).amount: must be at most 10^15, got '1e400'"
    ]
    assert snapshot(store) == before
    close("2026-01-01")
    assert [i["total"] for i in invoices()] == ["10.00"]


def test_the_amount_bounds_themselves_are_accepted(based, tmp_path):
    store, _ = based
    text = """
    prices:
      - {code: big, product: Big, currency: USD, model: flat, amount: "1000000000000000"}
      - {code: fine, product: Fine, currency: USD, model: per_unit, metric: units,
         unit_price: 0.000000000001}
      - {code: zeros, product: Zeros, currency: USD, model: flat,
         amount: "2.50000000000000000000000"}
    """
    imported(write(tmp_path, "edges.yaml", text))
    terms = {
        code: json.loads(stored) if isinstance(stored, str) else stored
        for code, stored in store.rows("SELECT code, terms FROM prices")
    }
    assert terms["big"] == {"amount": "1000000000000000"}
    assert terms["fine"] == {"unit_price": "0.000000000001"}
    assert terms["zeros"] == {"amount": "2.500000000000"}


@pytest.mark.parametrize(
    ("number", "reason"),
    [
        ("1e400", "must be at most 10^15, got 1E+400"),
        ("1e-400", "must have at most 12 decimal places, got 1E-400"),
        ("1" * 5000, f"must be at most 10^15, got {'1' * 59}…"),
        ("NaN", "is not a finite number: 'NaN'"),
        ("-Infinity", "is not a finite number: '-Infinity'"),
        ("true", "must be a decimal string or integer, got True"),
    ],
)
def test_json_numbers_are_exact_and_bounded(based, tmp_path, number, reason):
    store, before = based
    text = (
        '{"prices": [{"code": "p", "product": "P", "currency": "USD", "model": "flat",'
        f' "amount": {number}}}]}}'
    )
    assert refused(write(tmp_path, "numbers.json", text)) == [f"prices[0] (p).amount: {reason}"]
    assert snapshot(store) == before


def test_json_huge_integers_anywhere_are_one_line(based, tmp_path):
    store, before = based
    digits = "9" * 5000
    text = (
        f'{{"customers": [{{"id": {digits}, "name": "N", "currency": "USD",'
        f' "billing_day": {digits}}}],'
        f' "credits": [{{"id": "g", "customer": "hq", "amount": "1", "currency": "USD",'
        f' "effective": "2026-01-01", "priority": {digits}}}]}}'
    )
    lines = refused(write(tmp_path, "digits.json", text))
    assert lines == [
        f"customers[0].id: must be text, got {'9' * 59}…",
        "customers[0].billing_day: must be between 1 and 31",
        "credits[0] (g).priority: must be between 0 and 2147483647",
    ]
    assert snapshot(store) == before


def test_yaml_huge_integers_are_one_line(based, tmp_path):
    store, before = based
    digits = "7" * 5000
    text = f"""
    customers: [{{id: big, name: Big, currency: USD, billing_day: {digits}}}]
    prices: [{{code: p, product: P, currency: USD, model: flat, amount: {digits}}},
             {{code: h, product: H, currency: USD, model: flat, amount: 0x{"f" * 5000}}}]
    """
    assert refused(write(tmp_path, "digits.yaml", text)) == [
        "customers[0] (big).billing_day: must be between 1 and 31",
        f"prices[0] (p).amount: must be at most 10^15, got {'7' * 59}…",
        f"prices[1] (h).amount: must be at most 10^15, got {shown(int('f' * 5000, 16))}",
    ]
    assert snapshot(store) == before


@pytest.mark.parametrize(
    ("name", "text", "line"),
    [
        (
            "broken.yaml",
            "customers:\n  - {id: a, name: [unclosed\n",
            "line 3, column 1: not valid YAML: ",
        ),
        ("broken.json", '{"customers": [{"id": "a",}]}', "line 1, column 27: not valid JSON: "),
        (
            "tagged.yaml",
            "customers: !!python/object:os.system x\n",
            "line 1, column 12: not valid YAML: ",
        ),
    ],
)
def test_a_file_that_does_not_parse_is_one_line(based, tmp_path, name, text, line):
    store, before = based
    (problem,) = refused(write(tmp_path, name, text))
    assert problem.startswith(line), problem
    assert snapshot(store) == before


def test_whole_numbers_the_store_cannot_hold(based, tmp_path):
    store, before = based
    text = """
    prices: [{code: p, product: P, currency: USD, model: package, metric: units,
              package_size: 3000000000, package_price: "1"}]
    credits: [{id: g, customer: hq, amount: "1", currency: USD, effective: 2026-01-01,
               priority: 3000000000}]
    """
    assert refused(write(tmp_path, "ints.yaml", text)) == [
        "prices[0] (p).package_size: must be at most 2147483647",
        "credits[0] (g).priority: must be between 0 and 2147483647",
    ]
    assert snapshot(store) == before


# --- 3. YAML aliases and deep nesting ----------------------------------------------------------

LAUGHS = """\
customers:
  - id: lol
    currency: USD
    x:
      - &a [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]
      - &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]
      - &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]
      - &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]
      - &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]
      - &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]
      - &g [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]
      - &h [*g, *g, *g, *g, *g, *g, *g, *g, *g, *g]
      - &i [*h, *h, *h, *h, *h, *h, *h, *h, *h, *h]
    name: *i
"""


def test_a_billion_laughs_is_refused_at_the_first_alias(based, tmp_path):
    store, before = based
    path = write(tmp_path, "laughs.yaml", LAUGHS)
    assert len(path.read_bytes()) < 700
    started = time.monotonic()
    done = subprocess.run(
        [str(BILLING), "import", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 1, done.stderr[-2000:]
    assert done.stderr.splitlines() == [
        f"{path}: customers[0].x[1][0] (line 6): a YAML alias (*a) is not accepted; "
        "write the value out"
    ]
    assert elapsed < 30, elapsed
    assert snapshot(store) == before


def test_a_yaml_alias_as_a_customer_id_is_one_line(based, tmp_path):
    store, before = based
    text = """\
    customers:
      - {id: &x twin, name: A, currency: USD}
      - {id: *x, name: B, currency: USD}
    """
    assert refused(write(tmp_path, "alias.yaml", text)) == [
        "customers[1].id (line 3): a YAML alias (*x) is not accepted; write the value out"
    ]
    assert snapshot(store) == before


def test_a_yaml_merge_key_is_an_alias_too(based, tmp_path):
    store, before = based
    text = """\
    prices:
      - &base {code: p1, product: P, currency: USD, model: flat, amount: "1"}
      - <<: *base
        code: p2
    """
    assert refused(write(tmp_path, "merge.yaml", text)) == [
        "prices[1].<< (line 3): a YAML alias (*base) is not accepted; write the value out"
    ]
    assert snapshot(store) == before


def test_a_yaml_anchor_without_alias_is_refused_too(based, tmp_path):
    store, before = based
    text = "customers:\n  - {id: &x solo, name: A, currency: USD}\n"
    assert refused(write(tmp_path, "anchor.yaml", text)) == [
        "customers[0].id (line 2): a YAML anchor (&x) is not accepted; write the value out"
    ]
    assert snapshot(store) == before


@pytest.mark.parametrize("suffix", ["yaml", "json"])
def test_100000_levels_of_nesting_are_one_line(based, tmp_path, suffix):
    store, before = based
    deep = "[" * 100_000 + "]" * 100_000
    text = f'{{"customers": {deep}}}' if suffix == "json" else f"customers: {deep}\n"
    assert refused(write(tmp_path, f"deep.{suffix}", text)) == [
        "customers[0][0][0][0][0][0][0]… (line 1): nested deeper than 32 levels"
    ]
    assert snapshot(store) == before


@pytest.mark.parametrize("suffix", ["yaml", "json"])
def test_nesting_is_limited_at_32_levels(based, tmp_path, suffix):
    store, before = based

    def catalog(levels: int) -> str:
        # the catalog, the list of prices and one price are 3 levels; `tiers` holds the rest
        inner = "[" * (levels - 3) + "]" * (levels - 3)
        price = (
            '{"code": "p", "product": "P", "currency": "USD", "model": "flat",'
            f' "amount": "1", "extra": {inner}}}'
        )
        return f'{{"prices": [{price}]}}'

    at_limit = refused(write(tmp_path, f"32.{suffix}", catalog(32)))
    assert at_limit == [
        "prices[0] (p).extra: unknown key (known: code, product, bundle, currency, model, "
        "metric, amount)"
    ]
    assert refused(write(tmp_path, f"33.{suffix}", catalog(33))) == [
        "prices[0].extra[0][0][0][0][0]… (line 1): nested deeper than 32 levels"
    ]
    assert snapshot(store) == before


# --- 5. text the store cannot hold --------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["yaml", "json"])
def test_invalid_utf8_names_the_entry_and_field(based, tmp_path, suffix):
    store, before = based
    if suffix == "json":
        raw = b'{"customers": [{"id": "ok", "name": "Caf\xe9", "currency": "USD"}]}'
    else:
        raw = b"customers:\n  - {id: ok, name: Caf\xe9, currency: USD}\n"
    assert refused(write(tmp_path, f"latin1.{suffix}", raw)) == [
        "customers[0] (ok).name: is not UTF-8 text (character 4)"
    ]
    assert snapshot(store) == before


def test_a_utf16_file_is_one_line(based, tmp_path):
    store, before = based
    raw = "customers: [{id: a, name: A, currency: USD}]\n".encode("utf-16")
    assert refused(write(tmp_path, "utf16.yaml", raw)) == [
        "is not UTF-8 text (it starts with a UTF-16 byte order mark); save it as UTF-8"
    ]
    assert snapshot(store) == before


@pytest.mark.parametrize(
    ("name", "text", "reason"),
    [
        (
            "surrogate.json",
            '{"customers": [{"id": "ok", "name": "a\\ud800b", "currency": "USD"}]}',
            "is not UTF-8 text (character 2)",
        ),
        (
            "surrogate.yaml",
            'customers: [{id: ok, name: "a\\ud800b", currency: USD}]',
            "is not UTF-8 text (character 2)",
        ),
        (
            "nul.json",
            '{"customers": [{"id": "ok", "name": "a\\u0000b", "currency": "USD"}]}',
            "holds a NUL character (character 2), which the store cannot hold",
        ),
        (
            "nul.yaml",
            'customers: [{id: ok, name: "a\\0b", currency: USD}]',
            "holds a NUL character (character 2), which the store cannot hold",
        ),
        (
            "long.yaml",
            f"customers: [{{id: ok, name: {'n' * 70_000}, currency: USD}}]",
            "is longer than 64 KiB (70000 bytes)",
        ),
    ],
)
def test_text_the_store_cannot_hold_is_refused(based, tmp_path, name, text, reason):
    store, before = based
    assert refused(write(tmp_path, name, text)) == [f"customers[0] (ok).name: {reason}"]
    assert snapshot(store) == before


def test_ids_longer_than_the_store_holds(based, tmp_path):
    store, before = based
    long_id = "c" * 129
    text = f"""
    customers: [{{id: {long_id}, name: Long, currency: USD, jurisdiction: {"j" * 65}}}]
    issuer: {{name: Acme, invoice_prefix: {"P" * 33}}}
    """
    assert refused(write(tmp_path, "long-ids.yaml", text)) == [
        "issuer (Acme).invoice_prefix: must be at most 32 characters",
        "customers[0].id: must be at most 128 characters",
        "customers[0].jurisdiction: must be at most 64 characters",
    ]
    assert snapshot(store) == before


def test_text_that_would_break_the_line_is_escaped(based, tmp_path):
    store, before = based
    text = '{"customers": [{"id": "a\\nb\\u001b[31m", "name": "N", "currency": "EUR",'
    text += ' "parent": "nobody"}]}'
    assert refused(write(tmp_path, "escape.json", text)) == [
        "customers[0] (a\\nb\\x1b[31m).parent: unknown customer 'nobody'"
    ]
    assert snapshot(store) == before


# --- 6. every problem in one run -----------------------------------------------------------------


def test_three_kinds_of_mistake_are_reported_in_one_run(based, tmp_path):
    store, before = based
    text = """
    prices:
      - {code: calls, product: Calls, currency: USD, model: graduated, metric: units,
         tiers: [{up_to: 100, unit_price: "1"}, {up_to: 50, unit_price: "1"},
                 {up_to: null, unit_price: "1"}]}
      - {code: eur-fee, product: Fee, currency: EUR, model: flat, amount: "1", colour: red}
    subscriptions:
      - {id: sub2, customer: hq, start: 2026-01-01, items: [{price: eur-fee}]}
    """
    assert refused(write(tmp_path, "three.yaml", text)) == [
        "prices[0] (calls).tiers: tier 2: up_to 50 is not above the previous tier's 100 "
        "(tiers must ascend)",
        "prices[1] (eur-fee).colour: unknown key (known: code, product, bundle, currency, "
        "model, metric, amount)",
        "subscriptions[0] (sub2).items[0].price: eur-fee is in EUR but customer hq pays in "
        "USD (currency must match)",
    ]
    assert snapshot(store) == before


def test_a_cycle_does_not_hide_the_other_problems(based, tmp_path):
    store, before = based
    text = """
    customers:
      - {id: east, name: East, currency: USD, parent: west}
      - {id: west, name: West, currency: USD, parent: east}
      - {id: lost, name: Lost, currency: USD, parent: nowhere, billing_day: 40}
    subscriptions:
      - {id: s2, customer: east, start: 2026-01-01, items: [{price: missing}]}
    credits:
      - {id: g, customer: hq, amount: "5", currency: EUR, effective: 2026-01-01}
    """
    assert refused(write(tmp_path, "cycle.yaml", text)) == [
        "customers[2] (lost).billing_day: must be between 1 and 31",
        "customers[2] (lost).parent: unknown customer 'nowhere'",
        "customers[0] (east).parent: parent cycle east -> west -> east",
        "subscriptions[0] (s2).items[0].price: unknown price 'missing'",
        "credits[0] (g).currency: EUR is not the currency of hq (USD)",
    ]
    assert snapshot(store) == before


def test_a_long_cycle_is_one_short_line(based, tmp_path):
    store, before = based
    levels = 20_000
    catalog = json.loads(chain_catalog(levels, subscriptions=False))
    catalog["customers"][0]["parent"] = f"c{levels - 1}"
    assert refused(write(tmp_path, "ring.json", json.dumps(catalog))) == [
        "customers[0] (c0).parent: parent cycle c0 -> c19999 -> c19998 -> c19997 -> c19996 "
        "-> c19995 -> c19994 -> c19993 -> c19992 -> c19991 -> … (20000 customers)"
    ]
    assert snapshot(store) == before


def test_a_problem_with_the_store_names_the_entry_and_index(based, tmp_path):
    store, before = based
    text = """
    customers:
      - {id: eu, name: EU, currency: EUR, parent: hq}
    prices:
      - {code: eur-fee, product: F, currency: EUR, model: flat, amount: '1'}
    subscriptions:
      - {id: s2, customer: eu, start: 2026-01-01, rollup: true, items: [{price: eur-fee}]}
    """
    assert refused(write(tmp_path, "rollup.yaml", text)) == [
        "subscriptions[0] (s2).rollup: rolls up from eu (EUR) to hq (USD); there is no "
        "currency conversion, so a roll-up must stay in one currency"
    ]
    assert snapshot(store) == before


SOLO = """
customers:
  - {id: solo, name: Solo, currency: USD}
prices:
  - {code: fee, product: Fee, currency: USD, model: flat, amount: "10.00"}
subscriptions:
  - {id: sub, customer: solo, start: 2026-01-01, cadence: monthly, billing_day: 1,
     items: [{price: fee, timing: in_advance}]}
"""


def dump(store) -> dict[str, list]:
    """Every row of every table of the store, as text, in a stable order."""
    import sqlalchemy as sa

    from billing_core.store.engine import get_engine

    meta = sa.MetaData()
    meta.reflect(get_engine(store.url))
    return {
        name: sorted(tuple(str(v) for v in row) for row in store.rows(f"SELECT * FROM {name}"))
        for name in sorted(meta.tables)
    }


@pytest.mark.parametrize(
    "change",
    [
        "customers:\n  - {id: solo, name: Solo, currency: EUR}\n",  # the customer alone
        SOLO.replace("USD", "EUR"),  # and its prices with it: the file agrees with itself
    ],
    ids=["customer-alone", "whole-catalog"],
)
def test_a_billed_customer_keeps_its_currency(store, tmp_path, change):
    """Charges and invoices are in the customer's currency and there is no conversion: a
    re-import that changes it is refused in one line naming the customer and what it
    has, and the store is left as it was (the next close would stop on it otherwise)."""
    import_yaml(SOLO, name="solo.yaml")
    close("2026-02-01", issue=True)
    charges = store.scalar("SELECT count(*) FROM charges")
    issued = store.scalar("SELECT count(*) FROM invoices")
    assert charges and issued
    before = dump(store)
    lines = refused(write(tmp_path, "eur.yaml", change))
    assert lines == [
        f"customers[0] (solo).currency: cannot change from USD to EUR: solo already has "
        f"{charges} charge(s) and {issued} invoice(s) in USD, and there is no currency "
        "conversion (bill EUR to a new customer)"
    ]
    assert dump(store) == before


# --- any value in any field: one line, never a traceback ---------------------------------------

FULL = """
issuer: {name: Acme, invoice_prefix: INV, address: [1 Main St, Springfield]}
tax_rates: [{jurisdiction: US-CA, rate: "0.0725"}]
customers:
  - {id: top, name: Top, currency: USD, timezone: America/New_York, jurisdiction: US-CA,
     billing_day: 1, tax_basis: billed, rollup_lines: breakdown}
  - {id: branch, name: Branch, currency: USD, parent: top, bill_to: parent}
metrics:
  - {code: calls, name: Calls, aggregation: sum, field: quantity}
prices:
  - {code: platform, product: Platform, bundle: Core, currency: USD, model: flat,
     amount: "500.00"}
  - {code: tiered, product: Tiered, currency: USD, model: graduated, metric: calls,
     tiers: [{up_to: 1000, unit_price: "0.01", flat_fee: "0"}, {up_to: null, unit_price: "0.008"}]}
  - {code: packs, product: Packs, currency: USD, model: package, metric: calls,
     package_size: 100, package_price: "5.00"}
subscriptions:
  - id: s-top
    customer: top
    status: active
    start: 2026-01-01
    end: 2026-12-31
    cadence: monthly
    billing_day: 1
    items: [{price: platform, timing: in_advance}, {price: tiered, timing: in_arrears,
             pool: breakdown}]
    phases: [{start: 2026-07-01, items: [{price: packs, timing: in_arrears}]}]
    discounts: [{type: percentage, value: "10", price: tiered}, {type: fixed, amount: "50.00"}]
    minimum: "1000.00"
    rollup: false
    align_to_parent: false
credits:
  - {id: promo, customer: top, subscription: s-top, amount: "250.00", currency: USD,
     effective: 2026-01-01, expires: 2026-06-30, priority: 10}
"""

NAMES_ENTRY = re.compile(
    r"(issuer|tax_rates|customers|metrics|prices|subscriptions|credits)(\[\d+\])?( \(|\.|:)"
)
ODD_VALUES = [
    [1, [2]],
    {"a": {"b": None}},
    True,
    None,
    "",
    10**30,
    Decimal("-1e400"),
    "2026-02-30",
    "x" * 200,
    "\ud800",
]


def _leaves(data, path=()):
    """Paths to every value of the catalog, containers included."""
    yield path
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _leaves(value, (*path, key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            yield from _leaves(value, (*path, i))


def _replaced(data, path, value):
    if not path:
        return value
    copy = dict(data) if isinstance(data, dict) else list(data)
    copy[path[0]] = _replaced(data[path[0]], path[1:], value)
    return copy


def test_any_value_in_any_field_is_refused_in_lines_or_imported(based, tmp_path):
    """Each field of a full catalog replaced by each odd value, in turn: either the
    catalog imports (and the store takes it), or every line names the entry; never
    another exception."""
    import yaml

    from billing_core.inputs.catalog import import_catalog, load_file, parse
    from billing_core.store.engine import unit_of_work

    full = yaml.safe_load(FULL)
    imported(write(tmp_path, "full.yaml", FULL))
    tried = refusals = 0
    for path in list(_leaves(full))[1:]:
        for value in ODD_VALUES:
            text = json.dumps(_replaced(full, path, value), default=str)
            file = write(tmp_path, "odd.json", text)
            try:
                with unit_of_work() as session:
                    import_catalog(session, parse(load_file(file)))
                    session.commit()
            except CatalogError as error:
                refusals += 1
                assert error.problems, (path, value)
                for line in error.problems:
                    assert NAMES_ENTRY.match(line), (path, value, line)
                    assert line.isprintable() and len(line) < 600, (path, value, line)
            tried += 1
    assert tried > 500 and refusals > 400, (tried, refusals)


def test_refused_catalogs_still_raise_catalog_error_in_process(based):
    store, before = based
    with pytest.raises(CatalogError) as error:
        import_yaml("prices: [{code: p, product: P, currency: USD, model: flat, amount: 1e400}]")
    assert error.value.problems == ["prices[0] (p).amount: must be at most 10^15, got '1e400'"]
    assert snapshot(store) == before


# --- 4. a deep tree is a valid tree -------------------------------------------------------------


def chain_catalog(levels: int, subscriptions: bool) -> str:
    """c0 <- c1 <- ... : each customer's parent is the one before (bill_to parent)."""
    catalog: dict = {
        "customers": [{"id": "c0", "name": "C0", "currency": "USD"}]
        + [
            {"id": f"c{i}", "name": f"C{i}", "currency": "USD", "parent": f"c{i - 1}"}
            for i in range(1, levels)
        ],
        "prices": [
            {"code": "fee", "product": "Fee", "currency": "USD", "model": "flat", "amount": "1"}
        ],
    }
    if subscriptions:
        catalog["subscriptions"] = [
            {
                "id": f"s{i}",
                "customer": f"c{i}",
                "start": "2026-01-01",
                "items": [{"price": "fee", "timing": "in_advance"}],
            }
            for i in range(levels)
        ]
    return json.dumps(catalog)


@pytest.mark.slow
def test_a_100000_level_chain_imports(store, tmp_path):
    path = write(tmp_path, "chain.json", chain_catalog(100_000, subscriptions=False))
    started = time.monotonic()
    done = subprocess.run(
        [str(BILLING), "import", str(path)], capture_output=True, text=True, timeout=600
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-2000:]
    assert store.scalar("SELECT count(*) FROM customers") == 100_000
    assert store.scalar("SELECT count(DISTINCT family_id) FROM customers") == 1
    assert store.scalar("SELECT family_id FROM customers WHERE id = 'c99999'") == "c0"
    assert store.scalar("SELECT parent_id FROM customers WHERE id = 'c99999'") == "c99998"
    print(f"100,000-level chain imported on {store.backend} in {elapsed:.1f} s")


def test_a_close_over_a_5000_level_chain(store, tmp_path):
    """Every customer of the chain bills through to the top: one invoice, 5,000 lines,
    and no walk up the chain per customer (nor any recursion)."""
    levels = 5_000
    imported(write(tmp_path, "chain.json", chain_catalog(levels, subscriptions=True)))
    started = time.monotonic()
    close("2026-01-01")
    elapsed = time.monotonic() - started
    (invoice,) = invoices()
    assert invoice["billed_customer"] == "c0"
    assert len(invoice["lines"]) == levels
    assert invoice["total"] == f"{levels}.00"
    print(f"close over a {levels}-level chain on {store.backend}: {elapsed:.1f} s")
