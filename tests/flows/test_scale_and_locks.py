"""One close at a time per store, Dask shards, backfills and what the operator sees."""

from __future__ import annotations

import json
import threading
import time
from datetime import date

import pytest
from prefect import get_client
from typer.testing import CliRunner

from billing_core.cli.app import app
from billing_core.store.locks import close_lock
from tests.conftest import using_store
from tests.helpers import close, import_yaml, ingest_csv, invoices
from tests.integration.test_close import POOLED, USAGE, snapshot

# Several families: pooled usage, a roll-up of three, a payer of its own.
FAMILIES = POOLED.replace(
    "customers:\n",
    """customers:
  - {id: gi, name: Global Industries, currency: USD}
  - {id: gi-na, name: GI North America, currency: USD, parent: gi}
  - {id: gi-eu, name: GI Europe, currency: USD, parent: gi}
  - {id: solo, name: Solo, currency: USD}
""",
).replace(
    "subscriptions:\n",
    """subscriptions:
  - {id: sub-gi, customer: gi, start: 2026-01-01, billing_day: 1,
     items: [{price: platform, timing: in_arrears}]}
  - {id: sub-na, customer: gi-na, start: 2026-01-15, billing_day: 15,
     items: [{price: platform, timing: in_arrears}]}
  - {id: sub-eu, customer: gi-eu, start: 2026-01-01, billing_day: 1,
     items: [{price: units-tiered, timing: in_arrears}]}
  - {id: sub-solo, customer: solo, start: 2026-01-10, billing_day: 10,
     items: [{price: platform, timing: in_advance}]}
""",
)
MORE_USAGE = (
    USAGE
    + """eu-1,gi-eu,units,2026-01-12T10:00:00Z,250
eu-2,gi-eu,units,2026-02-12T10:00:00Z,1250
a-3,account-a,units,2026-02-03T10:00:00Z,700
"""
)


def exported() -> list[dict]:
    return [{k: v for k, v in i.items() if k not in ("id", "issued_at")} for i in invoices()]


def test_a_second_close_stops_with_a_clear_message(store, prefect_server):
    import_yaml(POOLED)
    with close_lock("a close started from the CLI"):
        result = CliRunner().invoke(app, ["close", "--through", "2026-02-01"])
    assert result.exit_code == 1
    assert "another close is running" in result.stderr
    assert "a close started from the CLI" in result.stderr
    assert store.scalar("SELECT count(*) FROM invoices") == 0


def test_a_waiting_close_proceeds_once_the_first_finishes(store, monkeypatch):
    import_yaml(POOLED)
    ingest_csv(USAGE)
    monkeypatch.setenv("BILLING_CLOSE_LOCK_TIMEOUT", "30")
    released = threading.Event()

    def hold():
        with close_lock("the first close"):
            time.sleep(2)
        released.set()

    holder = threading.Thread(target=hold)
    holder.start()
    time.sleep(0.5)
    close("2026-02-01")  # waits for the lock, then runs
    holder.join()
    assert released.is_set()
    assert store.scalar("SELECT count(*) FROM invoices") == 2


def test_dask_shards_give_the_same_invoices_as_threads(
    store, another_store, prefect_server, monkeypatch
):
    from flows.period_close import configured_close

    import_yaml(FAMILIES)
    ingest_csv(MORE_USAGE)
    monkeypatch.setenv("BILLING_SHARDS", "3")
    monkeypatch.setenv("BILLING_TASK_RUNNER", "dask")
    monkeypatch.setenv("BILLING_DASK_WORKERS", "2")
    state = configured_close()(through=date(2026, 3, 1), issue=True, return_state=True)
    assert state.is_completed()
    result = state.result()
    rate = next(s for s in result["steps"] if s["step"] == "rate")
    assert rate["details"]["shards"] == 3
    sharded = exported()
    assert len(sharded) >= 6

    monkeypatch.delenv("BILLING_SHARDS")
    monkeypatch.delenv("BILLING_TASK_RUNNER")
    with using_store(another_store("threads")) as other:
        import_yaml(FAMILIES, folder=other.workdir)
        ingest_csv(MORE_USAGE, folder=other.workdir)
        configured_close()(through=date(2026, 3, 1), issue=True)
        assert exported() == sharded


def test_backfill_gives_what_timely_closes_gave_and_reruns_cleanly(
    store, another_store, prefect_server
):
    from flows.backfill import backfill

    import_yaml(FAMILIES)
    ingest_csv(MORE_USAGE)
    result = backfill(start=date(2026, 1, 1), end=date(2026, 3, 1), issue=True)
    # hq's platform fee in advance on the 1st, solo's on the 10th; GI North America's
    # period from the 15th rolls up to gi, whose own calendar is the 1st.
    assert result["closes"] == [
        "2026-01-01",
        "2026-01-10",
        "2026-02-01",
        "2026-02-10",
        "2026-03-01",
    ]
    backfilled = exported()
    first = snapshot(store.url)
    backfill(start=date(2026, 1, 1), end=date(2026, 3, 1), issue=True)
    assert snapshot(store.url) == first

    with using_store(another_store("timely")) as other:
        import_yaml(FAMILIES, folder=other.workdir)
        ingest_csv(MORE_USAGE, folder=other.workdir)
        for day in result["closes"]:  # a close on each billing date, as it came
            close(day, issue=True)
        assert exported() == backfilled


def test_the_close_publishes_what_the_operator_reads(store, prefect_server):
    from flows.period_close import configured_close

    import_yaml(POOLED)
    ingest_csv(USAGE)
    state = configured_close()(through=date(2026, 2, 1), return_state=True)
    flow_run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    by_key = {a.key: a for a in artifacts if a.key}
    assert {"close-invoices", "close-documents", "3-rate-usage", "5-apply-credits"} <= set(by_key)
    table = json.loads(by_key["close-invoices"].data)  # by column, as the UI reads it
    assert list(table) == [
        "invoice",
        "billed customer",
        "billing date",
        "status",
        "total",
        "currency",
    ]
    assert len({len(column) for column in table.values()}) == 1
    assert "hq" in table["billed customer"] and "1410.00" in table["total"]
    assert ".html" in by_key["close-documents"].data
    assert "| rated | 5 | 1560.00 |" in by_key["3-rate-usage"].data


def test_a_local_dask_cluster_is_started_without_dasks_profiler(monkeypatch):
    import dask

    from flows.runtime import PROFILER, task_runner

    monkeypatch.setenv("BILLING_TASK_RUNNER", "dask")
    monkeypatch.delenv(PROFILER, raising=False)
    key = "distributed.worker.profile.enabled"
    with dask.config.set({key: True}):
        task_runner()
        assert dask.config.get(key) is False
    # An operator who asks for it keeps it.
    monkeypatch.setenv(PROFILER, "True")
    with dask.config.set({key: True}):
        task_runner()
        assert dask.config.get(key) is True


@pytest.mark.parametrize("count", [1, 2, 5])
def test_shards_never_split_a_family(store, count):
    from billing_core.steps.shards import shards

    import_yaml(FAMILIES)
    parts = shards(count)
    families = [f for part in parts for f in part]
    assert sorted(families) == sorted(set(families)) == ["gi", "hq", "solo"]
    assert len(parts) == min(count, 3)


# Two families of three customers: one rolled up to its root (one invoice a month), one
# whose children pay their own (three invoices), and a payer of its own.
DOCUMENTS = """
customers:
  - {id: up, name: Rolled Up, currency: USD}
  - {id: up-a, name: Rolled Up A, currency: USD, parent: up}
  - {id: up-b, name: Rolled Up B, currency: USD, parent: up}
  - {id: own, name: Own Payers, currency: USD}
  - {id: own-a, name: Own Payer A, currency: USD, parent: own, bill_to: self}
  - {id: own-b, name: Own Payer B, currency: USD, parent: own, bill_to: self}
  - {id: solo, name: Solo, currency: USD}
prices:
  - {code: platform, product: Platform, currency: USD, model: flat, amount: "100.00"}
subscriptions:
""" + "".join(
    f"""  - {{id: sub-{c}, customer: {c}, start: 2026-01-01, billing_day: 1,
     items: [{{price: platform, timing: in_arrears}}]}}
"""
    for c in ("up", "up-a", "up-b", "own", "own-a", "own-b", "solo")
)


def test_render_shards_weigh_the_documents_to_write(store):
    from billing_core.steps.shards import render_shards, shards

    import_yaml(DOCUMENTS)
    close("2026-02-01")
    by_family = dict(store.rows("SELECT family_id, count(*) FROM invoices GROUP BY family_id"))
    assert by_family == {"own": 3, "solo": 1, "up": 1}
    # By customers, the two families of three weigh the same and go apart, solo with the
    # first; by documents, the family writing three is alone.
    assert shards(2) == [["own", "solo"], ["up"]]
    assert render_shards(date(2026, 2, 1), 2) == [["own"], ["up", "solo"]]
    # Once the documents are written and the invoices issued, nothing weighs: every
    # family keeps a place (its issued documents are still checked), in one shard.
    close("2026-02-01", issue=True)
    assert render_shards(date(2026, 2, 1), 2) == [["own", "solo", "up"]]
