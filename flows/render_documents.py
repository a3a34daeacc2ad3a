"""Re-render invoice documents: the render step on its own, for an operator who fixed a
template. Draft previews are rewritten when they changed; issued documents are written once
and only missing ones are written."""

from __future__ import annotations

from datetime import date

from prefect import flow
from prefect.runtime import flow_run
from prefect.states import Failed, State

from billing_core.steps import close as steps
from billing_core.steps.documents import (
    DocumentsNotWritten,
    documents,
    documents_problem,
    summary_rows,
)
from billing_core.steps.failures import FamilyFailures
from flows.runtime import close_turn, log_report, outcome, publish_invoices, step, today
from flows.summaries import StepLog


@step("render-invoices")
def render(through: date, invoice_ids: list[int] | None) -> dict:
    return log_report(steps.render(through, invoice_ids=invoice_ids))


# Run again when a failed run is retried: documents it could not write may be writable now.
render = render.with_options(refresh_cache=True)


@flow(name="render-documents")
def render_documents(
    through: date | None = None, invoice_ids: list[int] | None = None
) -> dict | State:
    """Write the documents that are missing or out of date through `through`."""
    through = through or today()
    run = str(flow_run.get_id() or "")
    # Never beside a close: the same slot and lock.
    with close_turn(f"flow run {run} (documents)", run):
        state = render(through, invoice_ids, return_state=True)
        report = StepLog(through).done(outcome(state.result(raise_on_failure=False)), [state])
    publish_invoices(summary_rows(invoice_ids, through), documents(through=through), through)
    if report.get("failures"):
        raise FamilyFailures(report)
    problem = documents_problem([report])
    if problem:  # what could be written is recorded; the run ends failed
        return Failed(message=problem, data=DocumentsNotWritten(problem, report))
    return report
