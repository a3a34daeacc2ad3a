"""Re-render invoice documents: the render step on its own, for an operator who fixed a
template. Draft previews are rewritten when they changed; issued documents are written once
and only missing ones are written."""

from __future__ import annotations

from datetime import date

from prefect import flow

from billing_core import close as steps
from flows.runtime import log_report, publish_invoices, step, today


@step("render-invoices")
def render(through: date, invoice_ids: list[int] | None) -> dict:
    return log_report(steps.render(through, invoice_ids=invoice_ids))


@flow(name="render-documents")
def render_documents(through: date | None = None, invoice_ids: list[int] | None = None) -> dict:
    """Write the documents that are missing or out of date through `through`."""
    through = through or today()
    report = render(through, invoice_ids)
    publish_invoices(
        steps.summary_rows(invoice_ids, through), steps.documents(through=through), through
    )
    return report
