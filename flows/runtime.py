"""What the flows share: the task runner chosen by configuration, step options, and the
artifacts an operator reads in the Prefect UI."""

from __future__ import annotations

import os
from datetime import date, datetime
from zoneinfo import ZoneInfo

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import INPUTS, RUN_ID, TASK_SOURCE
from prefect.task_runners import ThreadPoolTaskRunner

from billing_core.config import get_settings
from billing_core.report import StepReport

# Completed steps are cached per flow run: a retried run (same flow-run id, as the UI's
# Retry makes) skips them and resumes at the step that failed. The store stays the source
# of truth, so running a step again is harmless anyway.
STEP_CACHE = INPUTS + TASK_SOURCE + RUN_ID


def step(name: str):
    """A close step: retried on failure, its result persisted for flow-run retries."""
    settings = get_settings()
    return task(
        name=name,
        retries=settings.task_retries,
        retry_delay_seconds=settings.task_retry_delay,
        persist_result=True,
        cache_policy=STEP_CACHE,
    )


PROFILER = "DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED"  # set it to keep Dask's own


def task_runner():
    """Threads by default; a Dask cluster with BILLING_TASK_RUNNER=dask (an existing one at
    BILLING_DASK_ADDRESS, else a local cluster of BILLING_DASK_WORKERS processes)."""
    settings = get_settings()
    if settings.task_runner == "dask":
        import dask
        from prefect_dask import DaskTaskRunner

        if settings.dask_address:
            return DaskTaskRunner(address=settings.dask_address)
        if PROFILER not in os.environ:
            # Dask's profiler samples every worker thread's stack each 10 ms and keeps
            # what it saw: over WeasyPrint's deep layout stacks that slowed the PDFs and
            # grew each worker by hundreds of MB. A local cluster's workers take the
            # config of the process that starts them.
            dask.config.set({"distributed.worker.profile.enabled": False})
        return DaskTaskRunner(
            cluster_kwargs={
                "n_workers": settings.dask_workers,
                "threads_per_worker": 1,
                "processes": True,
            }
        )
    return ThreadPoolTaskRunner(max_workers=max(settings.shards, 1))


def today() -> date:
    """The run's date in the business's time zone (BILLING_TIMEZONE): the scheduled start
    of a deployment's run (a late run still closes its own month), else today."""
    from prefect.runtime import flow_run

    zone = ZoneInfo(get_settings().timezone)
    scheduled = flow_run.scheduled_start_time if flow_run.get_id() else None
    if scheduled is not None:
        return datetime.fromisoformat(str(scheduled)).astimezone(zone).date()
    return datetime.now(zone).date()


def log_report(report: StepReport) -> dict:
    """Log a step's report through the run logger; return it for the flow."""
    logger = get_run_logger()
    logger.info(report.summary())
    for warning in report.warnings:
        logger.warning(warning)
    return report.as_dict()


def merged(reports: list[dict]) -> dict:
    """One report for a step that ran in shards."""
    total = StepReport.from_dict(reports[0])
    for other in reports[1:]:
        total = total.merge(StepReport.from_dict(other))
    total.details["shards"] = len(reports)
    return total.as_dict()


def publish_step_summaries(reports: list[dict], through: date) -> None:
    """A markdown summary per step: rows read and written, warnings."""
    for report in reports:
        lines = [
            f"### {report['step']} (through {through})",
            "",
            "| read | written | removed |",
            "|---:|---:|---:|",
            f"| {report['read']} | {report['written']} | {report['deleted']} |",
            "",
        ]
        details = {k: v for k, v in report["details"].items() if not isinstance(v, list | dict)}
        if details:
            lines += [f"- {k.replace('_', ' ')}: {v}" for k, v in sorted(details.items())]
        if report["warnings"]:
            lines += ["", "**Warnings**", ""] + [f"- {w}" for w in report["warnings"]]
        key = "step-" + report["step"].replace(" ", "-")
        create_markdown_artifact(
            key=key, markdown="\n".join(lines), description=f"{report['step']}: what the step did"
        )


def publish_invoices(rows: list, documents: dict[int, dict[str, str]], through: date) -> None:
    """The invoices the close left, as a table, and links to their documents."""
    from billing_core.money import money_str

    # By column: the UI shows a dict of lists as the same table, and the server stores
    # each column name once instead of once per invoice (a third of the bytes).
    table = {
        "invoice": [r.number or f"draft {r.id}" for r in rows],
        "billed customer": [r.billed_customer_id for r in rows],
        "billing date": [r.billing_date.isoformat() for r in rows],
        "status": [r.status for r in rows],
        "total": [money_str(r.total, r.currency) for r in rows],
        "currency": [r.currency for r in rows],
    }
    create_table_artifact(
        key="close-invoices",
        table=table if rows else {"invoice": ["none"]},
        description=f"Invoices billed through {through}",
    )
    links = [
        f"- **{r.number or 'draft ' + str(r.id)}** {r.billed_customer_id} "
        f"{r.billing_date}: "
        + ", ".join(
            f"[{fmt}](file://{path})" for fmt, path in sorted(documents.get(r.id, {}).items())
        )
        for r in rows
        if documents.get(r.id)
    ]
    create_markdown_artifact(
        key="close-documents",
        markdown="\n".join(links) or "No documents were written.",
        description=f"Invoice documents through {through}",
    )
