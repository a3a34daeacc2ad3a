"""A close as the operator reads it in Prefect, under a real Prefect API: each step's summary
is published as the step finishes (also when a later step fails), keyed by its task's name
in step order; a Retry's cached steps say so, and from which attempt; a failed step's state
message is one line with the cause, its statement in the debug log."""

from __future__ import annotations

import json
import logging
import re
from datetime import date

import pytest
import sqlalchemy as sa
from prefect import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from prefect.flow_engine import run_flow
from prefect.states import Scheduled

import flows.period_close as period_close_module
from billing_core.store.engine import dispose_engines, get_engine
from flows.period_close import period_close
from tests.flows.refusals import accept_inserts, refuse_inserts
from tests.flows.test_period_close_flow import task_runs
from tests.helpers import import_yaml, ingest_csv
from tests.integration.test_close import USAGE
from tests.integration.test_family_isolation import FAMILIES

THROUGH = date(2026, 2, 1)
KEYS = [
    "1-recalculate-schedules",
    "2-collect-usage",
    "3-rate-usage",
    "4-consolidate-rollups",
    "5-apply-credits",
    "7-render-invoices",
]


def no_retries(monkeypatch, *names: str) -> None:
    """The steps named fail at once instead of after their retries."""
    for name in names:
        task = getattr(period_close_module, name)
        monkeypatch.setattr(period_close_module, name, task.with_options(retries=0))


def latest_artifacts(flow_run_id) -> dict[str, str]:
    """The newest version of each keyed artifact of a flow run: key -> its data."""
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    latest = {}
    for artifact in sorted(artifacts, key=lambda a: a.created):
        if artifact.key:
            latest[artifact.key] = artifact.data
    return latest


def retry(flow_run_id):
    """What `prefect flow-run retry` does for a run without a deployment: the same flow
    run, scheduled again and run here."""
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(flow_run_id, Scheduled(), force=True)
        flow_run = client.read_flow_run(flow_run_id)
    return run_flow(
        period_close, flow_run=flow_run, parameters=flow_run.parameters, return_type="state"
    )


def unescaped(markdown: str) -> str:
    return re.sub(r"\\(.)", r"\1", markdown)


def refusal(store) -> str:
    """The database's own reason when `refuse_inserts` refuses a row."""
    if store.backend == "sqlite":
        return "OperationalError: no such table: main.no_such_table"
    return "DiskFull: could not extend file: No space left on device"


def recorded_steps(store) -> tuple[str, dict]:
    status, steps = store.rows("SELECT status, steps FROM close_runs")[0]
    return status, steps if isinstance(steps, dict) else json.loads(steps)


def test_a_failed_run_shows_the_steps_done_and_a_retry_says_which_were_cached(
    store, prefect_server, monkeypatch
):
    import_yaml(FAMILIES)
    ingest_csv(USAGE)
    refuse_inserts(store, "invoices")  # the consolidation cannot write its drafts
    no_retries(monkeypatch, "consolidate_rollups")

    state = period_close(through=THROUGH, return_state=True)
    assert state.is_failed()
    flow_run_id = state.state_details.flow_run_id
    # The steps that completed published their summaries; the failed one says why.
    first = latest_artifacts(flow_run_id)
    assert sorted(first) == KEYS[:4]
    rate = first["3-rate-usage"]
    assert "| rated | 9 | 40.00 | 1580.00 |" in rate  # money per currency
    assert "computed on attempt 1" in rate and "Cached" not in rate
    assert "Failed on attempt 1" in first["4-consolidate-rollups"]
    assert "consolidate-rollups failed: " in first["4-consolidate-rollups"]
    assert refusal(store) in unescaped(first["4-consolidate-rollups"])
    # ... and the store has their reports too.
    status, steps = recorded_steps(store)
    assert status == "failed"
    assert set(steps) == {"recalculate schedules", "collect usage", "rate"}
    assert steps["rate"]["details"]["money"]["rated"] == {"EUR": "40.00", "USD": "1580.00"}

    accept_inserts(store, "invoices")  # the fix
    done = retry(flow_run_id)
    assert done.is_completed(), done
    assert done.state_details.flow_run_id == flow_run_id
    latest = latest_artifacts(flow_run_id)
    assert [k for k in sorted(latest) if k[0].isdigit()] == KEYS  # task names, step order
    names = {r.name.rsplit("-", 1)[0] for r in task_runs(flow_run_id, at_least=10)}
    assert {key.split("-", 1)[1] for key in KEYS} == names
    for key in KEYS[:3]:
        assert "Cached from attempt 1 (not run again)" in latest[key], latest[key]
        assert "computed on attempt 1" in latest[key]
    assert "| rated | 9 | 40.00 | 1580.00 |" in latest["3-rate-usage"]  # attempt 1's figures
    for key in KEYS[3:]:
        assert "Cached" not in latest[key] and "computed on attempt 2" in latest[key]
    consolidated = latest["4-consolidate-rollups"]
    assert "| invoices created | 6 | 40.00 | 1580.00 |" in consolidated
    assert "| credit applied to drafts | 150.00 |" in latest["5-apply-credits"]
    assert "close-invoices" in latest
    status, steps = recorded_steps(store)
    assert status == "completed"
    assert steps["rate"]["details"]["cached_from"] == 1
    assert "cached_from" not in steps["consolidate roll-ups"]["details"]
    assert steps["render invoices"]["details"]["attempt"] == 2


def test_a_failed_steps_state_is_one_line_and_its_statement_goes_to_the_debug_log(
    store, prefect_server, monkeypatch
):
    import_yaml(FAMILIES)
    ingest_csv(USAGE)
    refuse_inserts(store, "charges")
    no_retries(monkeypatch, "rate_usage")
    records: list[logging.LogRecord] = []
    handler = logging.Handler(level=logging.DEBUG)
    handler.emit = records.append
    logger = logging.getLogger("prefect.task_runs")
    level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        state = period_close(through=THROUGH, return_state=True)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert state.is_failed()
    runs = task_runs(state.state_details.flow_run_id, at_least=3)
    (rate,) = [r for r in runs if r.name[:4] == "rate"]
    for message in (rate.state.message, state.message):
        assert "\n" not in message, message
        assert "INSERT" not in message and "[parameters" not in message, message
        assert "StepFailed: rate-usage failed: " in message, message
        assert refusal(store) in message
    debug = [r.getMessage() for r in records if r.levelno == logging.DEBUG]
    assert any("INSERT INTO charges" in m and "parameters:" in m for m in debug), debug


@pytest.fixture
def app_role(store, monkeypatch):
    """An application role with the row privileges `billing db grant` gives, and the
    store's URL as that role (PostgreSQL only); dropped at the end."""
    if store.backend != "postgres":
        pytest.skip("privileges are PostgreSQL's")
    import uuid

    from typer.testing import CliRunner

    from billing_core.cli.app import app

    role = "billing_app_" + uuid.uuid4().hex[:10]
    as_owner(store, f"CREATE ROLE {role} LOGIN")
    granted = CliRunner().invoke(app, ["db", "grant", role, "--apply"])
    assert granted.exit_code == 0, granted.output
    url = sa.engine.make_url(store.url).set(username=role).render_as_string(hide_password=False)
    yield role, url
    monkeypatch.setenv("BILLING_DATABASE_URL", store.url)
    dispose_engines()
    as_owner(store, f"DROP OWNED BY {role}")
    as_owner(store, f"DROP ROLE {role}")
    dispose_engines()


def as_owner(store, sql: str) -> None:
    with get_engine(store.url).begin() as connection:
        connection.execute(sa.text(sql))


def test_a_revoked_privilege_fails_the_step_in_one_line_not_family_by_family(
    store, app_role, prefect_server, monkeypatch
):
    """What an operator tried by hand: a privilege revoked under the rate step, then
    granted back and the run retried."""
    role, url = app_role
    import_yaml(FAMILIES)
    ingest_csv(USAGE)
    as_owner(store, f"REVOKE INSERT ON charges FROM {role}")
    monkeypatch.setenv("BILLING_DATABASE_URL", url)
    dispose_engines()
    no_retries(monkeypatch, "rate_usage")

    state = period_close(through=THROUGH, return_state=True)
    assert state.is_failed()
    assert state.message.endswith(
        "StepFailed: rate-usage failed: InsufficientPrivilege: permission denied for table charges"
    ), state.message
    # The store's refusal, not a family's fault: the step was not split family by family.
    assert store.rows("SELECT status, failures FROM close_runs") == [("failed", None)]

    as_owner(store, f"GRANT INSERT ON charges TO {role}")
    done = retry(state.state_details.flow_run_id)
    assert done.is_completed(), done
    assert store.scalar("SELECT count(*) FROM invoices") == 6
