"""What the flows share: the task runner chosen by configuration, step options, and the
artifacts an operator reads in the Prefect UI."""

from __future__ import annotations

import functools
import os
from contextlib import contextmanager
from datetime import date, datetime
from zoneinfo import ZoneInfo

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import INPUTS, RUN_ID, TASK_SOURCE
from prefect.exceptions import ObjectNotFound
from prefect.task_runners import ThreadPoolTaskRunner

from billing_core.config import get_settings
from billing_core.report import StepReport
from flows.heartbeats import prompt_heartbeats

# Every flow run of this process ends without waiting on its heartbeat thread.
prompt_heartbeats()

# Completed steps are cached per flow run: a retried run (same flow-run id, as the UI's
# Retry makes) skips them and resumes at the step that failed. The store stays the source
# of truth, so running a step again is harmless anyway.
STEP_CACHE = INPUTS + TASK_SOURCE + RUN_ID


def _worth_retrying(task, task_run, state) -> bool:
    """A step is retried after a hiccup, not after it lost the close lock or finished
    every family but some (their data needs a fix, then a Retry of the flow run)."""
    from billing_core.steps.failures import FamilyFailures
    from billing_core.store.locks import CloseLocked, LockLost

    return not isinstance(state.data, FamilyFailures | LockLost | CloseLocked)


def step(name: str):
    """A close step: retried on failure, its result persisted for flow-run retries. It
    runs fenced by the close lock its flow run holds (found in the store when the task
    runs in another process), and a step that failed for some families raises
    `FamilyFailures` after finishing the others, so that it is not cached as done."""
    settings = get_settings()

    def decorate(fn):
        @functools.wraps(fn)
        def fenced_step(*args, **kwargs):
            from prefect.runtime import flow_run

            from billing_core.steps.failures import FamilyFailures

            report = _one_line_failures(name, fn, flow_run.get_id(), args, kwargs)
            # The flow-run attempt that computed it: a Retry that finds it cached says so.
            report["details"]["attempt"] = attempt()
            if report.get("failures"):
                raise FamilyFailures(report)
            return report

        return task(
            name=name,
            retries=settings.task_retries,
            retry_delay_seconds=settings.task_retry_delay,
            retry_condition_fn=_worth_retrying,
            persist_result=True,
            cache_policy=STEP_CACHE,
        )(fenced_step)

    return decorate


def _one_line_failures(name: str, fn, run: str | None, args: tuple, kwargs: dict) -> dict:
    """Run a step fenced by its close's lock. A database error (whose text is the whole
    statement and its parameters) or an error of several lines fails the task as
    `StepFailed`: one line naming the step and the reason, for the task's and the flow
    run's state; the statement, its parameters and the whole text go to the debug log."""
    from billing_core.steps.failures import statement_of, step_failed
    from billing_core.store.locks import join_close

    try:
        with join_close(run):
            return fn(*args, **kwargs)
    except Exception as error:
        failed = step_failed(name, error)
        if failed is None:
            raise
        logger = get_run_logger()
        logger.debug(f"{name}: {statement_of(error) or error}", exc_info=error)
        raise failed from error


def attempt() -> int:
    """This flow run's attempt (1, then 2 after a Retry…); 0 outside a flow run."""
    from prefect.runtime import flow_run

    try:
        return int(flow_run.get_run_count() or 0)
    except Exception:  # noqa: BLE001 - the API unreachable: the attempt is not known
        return 0


def ended_by(error: BaseException) -> str:
    """How a close that raised `error` ended: "stopped" by a signal (SIGTERM, a
    cancellation, Ctrl-C), else "failed"."""
    from prefect.exceptions import ExternalSignal

    return "stopped" if isinstance(error, ExternalSignal | KeyboardInterrupt) else "failed"


def outcome(value) -> dict:
    """A step's report from its result: a report, or the report a step that failed some
    families carried; any other failure is raised."""
    from billing_core.steps.failures import FamilyFailures

    if isinstance(value, FamilyFailures):
        return value.report
    if isinstance(value, BaseException):
        raise value
    return value


def close_slot_name(url: str) -> str:
    """The Prefect global concurrency limit that queues closes of one store, whichever
    deployment or command started them."""
    import hashlib

    from billing_core.store.engine import store_name

    digest = hashlib.sha256(url.encode()).hexdigest()[:10]
    return f"billing-close-{store_name(url)}-{digest}"


@contextmanager
def close_slot():
    """Wait for the store's slot in Prefect's global concurrency limit (limit 1, created
    on first use): a second close, from any deployment or the CLI on the same Prefect
    server, queues here instead of being refused by the store lock. The store lock stays
    the guarantee; the slot is the queue."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.concurrency.sync import concurrency

    name = close_slot_name(get_settings().database_url)
    try:
        with get_client(sync_client=True) as client:
            try:
                client.read_global_concurrency_limit_by_name(name)
            except ObjectNotFound:  # created once; an operator's later change is kept
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=name, limit=1)
                )
    except Exception as error:  # noqa: BLE001 - the store lock still guards the close
        get_run_logger().warning(
            f"no Prefect concurrency limit for the close ({error}); the store lock alone "
            "keeps closes apart"
        )
        yield
        return
    with concurrency(
        name, occupy=1, strict=True, lease_duration=60, raise_on_lease_renewal_failure=False
    ):
        yield


@contextmanager
def close_turn(holder: str, run: str | None = None):
    """A close's turn at the store: its slot in the queue, then the store's close lock
    (fenced for the flow run `run`'s tasks)."""
    from billing_core.store.locks import close_lock

    with close_slot(), close_lock(holder, get_settings().close_lock_timeout, run=run or None):
        yield


class StoppableThreadPoolTaskRunner(ThreadPoolTaskRunner):
    """Prefect's thread pool, except that a stopped close does not wait for its threads.

    When a flow ends, Prefect's runner waits for every thread of its pool; a thread that
    waits out a step's retry delay sleeps, and nothing interrupts the sleep, so a SIGTERM
    (or a cancellation, or Ctrl-C) would be held for up to BILLING_TASK_RETRY_DELAY. When
    the flow is stopped, this runner cancels what has not started and leaves at once: the
    flow has already given the close lock back, and a step that wakes up is cancelled
    before it runs (Prefect checks) and could not commit anyway (its fence is gone)."""

    def __exit__(self, exc_type, exc_value, traceback) -> None:
        if exc_type is not None and not issubclass(exc_type, Exception):
            for event in self._cancel_events.values():
                event.set()
            if self._executor is not None:
                self._executor.shutdown(wait=False, cancel_futures=True)
                self._executor = None
        super().__exit__(exc_type, exc_value, traceback)


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
    return StoppableThreadPoolTaskRunner(max_workers=max(settings.shards, 1))


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
    for family, reason in sorted(report.failures.items()):
        logger.error(f"{report.step}: family {family} failed and was left as it was: {reason}")
    return report.as_dict()


_MARKDOWN = str.maketrans({c: "\\" + c for c in "\\`*_{}[]()<>#+!|~"})


def md(text: object) -> str:
    """Text from the store (ids, names, reasons) as literal markdown: no link, no markup,
    no table cell break, one line."""
    return " ".join(str(text).split()).translate(_MARKDOWN)


def publish_failures(failures: dict[str, dict[str, str]], through: date) -> None:
    """The families the close could not finish, with the step and the reason."""
    lines = [
        f"### Families that failed (through {through})",
        "",
        "The close finished every other family. Fix the cause, then Retry this flow run.",
        "",
        "| family | step | reason |",
        "|---|---|---|",
    ]
    for family, failure in sorted(failures.items()):
        lines.append(f"| {md(family)} | {md(failure['step'])} | {md(failure['reason'])} |")
    create_markdown_artifact(
        key="close-failures",
        markdown="\n".join(lines),
        description=f"Families the close through {through} could not finish",
    )


def brief(report: dict) -> dict:
    """A step's report as a flow's result carries it: every list among its details (the
    numbers and ids issued, the documents missing) replaced by its length; the counts,
    money, warnings and failures as they are. The whole report is on the close's record
    (`close_runs.steps`) and in the step's artifact."""
    details = {k: len(v) if isinstance(v, list) else v for k, v in report["details"].items()}
    return {**report, "details": details}


def merged(reports: list[dict]) -> dict:
    """One report for a step that ran in shards."""
    total = StepReport.from_dict(reports[0])
    for other in reports[1:]:
        total = total.merge(StepReport.from_dict(other))
    total.details["shards"] = len(reports)
    return total.as_dict()


def publish_invoices(rows: list, documents: dict[int, dict[str, str]], through: date) -> None:
    """The invoices the close left, as a table, and links to their documents."""
    from billing_core.domain.money import money_str
    from billing_core.store.recorded_documents import document_linker

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
    link = document_linker()  # presigned URLs, the served folder's URLs, or file://
    links = [
        f"- **{md(r.number or 'draft ' + str(r.id))}** {md(r.billed_customer_id)} "
        f"{r.billing_date}: "
        + ", ".join(
            f"[{fmt}]({link(path)})" for fmt, path in sorted(documents.get(r.id, {}).items())
        )
        for r in rows
        if documents.get(r.id)
    ]
    create_markdown_artifact(
        key="close-documents",
        markdown="\n".join(links) or "No documents were written.",
        description=f"Invoice documents through {through}",
    )
