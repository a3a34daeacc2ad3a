"""The period-close flow under a real Prefect API: six steps in order, idempotent."""

from __future__ import annotations

import json
import time
from datetime import date

from prefect import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from flows.period_close import period_close
from tests.helpers import import_yaml, ingest_csv, one
from tests.integration.test_close import POOLED, USAGE, snapshot

STEPS = [
    "recalculate-schedules",
    "collect-usage",
    "rate-usage",
    "consolidate-rollups",
    "apply-credits",
    "render-invoices",
]


def task_runs(flow_run_id, at_least: int = 0) -> list:
    """The task runs of a flow run, in the order they started. The server records task
    runs from their events, a moment after they happen: wait (up to 30 s) for `at_least`
    of them, each in a final state."""
    deadline = time.monotonic() + 30
    while True:
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )
        settled = len(runs) >= at_least and all(r.state and r.state.is_final() for r in runs)
        if settled or time.monotonic() > deadline:
            return sorted(runs, key=lambda r: r.start_time)
        time.sleep(0.2)


def test_close_runs_the_six_steps_in_order(store, prefect_server):
    import_yaml(POOLED)
    ingest_csv(USAGE)
    state = period_close(through=date(2026, 2, 1), return_state=True)
    assert state.is_completed()
    runs = task_runs(state.state_details.flow_run_id, at_least=len(STEPS))
    assert [r.name.rsplit("-", 1)[0] for r in runs] == STEPS
    assert all(r.state.is_completed() for r in runs)
    assert one(billed_customer="hq", billing_date="2026-02-01")["total"] == "1410.00"
    recorded = store.rows("SELECT status, steps FROM close_runs")
    assert recorded[0][0] == "completed"


def test_flow_twice_leaves_the_same_rows_and_issue_adds_a_step(store, prefect_server):
    import_yaml(POOLED)
    ingest_csv(USAGE)
    period_close(through=date(2026, 2, 1))
    first = snapshot(store.url)
    period_close(through=date(2026, 2, 1))
    assert snapshot(store.url) == first
    state = period_close(through=date(2026, 2, 1), issue=True, return_state=True)
    runs = task_runs(state.state_details.flow_run_id, at_least=len(STEPS) + 1)
    names = [r.name.rsplit("-", 1)[0] for r in runs]
    assert names == STEPS[:5] + ["issue-invoices", "render-invoices"]
    assert one(billed_customer="hq", billing_date="2026-02-01")["status"] == "issued"


def _longest_list(value) -> int:
    if isinstance(value, dict):
        return max(map(_longest_list, value.values()), default=0)
    if isinstance(value, list | tuple):
        return max([len(value), *map(_longest_list, value)])
    return 0


def test_a_close_returns_counts_and_totals_not_its_invoices(store, prefect_server):
    """Prefect walks every object a flow returns: the close's result says what it did in
    counts and money, whatever the number of invoices; the invoices themselves are in the
    store, the `close-diff` artifact and each step's full report on the close's record."""
    import_yaml(POOLED)
    ingest_csv(USAGE)
    state = period_close(through=date(2026, 2, 1), issue=True, return_state=True)
    assert state.is_completed()
    result = state.result()
    assert set(result) == {"close_run_id", "through", "issue", "steps", "diff"}
    assert set(result["diff"]) == {"through", "issue", "dry_run", "counts", "totals"}
    issued = store.rows("SELECT number FROM invoices WHERE status = 'issued'")
    assert len(issued) >= 2
    assert result["diff"]["counts"]["added"] == len(issued)
    step = next(s for s in result["steps"] if s["step"] == "issue invoices")
    assert step["written"] == step["details"]["issued"] == len(issued)
    assert "USD" in step["details"]["money"]["issued"]
    # Nothing in it is one per invoice: no list longer than the list of steps, no number.
    assert _longest_list(result) == len(result["steps"])
    assert not any(r.number in str(result) for r in issued)
    # The whole report stays on the close's record.
    recorded = store.scalar("SELECT steps FROM close_runs WHERE id = :i", i=result["close_run_id"])
    recorded = recorded if isinstance(recorded, dict) else json.loads(recorded)
    assert sorted(recorded["issue invoices"]["details"]["issued"]) == sorted(
        r.number for r in issued
    )
