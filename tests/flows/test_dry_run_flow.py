"""The period-close flow's dry run under a real Prefect API, on each store: it writes
nothing, publishes `close-diff`, and its diff is exactly what the close then does
(checked against dumps of the invoices and their lines taken with plain SQL)."""

from __future__ import annotations

from collections import Counter
from datetime import date, timedelta
from decimal import Decimal

import pytest
from prefect import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

from flows.backfill import backfill
from flows.close_diff import markdown
from flows.period_close import period_close
from tests.integration.test_dry_run import THROUGH, files, prepared
from tests.integration.test_preview import everything


def artifacts(flow_run_id) -> dict[str, str]:
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return {a.key: a.data for a in found if a.key}


def _day(value) -> str:
    return str(value)[:10]


def _number(value) -> Decimal | None:
    return None if value is None else Decimal(str(value)).normalize()


def invoices_and_lines(store) -> dict[tuple[str, str], tuple]:
    """Every invoice (any status) by billed customer and billing date: its status, number,
    currency, total and its lines as a multiset, read with plain SQL."""
    invoices = {
        (r[0], _day(r[1])): (r[2], r[3], r[4], _number(r[5]))
        for r in store.rows(
            "SELECT billed_customer_id, billing_date, status, number, currency, total FROM invoices"
        )
    }
    lines: dict[tuple[str, str], Counter] = {key: Counter() for key in invoices}
    for r in store.rows(
        "SELECT i.billed_customer_id, i.billing_date, l.serviced_customer_id, l.kind, "
        "l.product, l.price_code, l.subscription_id, l.period_start, l.period_end, "
        "l.quantity, l.amount FROM invoice_lines l JOIN invoices i ON i.id = l.invoice_id"
    ):
        last = date.fromisoformat(_day(r[8])) - timedelta(days=1) if r[8] else None
        lines[(r[0], _day(r[1]))][
            (
                r[2],
                r[3],
                r[4],
                r[5],
                r[6],
                _day(r[7]) if r[7] else None,
                last.isoformat() if last else None,
                _number(r[9]),
                _number(r[10]),
            )
        ] += 1
    return {key: (*invoices[key], lines[key]) for key in invoices}


def _line(change: dict, side: str) -> tuple:
    return (
        change["serviced_customer"],
        change["kind"],
        change["product"],
        change["price"],
        change["subscription"],
        change["period_start"],
        change["period_end"],
        _number(change[f"{side}_quantity"]),
        _number(change[f"{side}_amount"]),
    )


@pytest.mark.parametrize("issue", [False, True], ids=["drafts", "issuing"])
def test_the_dry_runs_diff_is_exactly_what_the_close_then_does(
    store, monkeypatch, prefect_server, issue
):
    prepared(store, monkeypatch)
    dry = period_close(through=THROUGH, issue=issue, dry_run=True)
    before = invoices_and_lines(store)
    closed = period_close(through=THROUGH, issue=issue, return_state=True)
    real = closed.result()
    after = invoices_and_lines(store)

    # What changed, found from the two dumps alone.
    changed = {
        key: "added" if key not in before else "removed" if key not in after else "changed"
        for key in before.keys() | after.keys()
        if before.get(key) != after.get(key)
    }
    assert len(changed) == 8  # the scenario adds, changes and removes invoices
    assert {(i["billed_customer"], i["billing_date"]): i["change"] for i in dry["invoices"]} == (
        changed
    )
    assert dry["counts"]["unchanged"] == sum(
        1 for key in before if key in after and key not in changed and before[key][0] == "draft"
    )
    sums: dict[str, list[Decimal]] = {}
    for invoice in dry["invoices"]:
        key = (invoice["billed_customer"], invoice["billing_date"])
        old, new = before.get(key), after.get(key)
        # Status, number, currency and total before and after, as the dumps have them.
        assert (invoice["old_status"], invoice["old_number"]) == (old[:2] if old else (None, None))
        assert (invoice["new_status"], invoice["new_number"]) == (new[:2] if new else (None, None))
        assert _number(invoice["old_total"]) == (old[3].normalize() if old else None)
        assert _number(invoice["new_total"]) == (new[3].normalize() if new else None)
        # The old lines with the diff's line changes applied are the new lines.
        lines = Counter(old[4]) if old else Counter()
        for change in invoice["lines"]:
            if change["change"] in ("removed", "changed"):
                lines[_line(change, "old")] -= 1
            if change["change"] in ("added", "changed"):
                lines[_line(change, "new")] += 1
        assert +lines == (new[4] if new else Counter()), key
        for state, side in ((old, 0), (new, 1)):
            if state is not None:
                sums.setdefault(state[2], [Decimal(0), Decimal(0)])[side] += state[3]
    assert [(t["currency"], _number(t["old"]), _number(t["new"])) for t in dry["totals"]] == [
        (currency, old.normalize(), new.normalize())
        for currency, (old, new) in sorted(sums.items())
    ]
    # The close publishes the same change, against the drafts it replaced: its result
    # counts it, its artifact lists it.
    assert {k: real["diff"][k] for k in ("counts", "totals")} == {
        k: dry[k] for k in ("counts", "totals")
    }
    assert "invoices" not in real["diff"]
    published = artifacts(closed.state_details.flow_run_id)["close-diff"]
    assert published == markdown({**dry, "dry_run": False})


def test_the_flows_dry_run_writes_nothing_and_publishes_close_diff(
    store, monkeypatch, prefect_server
):
    inbox = prepared(store, monkeypatch)
    rows, on_disk = everything(store.url), files(store.workdir / "documents", inbox)
    state = period_close(through=THROUGH, issue=True, dry_run=True, return_state=True)
    assert state.is_completed()
    assert everything(store.url) == rows  # close_runs included: a dry run records no close
    assert files(store.workdir / "documents", inbox) == on_disk
    result = state.result()
    assert result["counts"] == {"added": 5, "changed": 2, "removed": 1, "unchanged": 0}
    published = artifacts(state.state_details.flow_run_id)
    assert set(published) == {"close-diff"}  # no step summary, no invoice table
    markdown = published["close-diff"]
    assert "dry run: nothing was written" in markdown
    assert "5 invoice(s) added, 2 changed, 1 removed, 0 unchanged" in markdown
    for customer in ("hq", "kessler", "leaver", "newbie"):
        assert f"| {customer} |" in markdown
    assert "| EUR | 238.00 | 595.00 | +357.00 |" in markdown
    assert "200.00 → 250.00" in markdown
    assert "draft → issued INV" in markdown
    # A backfill's dry run is that of one close through its end (its contract).
    backfilled = backfill(start=date(2026, 3, 1), end=THROUGH, issue=True, dry_run=True)
    assert backfilled["invoices"] == result["invoices"]
    assert everything(store.url) == rows

    # A real close publishes its own change under the same key.
    state = period_close(through=THROUGH, issue=True, return_state=True)
    assert state.is_completed()
    markdown = artifacts(state.state_details.flow_run_id)["close-diff"]
    assert "What the close through 2026-04-01, issuing changed" in markdown
    assert "| EUR | 238.00 | 595.00 | +357.00 |" in markdown
    assert not (inbox / "february.csv").exists()  # the real close collected it
