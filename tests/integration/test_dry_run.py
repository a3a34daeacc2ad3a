"""`billing close --dry-run` on each store: a close computed and rolled back writes no row
and no file, and says what it would change (invoices added, changed and removed, their
lines, the totals per currency)."""

from __future__ import annotations

import hashlib
import textwrap
from datetime import date
from decimal import Decimal
from pathlib import Path

from billing_core.steps.dry_run import dry_run
from tests.helpers import close, import_yaml, ingest_csv
from tests.integration.test_preview import everything

THROUGH = date(2026, 4, 1)

CATALOG = """
tax_rates: [{jurisdiction: DE, rate: "0.19", name: VAT}]
customers:
  - {id: hq, name: HQ Holdings, currency: USD}
  - {id: account-a, name: Account A, currency: USD, parent: hq}
  - {id: account-b, name: Account B, currency: USD, parent: hq}
  - {id: kessler, name: Kessler GmbH, currency: EUR, jurisdiction: DE}
  - {id: leaver, name: Leaver Ltd, currency: USD}
metrics:
  - {code: units, name: Units, aggregation: sum, field: quantity}
prices:
  - code: units-tiered
    product: Units
    currency: USD
    model: graduated
    metric: units
    tiers: [{up_to: 1000, unit_price: "1.00"}, {up_to: null, unit_price: "0.90"}]
  - {code: platform, product: Platform, currency: USD, model: flat, amount: "100.00"}
  - {code: support, product: Support, currency: EUR, model: flat, amount: "SUPPORT"}
  - {code: seat, product: Seat, currency: USD, model: flat, amount: "50.00"}
subscriptions:
  - id: sub-hq
    customer: hq
    start: 2026-01-01
    cadence: monthly
    billing_day: 1
    items:
      - {price: units-tiered, timing: in_arrears, pool: breakdown}
      - {price: platform, timing: in_advance}
  - {id: sub-kessler, customer: kessler, start: 2026-01-01, cadence: monthly, billing_day: 1,
     items: [{price: support, timing: in_advance}]}
  - {id: sub-leaver, customer: leaver, start: 2026-01-01, LEAVER_END cadence: monthly,
     billing_day: 1, items: [{price: seat, timing: in_advance}]}
credits:
  - {id: promo, customer: hq, amount: "150.00", currency: USD, effective: 2026-01-01}
"""

NEWBIE = """
customers:
  - {id: newbie, name: Newbie Inc, currency: USD}
subscriptions:
  - {id: sub-newbie, customer: newbie, start: 2026-02-01, cadence: monthly, billing_day: 1,
     items: [{price: seat, timing: in_advance}]}
"""

JANUARY = """
event_id,customer,metric,timestamp,quantity
a-1,account-a,units,2026-01-03T10:00:00Z,400
a-2,account-a,units,2026-01-17T08:30:00Z,500
b-1,account-b,units,2026-01-09T12:00:00+01:00,200
"""

# Arrives after January was issued: an adjustment on the next draft.
LATE = """
event_id,customer,metric,timestamp,quantity
a-late,account-a,units,2026-01-28T10:00:00Z,100
"""

# Waiting in the usage inbox: the close collects it.
FEBRUARY = """
event_id,customer,metric,timestamp,quantity
b-feb,account-b,units,2026-02-10T10:00:00Z,300
a-feb,account-a,units,2026-02-11T10:00:00Z,50
"""


def catalog(support: str = "200.00", leaver_end: str | None = None) -> str:
    end = f"end: {leaver_end}," if leaver_end else ""
    return CATALOG.replace('"SUPPORT"', f'"{support}"').replace("LEAVER_END", end)


def prepared(store, monkeypatch) -> Path:
    """Issued invoices through February, drafts for March; then late usage, February's
    usage in the inbox, a price raised, a subscription ended and a backdated customer, so
    that a close through April adds, changes and removes invoices. Returns the inbox."""
    import_yaml(catalog())
    ingest_csv(JANUARY)
    close("2026-02-01", issue=True)
    close("2026-03-01")
    ingest_csv(LATE, name="late.csv")
    import_yaml(catalog(support="250.00", leaver_end="2026-02-28"))
    import_yaml(NEWBIE, name="newbie.yaml")
    inbox = store.workdir / "inbox"
    inbox.mkdir()
    (inbox / "february.csv").write_text(textwrap.dedent(FEBRUARY).lstrip(), encoding="utf-8")
    monkeypatch.setenv("BILLING_USAGE_INBOX", str(inbox))
    return inbox


def files(*folders: Path) -> dict[str, str]:
    """Every file under the folders, with its content's hash."""
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest()
        for folder in folders
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def by_key(result: dict) -> dict[tuple[str, str], dict]:
    return {(i["billed_customer"], i["billing_date"]): i for i in result["invoices"]}


def test_a_dry_run_writes_nothing_and_says_what_would_change(store, monkeypatch):
    inbox = prepared(store, monkeypatch)
    rows, on_disk = everything(store.url), files(store.workdir / "documents", inbox)
    assert store.scalar("SELECT count(*) FROM invoices WHERE status = 'issued'") == 6
    assert store.scalar("SELECT count(*) FROM invoices WHERE status = 'draft'") == 3
    assert any(name.endswith(".html") for name in on_disk)  # the drafts' previews

    result = dry_run(THROUGH, issue=True)

    # Not a row (every table, every column) and not a file: documents, the inbox file.
    assert everything(store.url) == rows
    assert files(store.workdir / "documents", inbox) == on_disk
    assert result["dry_run"] and result["failures"] == {}
    assert result["counts"] == {"added": 5, "changed": 2, "removed": 1, "unchanged": 0}
    found = by_key(result)
    assert {k: i["change"] for k, i in found.items()} == {
        ("hq", "2026-03-01"): "changed",  # late usage, the inbox's February usage
        ("hq", "2026-04-01"): "added",
        ("kessler", "2026-03-01"): "changed",  # the price raised
        ("kessler", "2026-04-01"): "added",
        ("leaver", "2026-03-01"): "removed",  # its subscription ended in February
        ("newbie", "2026-02-01"): "added",  # backdated
        ("newbie", "2026-03-01"): "added",
        ("newbie", "2026-04-01"): "added",
    }
    hq = found[("hq", "2026-03-01")]
    assert (hq["old_total"], hq["new_total"], hq["difference"]) == ("100.00", "540.00", "440.00")
    # Issuing numbers them as a close would: after the six issued, in billing-date order.
    assert (hq["old_status"], hq["new_status"], hq["new_number"]) == (
        "draft",
        "issued",
        "INV-2026-000008",
    )
    assert found[("newbie", "2026-02-01")]["new_number"] == "INV-2026-000007"
    added = {(x["serviced_customer"], x["kind"], x["new_amount"]) for x in hq["lines"]}
    assert ("account-b", "usage", "300.00") in added  # collected from the inbox
    assert ("account-a", "adjustment", "91.51") in added  # January's late usage
    assert all(x["change"] == "added" for x in hq["lines"])
    kessler = found[("kessler", "2026-03-01")]
    assert [
        (x["change"], x["kind"], x["old_amount"], x["new_amount"]) for x in kessler["lines"]
    ] == [("changed", "fixed", "200.00", "250.00"), ("changed", "tax", "38.00", "47.50")]
    leaver = found[("leaver", "2026-03-01")]
    assert (leaver["old_total"], leaver["new_total"], leaver["difference"]) == (
        "50.00",
        None,
        "-50.00",
    )
    assert [x["change"] for x in leaver["lines"]] == ["removed"]
    assert result["totals"] == [
        {"currency": "EUR", "old": "238.00", "new": "595.00", "difference": "357.00"},
        {"currency": "USD", "old": "150.00", "new": "790.00", "difference": "640.00"},
    ]


def test_a_dry_run_without_issue_leaves_drafts_and_a_close_can_follow(store, monkeypatch):
    prepared(store, monkeypatch)
    result = dry_run(THROUGH)
    statuses = {(i["old_status"], i["new_status"]) for i in result["invoices"]}
    assert statuses == {("draft", "draft"), (None, "draft"), ("draft", None)}
    assert all(i["new_number"] is None for i in result["invoices"])
    # The lock was given back: a close runs, and leaves what the dry run said.
    close(THROUGH)
    assert store.scalar(
        "SELECT total FROM invoices WHERE billed_customer_id = 'kessler' "
        "AND billing_date = '2026-03-01'"
    ) in ("297.50", Decimal("297.50"))


def test_a_family_the_close_would_fail_is_named_and_the_others_diffed(store):
    from tests.integration.test_family_isolation import FAMILIES, execute

    import_yaml(FAMILIES)
    execute(store, """UPDATE prices SET terms = '{"amount": "1e400"}' WHERE code = 'fee-b'""")
    rows = everything(store.url)
    result = dry_run(date(2026, 2, 1))
    assert everything(store.url) == rows
    assert list(result["failures"]) == ["solo-b"]
    assert result["failures"]["solo-b"]["step"] == "rate"
    billed = {i["billed_customer"] for i in result["invoices"]}
    assert {"hq", "solo-a"} <= billed and "solo-b" not in billed


def test_while_a_dry_run_computes_the_store_stays_open(store, monkeypatch):
    """SQLite: the dry run computes on a copy, so the store is neither locked nor
    write-locked meanwhile. PostgreSQL: it keeps the close lock until it rolls back, and
    readers go on."""
    import sqlite3

    from billing_core.steps import collect as collection
    from billing_core.store.locks import CloseLocked, close_lock

    prepared(store, monkeypatch)
    seen: dict[str, object] = {}
    collect = collection.collect

    def probe(close_run_id=None, session=None):
        seen["invoices"] = store.scalar("SELECT count(*) FROM invoices")
        if store.backend == "sqlite":
            writer = sqlite3.connect(store.url.removeprefix("sqlite:///"), timeout=0)
            writer.execute("BEGIN IMMEDIATE")  # raises "database is locked" if it is
            writer.rollback()
            writer.close()
        try:
            with close_lock("a probe", 0):
                seen["close lock"] = "free"
        except CloseLocked:
            seen["close lock"] = "held"
        return collect(close_run_id, session)

    monkeypatch.setattr(collection, "collect", probe)
    dry_run(THROUGH)
    assert seen == {
        "invoices": 9,
        "close lock": "free" if store.backend == "sqlite" else "held",
    }
    # The copy is gone.
    assert not [p for p in store.workdir.iterdir() if ".scratch-" in p.name]


def test_a_real_close_lists_the_lines_of_its_first_invoices_and_counts_the_others(
    store, monkeypatch
):
    """A real close's diff (`changes`) reads the lines it lists, not every draft's: the
    same counts, totals and invoices as the diff of every line, the lines of the first
    invoices listed, the others' lines counted; a draft whose lines kept their rows (the
    same digest on PostgreSQL) is unchanged without its lines read again."""
    from billing_core.domain.close_diff import diff_invoices
    from billing_core.steps import dry_run as dry_runs
    from billing_core.steps.close import ISSUE
    from billing_core.store.engine import unit_of_work
    from flows.close_diff import markdown

    prepared(store, monkeypatch)
    monkeypatch.setattr(dry_runs, "LISTED_LINE_TABLES", 2)
    before = dry_runs.drafts()
    reports = [r.as_dict() for r in close(THROUGH, issue=True)]
    result = dry_runs.changes(before, reports, THROUGH, issue=True)
    issued = [i for r in reports if r["step"] == ISSUE.name for i in r["details"]["invoice_ids"]]
    with unit_of_work() as session:
        whole = diff_invoices(before, dry_runs.picture(session, issued))

    assert (
        result["counts"]
        == whole["counts"]
        == {
            "added": 5,
            "changed": 2,
            "removed": 1,
            "unchanged": 0,
        }
    )
    assert result["totals"] == whole["totals"]
    listed = 0
    for got, full in zip(result["invoices"], whole["invoices"], strict=True):
        assert {k: v for k, v in got.items() if k not in ("lines", "unlisted_lines")} == {
            k: v for k, v in full.items() if k != "lines"
        }
        if got["lines"]:
            assert got["lines"] == full["lines"] and "unlisted_lines" not in got
            listed += got["change"] == "added"
        else:  # added beyond the listed: every line counted as added
            assert got["change"] == "added"
            assert got["unlisted_lines"] == len(full["lines"]) > 0
            assert all(line["change"] == "added" for line in full["lines"])
    assert listed == 2
    unlisted = sum(1 for i in result["invoices"] if i.get("unlisted_lines"))
    assert unlisted == 3
    text = markdown({**result, "through": THROUGH.isoformat(), "issue": True, "dry_run": False})
    assert f"the lines of {unlisted} more invoice(s)" not in text  # 50 tables may be shown
    assert text.count("| line | serviced customer |") == 5  # 2 changed, 1 removed, 2 added

    # Closed again, nothing changes: every draft unchanged, its lines not read again
    # where its digest says its rows are the same.
    before = dry_runs.drafts()
    read: list[list[int]] = []
    original = dry_runs.lines_of
    monkeypatch.setattr(
        dry_runs, "lines_of", lambda session, ids: read.append(list(ids)) or original(session, ids)
    )
    again = dry_runs.changes(before, [r.as_dict() for r in close(THROUGH)], THROUGH)
    assert again["invoices"] == [] and again["counts"]["unchanged"] == len(before)
    assert (
        read == [[]]
        if store.url.startswith("postgresql")
        else [sorted(i["id"] for i in before.values())]
    )
