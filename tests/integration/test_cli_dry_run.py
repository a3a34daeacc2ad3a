"""`billing close --dry-run` on the terminal: the billed customers, the lines that differ
and the totals per currency; `--format json`; nothing written."""

from __future__ import annotations

import json
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
