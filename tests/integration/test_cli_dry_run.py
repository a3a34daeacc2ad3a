"""`billing close --dry-run` on the terminal: the billed customers, the lines that differ
and the totals per currency; `--format json`; nothing written. And a close's own output:
the money of each step, its invoices listed or, for many, summed up."""

from __future__ import annotations

import json
import re
from decimal import Decimal

from typer.testing import CliRunner

from billing_core.cli.app import app
from tests.integration.test_dry_run import THROUGH, prepared
from tests.integration.test_preview import everything


def test_the_cli_names_the_billed_customers_and_the_totals_per_currency(
    store, monkeypatch, prefect_server
):
    prepared(store, monkeypatch)
    rows = everything(store.url)
    runner = CliRunner()
    done = runner.invoke(app, ["close", "--through", THROUGH.isoformat(), "--dry-run"])
    assert done.exit_code == 0, (done.stdout, done.stderr)
    text = done.stdout
    for customer in ("hq", "kessler", "leaver", "newbie"):
        assert customer in text
    assert "5 invoice(s) added, 2 changed, 1 removed, 0 unchanged" in text
    assert "Totals by currency" in text
    totals = [line for line in text.splitlines() if "EUR" in line and "+357.00" in line]
    assert totals and "238.00" in totals[-1] and "595.00" in totals[-1]
    assert any("USD" in line and "+640.00" in line for line in text.splitlines())
    assert "200.00 → 250.00" in text  # Kessler's support line
    assert "nothing was written" in text
    as_json = runner.invoke(
        app, ["close", "--through", THROUGH.isoformat(), "--dry-run", "--format", "json"]
    )
    assert as_json.exit_code == 0, as_json.stderr
    assert json.loads(as_json.stdout)["counts"]["removed"] == 1
    backfill = runner.invoke(
        app,
        ["backfill", "--from", "2026-03-01", "--to", THROUGH.isoformat(), "--dry-run"]
        + ["--format", "json"],
    )
    assert backfill.exit_code == 0, backfill.stderr
    assert json.loads(backfill.stdout)["invoices"] == json.loads(as_json.stdout)["invoices"]
    assert everything(store.url) == rows
    refused = runner.invoke(app, ["close", "--through", THROUGH.isoformat(), "--format", "json"])
    assert refused.exit_code == 2 and "--dry-run" in refused.stderr


def test_a_close_on_the_terminal_says_the_money_each_step_handled(
    store, monkeypatch, prefect_server
):
    """Each step's line adds the money it handled, per currency, as its summary does."""
    prepared(store, monkeypatch)
    done = CliRunner().invoke(app, ["close", "--through", THROUGH.isoformat()])
    assert done.exit_code == 0, (done.stdout, done.stderr)
    lines = {line.split(":")[0].strip(): line for line in done.stdout.splitlines() if ":" in line}
    assert "; rated " in lines["rate"] and " USD" in lines["rate"] and " EUR" in lines["rate"]
    assert "created " in lines["consolidate roll-ups"]
    # The sum shown for what was rated is the store's unfrozen charges through the date.
    rated = store.scalar(
        "SELECT sum(amount) FROM charges WHERE currency = 'USD' AND billing_date <= :d "
        "AND id NOT IN (SELECT charge_id FROM invoice_charges ic JOIN invoices i "
        "ON i.id = ic.invoice_id WHERE i.status <> 'draft')",
        d=THROUGH,
    )
    assert f"{Decimal(str(rated)):,.2f} USD" in lines["rate"]


def test_money_said_groups_digits_and_keeps_the_sign():
    from billing_core.cli.commands_close import _money_said

    step = {"details": {"money": {"rated": {"USD": "-1234567.50", "EUR": "0.00"}}}}
    assert _money_said(step) == "; rated 0.00 EUR, -1,234,567.50 USD"
    assert _money_said({"details": {}}) == ""


def _invoice_rows(text: str) -> list[str]:
    """The rows of the tables of invoices a close printed (each starts with an id)."""
    return [line for line in text.splitlines() if re.match(r"^│ +\d+ │", line)]


def test_a_large_close_prints_its_invoices_by_status_and_currency_and_the_first_few(
    store, monkeypatch, prefect_server
):
    """Up to `LISTED` invoices a close lists every one; beyond, their count and total by
    status and currency, the first `FIRST`, and the command that lists them all."""
    from billing_core.cli import commands_close

    prepared(store, monkeypatch)
    runner = CliRunner()
    done = runner.invoke(app, ["close", "--through", THROUGH.isoformat()])
    assert done.exit_code == 0, (done.stdout, done.stderr)
    invoices = store.rows(
        "SELECT id, number, status, currency, total FROM invoices WHERE billing_date <= :d "
        "ORDER BY billing_date, billed_customer_id",
        d=THROUGH,
    )
    n = len(invoices)
    assert n > 4 and {i.currency for i in invoices} == {"EUR", "USD"}
    listed = _invoice_rows(done.stdout)
    assert [row.split("│")[1].strip() for row in listed] == [str(i.id) for i in invoices]
    assert "by status and currency" not in done.stdout

    monkeypatch.setattr(commands_close, "LISTED", n)  # as many as the close has: listed
    again = runner.invoke(app, ["close", "--through", THROUGH.isoformat()])
    assert again.exit_code == 0, again.stderr
    assert _invoice_rows(again.stdout) == listed

    monkeypatch.setattr(commands_close, "LISTED", n - 1)  # one more than that: summed up
    monkeypatch.setattr(commands_close, "FIRST", 2)
    big = runner.invoke(app, ["close", "--through", THROUGH.isoformat()])
    assert big.exit_code == 0, big.stderr
    text = big.stdout
    assert (
        f"Invoices through {THROUGH}: {n} (more than {n - 1}: summed up, the first 2 listed)"
        in (text)
    )
    sums: dict[tuple[str, str], list] = {}
    for i in invoices:
        for key in ((i.status, i.currency), ("all", i.currency)):
            entry = sums.setdefault(key, [0, Decimal(0)])
            entry[0] += 1
            entry[1] += Decimal(str(i.total))
    for (status, currency), (count, total) in sums.items():
        row = rf"│ {status} +│ {currency} +│ +{count} │ +{total:,.2f} {currency} │"
        assert re.search(row, text), (row, text)
    first = _invoice_rows(text)
    assert [row.split("│")[1].strip() for row in first] == [str(i.id) for i in invoices[:2]]
    assert f"… and {n - 2} more: `billing invoices list --through {THROUGH}` lists them all" in (
        text
    )
    assert any(line.startswith("  rate: read ") for line in text.splitlines())  # the steps

    # The command it names lists them all, through that date.
    shown = runner.invoke(app, ["invoices", "list", "--through", THROUGH.isoformat()])
    assert shown.exit_code == 0, shown.stderr
    assert [row.split("│")[1].strip() for row in _invoice_rows(shown.stdout)] == [
        str(i.id) for i in invoices
    ]
    earlier = runner.invoke(app, ["invoices", "list", "--through", "2026-02-28"])
    assert len(_invoice_rows(earlier.stdout)) == sum(
        1 for r in store.rows("SELECT billing_date FROM invoices") if str(r[0])[:10] < "2026-03-01"
    )
