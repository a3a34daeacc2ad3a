"""Guarantees of the close, each attacked on both stores where it applies.

- Late usage after a price change is billed at the price that billed its period (SPEC §4,
  §9), and the issued invoice does not move.
- A close step whose own database connection is killed mid-transaction (PostgreSQL) fails
  with a database error, commits nothing, and the next close gives what a clean close
  gives; so does a close whose process is killed mid-step (both stores).
- Template, SQL and spreadsheet-formula syntax in names, ids and codes is inert all the
  way from import to the HTML documents and the exports; Rich markup and emoji codes are
  printed as written on the terminal.
"""

from __future__ import annotations

import json
import os
import signal as signal_module
import subprocess
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa

from billing_core.invoices import lifecycle as invoices
from billing_core.steps import close as steps
from billing_core.steps import consolidate as rollup
from billing_core.steps import credits
from billing_core.steps import rate as rating
from billing_core.steps import recalculate as recalculation
from billing_core.steps import render as rendering
from tests.conftest import using_store
from tests.helpers import close, import_yaml, ingest_csv, lines, one
from tests.helpers import invoices as exported
from tests.integration.test_close import POOLED, USAGE, snapshot

# --- late usage after a price change ---------------------------------------------------------

PRICED = """
customers:
  - {{id: acme, name: Acme, currency: USD}}
metrics:
  - {{code: units, name: Units, aggregation: sum, field: quantity}}
prices:
  - {{code: units-price, product: Units, currency: USD, {price}}}
subscriptions:
  - {{id: sub-acme, customer: acme, start: 2026-01-01, cadence: monthly, billing_day: 1,
     items: [{{price: units-price, timing: in_arrears}}]}}
"""

PRICES = {
    # model: (January's price, the price re-imported after January was issued)
    "per_unit": (
        'model: per_unit, metric: units, unit_price: "1.00"',
        'model: per_unit, metric: units, unit_price: "2.00"',
    ),
    "graduated": (
        'model: graduated, metric: units, tiers: [{up_to: 1000, unit_price: "1.00"}, '
        '{up_to: null, unit_price: "0.50"}]',
        'model: graduated, metric: units, tiers: [{up_to: 500, unit_price: "3.00", '
        'flat_fee: "10"}, {up_to: null, unit_price: "2.00"}]',
    ),
}

JANUARY = """
event_id,customer,metric,timestamp,quantity
jan-1,acme,units,2026-01-05T10:00:00Z,600
jan-2,acme,units,2026-01-25T10:00:00Z,300
"""

LATE_AND_FEBRUARY = """
event_id,customer,metric,timestamp,quantity
jan-late,acme,units,2026-01-31T23:00:00Z,200
feb-1,acme,units,2026-02-10T10:00:00Z,100
"""


@pytest.mark.parametrize("model", sorted(PRICES))
def test_late_usage_after_a_price_change_is_billed_at_the_price_that_billed_its_period(
    store, model
):
    old, new = PRICES[model]
    import_yaml(PRICED.format(price=old))
    ingest_csv(JANUARY)
    close("2026-02-01", issue=True)
    january = one("issued", billed_customer="acme", billing_date="2026-02-01")
    assert [(x["quantity"], x["amount"]) for x in january["lines"]] == [("900", "900.00")]

    import_yaml(PRICED.format(price=new))
    ingest_csv(LATE_AND_FEBRUARY, name="late.csv")
    close("2026-03-01")

    assert one(billed_customer="acme", billing_date="2026-02-01") == january
    march = one(billed_customer="acme", billing_date="2026-03-01")
    (adjustment,) = lines(march, kind="adjustment")
    # January re-rated with January's price: 1100 units against 900 billed.
    expected = {"per_unit": "200.00", "graduated": "150.00"}[model]  # 1000 + 100 x 0.50
    assert (
        adjustment["period_start"],
        adjustment["period_end"],
        adjustment["quantity"],
        adjustment["amount"],
    ) == ("2026-01-01", "2026-01-31", "200", expected)
    # February is rated with the new price.
    (february,) = lines(march, kind="usage")
    assert (february["period_start"], february["quantity"], february["amount"]) == (
        "2026-02-01",
        "100",
        {"per_unit": "200.00", "graduated": "310.00"}[model],  # 10 + 100 x 3.00
    )
    assert Decimal(march["subtotal"]) == Decimal(expected) + Decimal(february["amount"])

    # Closed again, nothing moves: the adjustment is not recomputed at the new price.
    close("2026-03-01")
    assert one(billed_customer="acme", billing_date="2026-03-01") == march
    assert one(billed_customer="acme", billing_date="2026-02-01") == january

    # Issued with its adjustment, January takes more late usage: still January's price,
    # against what January's invoice and the adjustment billed together.
    close("2026-03-01", issue=True)
    ingest_csv(
        "event_id,customer,metric,timestamp,quantity\njan-later,acme,units,2026-01-15T00:00:00Z,100\n",
        name="later.csv",
    )
    close("2026-04-01")
    april = one(billed_customer="acme", billing_date="2026-04-01")
    assert [
        (a["period_start"], a["quantity"], a["amount"]) for a in lines(april, kind="adjustment")
    ] == [("2026-01-01", "100", {"per_unit": "100.00", "graduated": "50.00"}[model])]
    assert one(billed_customer="acme", billing_date="2026-02-01") == january


# --- a close step's connection killed mid-transaction (PostgreSQL) ---------------------------

MORE_USAGE = """
event_id,customer,metric,timestamp,quantity
a-3,account-a,units,2026-01-20T10:00:00Z,150
hq-1,hq,units,2026-01-21T10:00:00Z,75
b-3,account-b,units,2026-01-22T10:00:00Z,60
"""

# Each step of a close: the module function the close calls, patched where it is looked up.
KILLABLE = {
    "recalculate": (recalculation, "recalculate"),
    "rate": (rating, "rate"),
    "consolidate": (rollup, "consolidate"),
    "credits": (credits, "apply_credits"),
    "issue": (invoices, "issue"),
    "render": (rendering, "render"),
}


class HeldMidStep:
    """The step's first call does its work, then waits inside its open transaction (its
    rows written, not committed) until the test lets it go. `before` is the store as the
    step found it."""

    def __init__(self, monkeypatch, store, step: str):
        self.inside = threading.Event()
        self.release = threading.Event()
        self.before: dict | None = None
        self.result = None
        module, name = KILLABLE[step]
        real = getattr(module, name)

        def held(session, *args, **kwargs):
            first = self.before is None
            if first:
                self.before = _settled(store)
            result = real(session, *args, **kwargs)
            if first:
                self.result = result
                self.inside.set()
                assert self.release.wait(120), "the test never let the step go"
            return result

        monkeypatch.setattr(module, name, held)
        if real in steps.STEP_NAMES:
            monkeypatch.setitem(steps.STEP_NAMES, held, steps.STEP_NAMES[real])


def _settled(store) -> dict:
    """Every billing row (the close's own lock row aside, which comes and goes with it)."""
    rows = snapshot(store.url)
    rows.pop("store_locks", None)
    return rows


def _without_ids(exported_invoices: list[dict]) -> list[dict]:
    return [{k: v for k, v in i.items() if k not in ("id", "issued_at")} for i in exported_invoices]


def _terminate_the_step(store) -> int:
    """Terminate the backend of the close's open step transaction, in this store's own
    database only (the close lock's connection sits idle outside a transaction)."""
    pids = [
        pid
        for (pid,) in store.rows(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND state = 'idle in transaction' AND pid <> pg_backend_pid()"
        )
    ]
    assert len(pids) == 1, pids
    terminated = store.scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE pid = :pid AND datname = current_database()",
        pid=pids[0],
    )
    assert terminated is True
    return pids[0]


@pytest.mark.parametrize("step", list(KILLABLE))
def test_a_step_whose_connection_is_killed_commits_nothing_and_the_next_close_is_clean(
    store, monkeypatch, tmp_path, another_store, step
):
    if store.backend != "postgres":
        pytest.skip("terminating a backend is PostgreSQL's; SQLite has no server")
    monkeypatch.setenv("BILLING_DOCUMENT_FORMATS", "html")
    import_yaml(POOLED)
    ingest_csv(USAGE)
    close("2026-01-15")  # drafts, credits and previews the killed close works over
    ingest_csv(MORE_USAGE, name="more.csv")

    patched = pytest.MonkeyPatch()
    held = HeldMidStep(patched, store, step)
    outcome: dict = {}

    def run():
        try:
            outcome["reports"] = close("2026-02-01", issue=True)
        except BaseException as error:  # noqa: BLE001 - the test reads it
            outcome["error"] = error

    thread = threading.Thread(target=run, name="killed close", daemon=True)
    thread.start()
    try:
        assert held.inside.wait(120), outcome
        _terminate_the_step(store)
    finally:
        held.release.set()
        thread.join(120)
        patched.undo()  # the next closes run the real steps
    assert not thread.is_alive()

    error = outcome.get("error")
    assert isinstance(error, sa.exc.DBAPIError), outcome
    assert error.connection_invalidated or isinstance(error, sa.exc.OperationalError), error
    # The step had work in its transaction (issuing: the invoices it numbered), and none
    # of it was committed.
    result = held.result
    assert (len(result) if isinstance(result, list) else result.written + result.deleted) > 0
    assert _settled(store) == held.before
    assert store.scalar("SELECT count(*) FROM invoices WHERE status = 'issued'") == (
        0 if step in ("recalculate", "rate", "consolidate", "credits", "issue") else 2
    )

    _the_next_close_is_a_clean_close(store, another_store, monkeypatch)


def _the_next_close_is_a_clean_close(store, another_store, monkeypatch) -> None:
    """A close after the failed one leaves what one close on a fresh store with the same
    catalog and usage leaves: the same invoices, numbers and documents."""
    close("2026-02-01", issue=True)
    after = _without_ids(exported())
    documents = store.rows(
        "SELECT v.number, d.format, d.final, d.path FROM invoice_documents d "
        "JOIN invoices v ON v.id = d.invoice_id ORDER BY v.number, d.format"
    )

    clean = another_store("clean")
    monkeypatch.setenv("BILLING_OUTPUT_DIR", str(clean.workdir / "documents"))
    with using_store(clean):
        import_yaml(POOLED, folder=clean.workdir)
        ingest_csv(USAGE, folder=clean.workdir)
        ingest_csv(MORE_USAGE, folder=clean.workdir, name="more.csv")
        close("2026-02-01", issue=True)
        expected = _without_ids(exported())
        expected_documents = clean.rows(
            "SELECT v.number, d.format, d.final FROM invoice_documents d "
            "JOIN invoices v ON v.id = d.invoice_id ORDER BY v.number, d.format"
        )
    assert after == expected
    assert [i["number"] for i in after] == ["INV-2026-000001", "INV-2026-000002"]
    assert [(n, f, final) for n, f, final, _ in documents] == expected_documents
    assert all(Path(path).exists() for *_, path in documents)


# A close in a process of its own whose step, its work done and not committed, says so
# and sleeps: the test kills the process there.
KILLED_CLOSE = """
import importlib, json, sys, time
from datetime import date
from pathlib import Path
from billing_core.steps import close as steps
from billing_core.config import get_settings
from tests.integration.test_close import snapshot

module, name = importlib.import_module(sys.argv[1]), sys.argv[2]
real, signal = getattr(module, name), Path(sys.argv[3])

def held(session, *args, **kwargs):
    rows = snapshot(get_settings().database_url)
    rows.pop("store_locks", None)
    result = real(session, *args, **kwargs)
    session.flush()
    done = len(result) if isinstance(result, list) else result.written + result.deleted
    signal.with_suffix(".part").write_text(json.dumps({"before": rows, "done": done}))
    signal.with_suffix(".part").rename(signal)
    time.sleep(600)

setattr(module, name, held)
steps.STEP_NAMES[held] = steps.STEP_NAMES.get(real, name)
steps.close_locally(date(2026, 2, 1), issue_invoices=True)
"""


@pytest.mark.parametrize("step", ["rate", "consolidate", "issue", "render"])
def test_a_close_process_killed_mid_step_commits_nothing_and_the_next_close_is_clean(
    store, monkeypatch, tmp_path, another_store, step
):
    monkeypatch.setenv("BILLING_DOCUMENT_FORMATS", "html")
    import_yaml(POOLED)
    ingest_csv(USAGE)
    close("2026-01-15")
    ingest_csv(MORE_USAGE, name="more.csv")

    signal = tmp_path / "inside.json"
    module, name = KILLABLE[step]
    root = Path(__file__).resolve().parents[2]
    process = subprocess.Popen(
        [sys.executable, "-c", KILLED_CLOSE, module.__name__, name, str(signal)],
        env={**os.environ, "PYTHONPATH": str(root)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while not signal.exists():
            assert process.poll() is None, process.communicate()[1].decode()[-6000:]
            assert time.monotonic() < deadline, "the close never reached the step"
            time.sleep(0.1)
    finally:
        process.kill()
        process.wait(60)
    assert process.returncode == -signal_module.SIGKILL

    inside = json.loads(signal.read_text())
    assert inside["done"] > 0  # the step had work in its transaction
    before = {table: sorted(tuple(row) for row in rows) for table, rows in inside["before"].items()}
    assert _settled(store) == before  # none of it was committed
    _the_next_close_is_a_clean_close(store, another_store, monkeypatch)


# --- template and SQL syntax in names, ids and codes is inert -------------------------------

PAYLOADS = [
    "{{ 7*7 }}",
    "{% for x in range(10**9) %}x{% endfor %}",
    "{{ ''.__class__.__mro__ }}",
    "'); DROP TABLE invoices; --",
    "<script>alert(1)</script>",
    '=HYPERLINK("http://evil.example","{{ 7*7 }}")',
    "-{{ 7*7 }}; DELETE FROM usage_events; --",
    "@{% raw %}{{ 7*7 }}",
    '{# a comment #}"><img src=x onerror=alert(1)>',
]


def _hostile_catalog() -> dict:
    catalog: dict = {
        "issuer": {
            "name": "{{ ''.__class__.__mro__ }} <script>alert(1)</script>",
            "address": PAYLOADS,
        },
        "tax_rates": [],
        "customers": [],
        "metrics": [],
        "prices": [],
        "subscriptions": [],
        "credits": [],
    }
    for text in PAYLOADS:
        catalog["tax_rates"].append({"jurisdiction": text[:64], "rate": "0.10"})
        catalog["customers"].append(
            {"id": text, "name": text, "currency": "USD", "jurisdiction": text[:64]}
        )
        catalog["metrics"].append({"code": text, "name": text, "aggregation": "sum"})
        catalog["prices"].append(
            {
                "code": text,
                "product": text,
                "bundle": text,
                "currency": "USD",
                "model": "per_unit",
                "metric": text,
                "unit_price": "3.00",
            }
        )
        catalog["subscriptions"].append(
            {
                "id": text,
                "customer": text,
                "start": "2026-01-01",
                "cadence": "monthly",
                "billing_day": 1,
                "items": [{"price": text, "timing": "in_arrears"}],
            }
        )
        catalog["credits"].append(
            {
                "id": text,
                "customer": text,
                "amount": "1.00",
                "currency": "USD",
                "effective": "2026-01-01",
            }
        )
    return catalog


def _cli(*args: str):
    from typer.testing import CliRunner

    from billing_core.cli.app import app

    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, (args, result.stdout, result.stderr, result.exception)
    return result


def test_template_and_sql_syntax_is_inert_from_import_to_documents_and_exports(
    store, tmp_path, monkeypatch
):
    import csv
    import io

    from markupsafe import escape

    from billing_core.store.files import csv_cell

    tables = set(sa.inspect(sa.create_engine(store.url)).get_table_names())
    catalog = tmp_path / "hostile.json"
    catalog.write_text(json.dumps(_hostile_catalog()), encoding="utf-8")
    usage = tmp_path / "hostile.csv"
    with usage.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["event_id", "customer", "metric", "timestamp", "quantity", "note"])
        for text in PAYLOADS:
            writer.writerow([text, text, text, "2026-01-10T10:00:00Z", "7", text])

    _cli("import", str(catalog))
    _cli("usage", "ingest", str(usage))
    _cli("close", "--through", "2026-02-01", "--issue")

    # Every table is still there, with its rows.
    assert set(sa.inspect(sa.create_engine(store.url)).get_table_names()) == tables
    assert store.scalar("SELECT count(*) FROM usage_events") == len(PAYLOADS)
    assert store.scalar("SELECT count(*) FROM invoices WHERE status = 'issued'") == len(PAYLOADS)

    # The export carries every text verbatim.
    data = json.loads(_cli("invoices", "export", "--format", "json").stdout)
    assert sorted(i["billed_customer"] for i in data) == sorted(PAYLOADS)
    for invoice in data:
        text = invoice["billed_customer"]
        assert invoice["number"].startswith("INV-2026-")
        assert (invoice["subtotal"], invoice["tax_total"], invoice["credit_total"]) == (
            "21.00",
            "2.10",
            "-1.00",
        )
        (usage_line,) = lines(invoice, kind="usage")
        assert (
            usage_line["serviced_customer"],
            usage_line["subscription"],
            usage_line["price"],
            usage_line["product"],
            usage_line["quantity"],
        ) == (text, text, text, text, "7")
    output = tmp_path / "export.csv"
    _cli("invoices", "export", "--format", "csv", "--output", str(output))
    rows = list(csv.DictReader(io.StringIO(output.read_text(encoding="utf-8"))))
    usage_rows = [r for r in rows if r["kind"] == "usage"]
    assert sorted(r["billed_customer"] for r in usage_rows) == sorted(
        csv_cell(text) for text in PAYLOADS
    )
    for row in usage_rows:
        assert row["serviced_customer"] == row["subscription"] == row["price"] == row["product"]
        assert row["product"] == row["billed_customer"]
    # Formula starts get their `'`; everything else, a `'` of its own included, is verbatim.
    assert {r["product"] for r in usage_rows} == {
        PAYLOADS[0],
        PAYLOADS[1],
        PAYLOADS[2],
        PAYLOADS[3],
        PAYLOADS[4],
        "'" + PAYLOADS[5],
        "'" + PAYLOADS[6],
        "'" + PAYLOADS[7],
        PAYLOADS[8],
    }

    # The documents show every text escaped and literally: nothing evaluated.
    documents = {
        Path(path): billed
        for path, billed in store.rows(
            "SELECT d.path, v.billed_customer_id FROM invoice_documents d "
            "JOIN invoices v ON v.id = d.invoice_id"
        )
    }
    html_files = [p for p in documents if p.suffix == ".html"]
    assert len(html_files) == len(PAYLOADS)
    assert all(p.exists() and p.parent == tmp_path / "documents" / p.parent.name for p in documents)
    for path in html_files:
        page = path.read_text(encoding="utf-8")
        body = page[page.index("<body") :]
        assert "<script>" not in page and "<img" not in page
        assert "49" not in body  # {{ 7*7 }} never evaluated
        assert "xxxxxxxxxx" not in page  # the loop never ran
        assert "&lt;class" not in page and "<class" not in page  # no __mro__
        assert str(escape(documents[path])) in body
        assert str(escape("{{ ''.__class__.__mro__ }} <script>alert(1)</script>")) in body
        assert all(str(escape(line)) in body for line in PAYLOADS)  # the issuer's address


# --- terminal markup in names and ids is shown as written ------------------------------------

MARKUP = """
customers:
  - {id: "[/x]", name: "[bold]Bold[/bold] :thumbs_up:", currency: USD}
metrics:
  - {code: "[/m]", name: "[link=http://evil.example]Units[/link]", aggregation: sum}
prices:
  - {code: "[/p]", product: "[/]Prod [red]P[/red]", currency: USD, model: per_unit,
     metric: "[/m]", unit_price: "3.00"}
  - {code: "[fee]", product: "Fee :smile:", currency: USD, model: flat, amount: "5.00"}
subscriptions:
  - {id: "[/s]", customer: "[/x]", start: 2026-01-01, billing_day: 1,
     items: [{price: "[/p]", timing: in_arrears}, {price: "[fee]", timing: in_advance}]}
credits:
  - {id: "[/g]", customer: "[/x]", amount: "1.00", currency: USD, effective: 2026-01-01}
"""


def test_terminal_markup_in_names_and_ids_is_printed_as_written(store, tmp_path):
    """Rich reads `[bold]` and `:smile:` in what it prints: a customer id `[/x]` (an
    unbalanced closing tag) made every command that prints it fail."""
    catalog = tmp_path / "markup.yaml"
    catalog.write_text(MARKUP, encoding="utf-8")
    usage = tmp_path / "markup.csv"
    usage.write_text(
        "event_id,customer,metric,timestamp,quantity\n[/e],[/x],[/m],2026-01-10T10:00:00Z,7\n",
        encoding="utf-8",
    )
    _cli("import", str(catalog))
    _cli("usage", "ingest", str(usage))
    printed = {
        "close": _cli("close", "--through", "2026-02-01").stdout,
        "list": _cli("invoices", "list").stdout,
        "show": _cli("invoices", "show", str(one(billing_date="2026-02-01")["id"])).stdout,
        "preview": _cli("invoices", "preview", "[/x]", "--through", "2026-03-01").stdout,
        "subscriptions": _cli("subscriptions", "list", "--on", "2026-02-01").stdout,
        "schedule": _cli("subscriptions", "preview", "[/s]", "--through", "2026-02-01").stdout,
        "credits": _cli("credits", "list", "--ledger").stdout,
    }
    for command in ("close", "list", "show", "preview", "subscriptions", "schedule", "credits"):
        assert "[/x]" in printed[command], (command, printed[command])
    for command in ("show", "preview"):
        assert "[bold]Bold[/bold] :thumbs_up:" in printed[command], printed[command]
        assert "[/]Prod [red]P[/red]" in printed[command], printed[command]
        assert "Fee :smile:" in printed[command], printed[command]
        assert "[link=http://evil.example]Units[/link]" in printed[command], printed[command]
    assert "[/s]" in printed["subscriptions"] and "[/p]" in printed["subscriptions"]
    assert "[/s]" in printed["schedule"] and "[bold]Bold[/bold] :thumbs_up:" in printed["schedule"]
    assert "[/g]" in printed["credits"]
    assert all("👍" not in text and "😄" not in text for text in printed.values())
