"""The period close: six retryable steps over the billing store, in order (the order of
`billing_core.steps.close.STEPS`: each step is a task of its own, called here by name).

Rating, consolidation, credits and rendering run in shards of customer families fanned out
with `.map()` on the configured task runner (threads, or Dask for a cluster).
"""

from __future__ import annotations

from datetime import date

from prefect import flow, get_run_logger, unmapped
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.futures import as_completed
from prefect.runtime import flow_run
from prefect.states import Failed, State

from billing_core.config import get_settings
from billing_core.steps import close as steps
from billing_core.steps import close_runs
from billing_core.steps import dry_run as dry_runs
from billing_core.steps import shards as sharding
from billing_core.steps.documents import (
    DocumentsNotWritten,
    documents,
    documents_problem,
    summary_rows,
)
from billing_core.steps.failures import CloseFailed, Failures
from billing_core.store.reference import one_catalog_read
from flows.close_diff import counted, dry_close, publish_close_diff
from flows.runtime import (
    brief,
    close_turn,
    ended_by,
    log_report,
    merged,
    outcome,
    publish_failures,
    publish_invoices,
    step,
    task_runner,
    today,
)
from flows.summaries import StepLog


@step("recalculate-schedules")
def recalculate_schedules(through: date, families: list[str] | None = None) -> dict:
    return log_report(steps.recalculate(through, families))


@step("collect-usage")
def collect_usage(through: date, close_run_id: int) -> dict:
    return log_report(steps.collect(through, close_run_id))


@step("rate-usage")
def rate_usage(through: date, families: list[str] | None) -> dict:
    return log_report(steps.rate(through, families))


@step("consolidate-rollups")
def consolidate_rollups(through: date, families: list[str] | None) -> dict:
    return log_report(steps.consolidate(through, families))


@step("apply-credits")
def apply_credits(through: date, families: list[str] | None) -> dict:
    return log_report(steps.apply_credits(through, families))


@step("issue-invoices")
def issue_invoices(through: date, exclude_families: list[str] | None = None) -> dict:
    return log_report(steps.issue(through, exclude_families=exclude_families))


@step("render-invoices")
def render_invoices(through: date, families: list[str] | None) -> dict:
    return log_report(steps.render(through, families))


# Run again when a failed run is retried: documents it could not write may be writable now.
render_invoices = render_invoices.with_options(refresh_cache=True)


def _once(task, log: StepLog, failed: Failures, *args) -> dict:
    """Run a step once (not sharded); its report is recorded and published as it
    finishes. A failure stops the close, its step's artifact saying why."""
    state = task(*args, return_state=True)
    try:
        report = outcome(state.result(raise_on_failure=False))
    except Exception as error:
        log.failed(task.name, error)
        raise
    return log.done(failed.note(report), [state])


def _fan_out(task, through: date, shards: list, failed: Failures, log: StepLog) -> dict | None:
    """Run a step over every shard and report it as one; show progress while it runs. A
    shard that failed some families still reports the others; any other failure stops
    the close."""
    shards = sharding.without(shards, failed)
    if not shards:
        return None
    futures = task.map(unmapped(through), shards)
    if len(shards) > 1:
        progress = create_progress_artifact(0.0, description=f"{task.name}: shards done")
        for done, _ in enumerate(as_completed(futures), start=1):
            update_progress_artifact(progress, 100.0 * done / len(shards))
    try:
        parts = [outcome(f.result(raise_on_failure=False)) for f in futures]
    except Exception as error:
        log.failed(task.name, error)
        raise
    return log.done(failed.note(merged(parts)), [f.state for f in futures], parts)


@flow(name="period-close", task_runner=task_runner())
def period_close(
    through: date | None = None, issue: bool = False, dry_run: bool = False
) -> dict | State:
    """Close every billing date up to and including `through` (default: today).

    With `dry_run`, compute the close (issuing too, with `issue`) and write nothing: the
    `close-diff` artifact and the result (the whole diff) say what it would change. A real
    close publishes the same for the drafts it replaced, and returns a small result: its
    record's id, its date, each step's counts and money (`runtime.brief`), and the diff's
    counts and totals per currency (`close_diff.counted`).

    A family whose rating, consolidation, credits or documents fail is left as it was;
    the others are finished, and then the run fails naming each failed family (task log,
    the `close-failures` artifact, `close_runs.failures`). Retry the run after the fix.
    """
    settings = get_settings()
    run = str(flow_run.get_id() or "")
    # A retried run closes the date its first attempt chose, whenever it is retried.
    through = through or close_runs.recorded_through(run) or today()
    if dry_run:
        return dry_close(through, issue, run)
    failed = Failures()
    with close_turn(f"flow run {run or 'local'}", run), one_catalog_read():
        replaced = dry_runs.drafts()
        run_id = close_runs.start_run(through, issue, run or None)
        # Each step's report is recorded and published as the step finishes.
        log = StepLog(through, run_id)
        try:
            _once(recalculate_schedules, log, failed, through)
            _once(collect_usage, log, failed, through, run_id)
            shards = sharding.shards(settings.shards) if settings.shards > 1 else [None]
            get_run_logger().info(f"{len(shards)} shard(s) of customer families")
            for task in (rate_usage, consolidate_rollups, apply_credits):
                _fan_out(task, through, shards, failed, log)
            if issue:
                _once(issue_invoices, log, failed, through, sorted(failed) or None)
            if len(shards) > 1:  # documents weigh differently from customers
                shards = sharding.render_shards(through, settings.shards)
            _fan_out(render_invoices, through, shards, failed, log)
        except BaseException as error:
            close_runs.finish_run(run_id, ended_by(error), dict(failed))
            raise
        reports = log.reports
        # Documents that could not be written: the close is recorded, and ends failed.
        problem = documents_problem(reports)
        ended = "failed" if failed or problem else "completed"
        close_runs.finish_run(run_id, ended, dict(failed))
        changed = dry_runs.changes(replaced, reports, through, issue)
    publish_invoices(summary_rows(through=through), documents(through=through), through)
    publish_close_diff(changed)
    if failed:
        publish_failures(failed, through)
        raise CloseFailed(dict(failed), through, documents=problem)
    # A small result: Prefect walks every object a flow returns (looking for futures),
    # and the whole diff of the benchmark's close (6,000 invoices, 54,000 lines) took it
    # seconds (docs/performance.md, "The CLI's fixed cost, on a big store"). The invoices
    # changed are in `close-diff`; each step's whole report on the close's record.
    result = {
        "close_run_id": run_id,
        "through": through.isoformat(),
        "issue": issue,
        "steps": [brief(report) for report in reports],
        "diff": counted(changed),
    }
    if problem:
        return Failed(message=problem, data=DocumentsNotWritten(problem, result))
    return result


def configured_close():
    """The close flow on the task runner the environment asks for (read now, not at import)."""
    return period_close.with_options(task_runner=task_runner())
