"""The `billing invoices` and `billing credits` commands as an operator types them: an
invoice named by its number or its id, filters that name nothing refused with one line,
list columns that add up, and help that says what each value is (SPEC §7.1)."""

from __future__ import annotations

import re
from decimal import Decimal

import click
import pytest
from typer.main import get_command
from typer.testing import CliRunner

from billing_core.cli.app import app
from billing_core.invoices.lifecycle import issue
from billing_core.store.engine import unit_of_work
from tests.helpers import close, import_yaml, invoices

CATALOG = """
issuer: {name: Northwind Billing, invoice_prefix: NWB}
customers:
  - {id: acme, name: Acme, currency: USD, jurisdiction: US-NY}
prices:
  - {code: fee, product: Fee, currency: USD, model: flat, amount: "100.00"}
tax_rates:
  - {jurisdiction: US-NY, rate: "0.10"}
subscriptions:
  - {id: s-acme, customer: acme, start: 2026-01-01, cadence: monthly, billing_day: 1,
     items: [{price: fee, timing: in_advance}],
     discounts: [{type: percentage, value: "10"}]}
credits:
  - {id: promo, customer: acme, amount: "5.00", currency: USD, effective: 2026-01-01}
"""


def run(*args: str):
    return CliRunner().invoke(app, list(args))


@pytest.fixture
def issued(store):
    """Two monthly invoices of acme, January issued (with a number), February a draft."""
    import_yaml(CATALOG)
    close("2026-02-01")
    jan, feb = invoices()
    with unit_of_work() as session:
        issue(session, ids=[jan["id"]])
        session.commit()
    return {row["billing_date"]: row for row in invoices()}


def test_every_invoice_command_takes_the_number_or_the_id(issued):
    jan = issued["2026-01-01"]
    assert jan["number"] == "NWB-2026-000001"
    by_number, by_id = (
        run("invoices", "show", jan["number"]),
        run("invoices", "show", str(jan["id"])),
    )
    assert by_number.exit_code == 0, by_number.output
    assert by_number.output == by_id.output
    assert "NWB-2026-000001" in by_number.output
    paid = run("invoices", "pay", jan["number"])
    assert paid.exit_code == 0, paid.output
    assert "invoice NWB-2026-000001 is now paid" in paid.output
    feb = issued["2026-02-01"]
    canceled = run("invoices", "cancel", str(feb["id"]))
    assert canceled.exit_code == 0, canceled.output


@pytest.mark.parametrize("reference", ["NWB-2026-999999", "999", "99999999999999999999999", "٣"])
def test_an_invoice_that_does_not_exist_is_refused_in_one_line(issued, reference):
    for command in (["show"], ["void"], ["pay"], ["cancel"], ["issue"]):
        done = run("invoices", *command, reference)
        assert done.exit_code == 1, (command, done.output)
        assert done.output.strip() == f"no invoice {reference!r} (give its number or its id)"


def test_filters_that_name_nothing_are_refused(issued):
    bogus = run("invoices", "list", "--status", "bogus")
    assert bogus.exit_code == 2
    assert bogus.output.strip() == (
        "--status: no invoice status 'bogus' (one of draft, issued, paid, void, canceled)"
    )
    assert run("invoices", "export", "--status", "bogus").exit_code == 2
    for command in (["invoices", "list"], ["credits", "list"]):
        nobody = run(*command, "--customer", "nobody")
        assert nobody.exit_code == 1, nobody.output
        assert nobody.output.strip() == "--customer: no customer 'nobody' in the catalog"
    none = run("invoices", "list", "--status", "void")
    assert none.exit_code == 0
    assert "no invoices with status void" in none.output


def test_list_columns_add_up_to_the_total(issued):
    done = run("invoices", "list")
    assert done.exit_code == 0, done.output
    header = next(line for line in done.output.splitlines() if "subtotal" in line)
    assert re.findall(r"\w[\w ]*\w", header)[-5:] == [
        "subtotal",
        "discounts",
        "tax",
        "credits",
        "total",
    ]
    rows = [line for line in done.output.splitlines() if "USD" in line]
    assert len(rows) == 2
    for row in rows:
        cells = [c.strip() for c in row.strip("│ ").split("│")]
        subtotal, discounts, tax, credits = (Decimal(c) for c in cells[5:9])
        total = Decimal(cells[9].removesuffix(" USD"))
        assert discounts < 0 and credits <= 0 and tax > 0
        assert subtotal + discounts + tax + credits == total


def _commands(group: click.Command, path: tuple[str, ...] = ()):
    for name, command in group.commands.items():
        if getattr(command, "commands", None):
            yield from _commands(command, (*path, name))
        else:
            yield (*path, name)


def test_help_names_what_each_value_is_not_its_python_type():
    commands = list(_commands(get_command(app)))
    assert ("invoices", "show") in commands and ("usage", "ingest") in commands
    for command in commands:
        text = run(*command, "--help").output
        assert not re.search(r"<(bool|str|int|path|list\[\w+\])>", text), (command, text)
    assert "DATE" in run("close", "--help").output
    assert "FILE..." in run("usage", "ingest", "--help").output
    assert "INVOICE" in run("invoices", "void", "--help").output


def documented_csv_columns() -> list[str]:
    """The CSV export's columns as docs/formats.md lists them: the first column of the table
    that follows the export's "CSV:" paragraph."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "formats.md").read_text("utf-8")
    section = text.split("## Export (", 1)[1].split("\n## ", 1)[0]
    table = section.split("\nCSV:", 1)[1].split("\n\n")[1]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    return [re.match(r"\| `([a-z_]+)` \|", line).group(1) for line in rows]


def test_the_csv_export_has_the_columns_docs_formats_lists(issued):
    import csv
    import io
    import json

    columns = documented_csv_columns()
    assert columns[:2] == ["invoice_id", "number"] and "line_amount" in columns
    done = run("invoices", "export", "--format", "csv")
    assert done.exit_code == 0, done.output
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert rows and list(rows[0]) == columns
    # Every field of the JSON export is a column, renamed only where a row (a line) needs it.
    data = json.loads(run("invoices", "export", "--format", "json").stdout)
    renamed = {"id": "invoice_id", "amount": "line_amount"}
    lines = [(invoice, line) for invoice in data for line in invoice["lines"]]
    assert len(rows) == len(lines)
    for row, (invoice, line) in zip(rows, lines, strict=True):
        fields = {k: v for k, v in invoice.items() if k != "lines"} | line
        assert {renamed.get(k, k) for k in fields} == set(columns)
        for key, value in fields.items():
            assert row[renamed.get(key, key)] == ("" if value is None else str(value)), key
    jan = next(row for row in rows if row["number"] == "NWB-2026-000001")
    assert jan["issue_date"] and jan["due_date"]
    feb = next(row for row in rows if row["billing_date"] == "2026-02-01")
    assert (feb["number"], feb["issue_date"], feb["due_date"]) == ("", "", "")
