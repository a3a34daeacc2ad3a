"""The period close: six retryable steps over the billing store, in order."""

from __future__ import annotations

from datetime import date

from prefect import flow, get_run_logger, task
from prefect.runtime import flow_run

from billing_core import close as steps
from billing_core.report import StepReport


def _log(report: StepReport) -> dict:
    logger = get_run_logger()
    logger.info(report.summary())
    for warning in report.warnings:
        logger.warning(warning)
    return report.as_dict()


@task(name="recalculate-schedules", retries=2, retry_delay_seconds=5)
def recalculate_schedules(through: date) -> dict:
    return _log(steps.recalculate(through))


@task(name="collect-usage", retries=2, retry_delay_seconds=5)
def collect_usage(through: date, close_run_id: int) -> dict:
    return _log(steps.collect(through, close_run_id))


@task(name="rate-usage", retries=2, retry_delay_seconds=5)
def rate_usage(through: date) -> dict:
    return _log(steps.rate(through))


@task(name="consolidate-rollups", retries=2, retry_delay_seconds=5)
def consolidate_rollups(through: date) -> dict:
    return _log(steps.consolidate(through))


@task(name="apply-credits", retries=2, retry_delay_seconds=5)
def apply_credits(through: date) -> dict:
    return _log(steps.apply_credits(through))


@task(name="issue-invoices", retries=2, retry_delay_seconds=5)
def issue_invoices(through: date) -> dict:
    return _log(steps.issue(through))


@task(name="render-invoices", retries=2, retry_delay_seconds=5)
def render_invoices(through: date) -> dict:
    return _log(steps.render(through))


@flow(name="period-close", log_prints=True)
def period_close(through: date | None = None, issue: bool = False) -> dict:
    """Close every billing date up to and including `through` (default: today)."""
    through = through or date.today()
    run_id = steps.start_run(through, issue, str(flow_run.get_id() or "") or None)
    reports = []
    try:
        reports.append(recalculate_schedules(through))
        reports.append(collect_usage(through, run_id))
        reports.append(rate_usage(through))
        reports.append(consolidate_rollups(through))
        reports.append(apply_credits(through))
        if issue:
            reports.append(issue_invoices(through))
        reports.append(render_invoices(through))
    except BaseException:
        steps.finish_run(run_id, "failed")
        raise
    for report in reports:
        steps.record_step(run_id, StepReport.from_dict(report))
    steps.finish_run(run_id, "completed")
    return {
        "close_run_id": run_id,
        "through": through.isoformat(),
        "issue": issue,
        "steps": reports,
    }
