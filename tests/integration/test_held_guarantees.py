"""Guarantees of the close, each attacked on both stores where it applies.

- Late usage after a price change is billed at the price that billed its period (SPEC §4,
  §9), and the issued invoice does not move.
- A close step whose own database connection is killed mid-transaction fails with a
  database error, commits nothing, and the next close gives what a clean close gives.
- Template and SQL syntax in names, ids and metric codes is inert all the way from import
  to the HTML documents and the exports.
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

from billing_core import close as steps
from billing_core import credits, invoices, rating, recalculation, rendering, rollup
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
from billing_core import close as steps
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
