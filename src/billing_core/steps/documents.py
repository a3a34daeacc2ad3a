"""The invoices and documents a close leaves, for the operator: the summary table, the
document paths, and one line on documents that could not be written.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date
from typing import Any

import sqlalchemy as sa

from billing_core.report import StepReport
from billing_core.store.engine import unit_of_work
from billing_core.store.models import Invoice, InvoiceDocument


class DocumentsNotWritten(RuntimeError):
    """A close whose database work is done and recorded, but some of whose documents could
    not be written (a full or read-only disk): the operator must act. `result` is what the
    close returned otherwise."""

    def __init__(self, message: str, result: dict | None = None):
        super().__init__(message)
        self.result = result


def summary_rows(invoice_ids: list[int] | None = None, through: date | None = None) -> list[Any]:
    """Invoices with their documents, for the operator's table."""
    with unit_of_work() as session:
        v = Invoice.__table__.c
        stmt = sa.select(
            v.id, v.number, v.status, v.billed_customer_id, v.billing_date, v.total, v.currency
        ).order_by(v.billing_date, v.billed_customer_id)
        if invoice_ids is not None:
            stmt = stmt.where(v.id.in_(invoice_ids))
        if through is not None:
            stmt = stmt.where(v.billing_date <= through)
        return session.execute(stmt).all()


def documents(through: date | None = None) -> dict[int, dict[str, str]]:
    """invoice id -> format -> path of its current documents."""
    with unit_of_work() as session:
        d = InvoiceDocument.__table__.c
        v = Invoice.__table__.c
        stmt = sa.select(d.invoice_id, d.format, d.path).join(
            Invoice.__table__, v.id == d.invoice_id
        )
        if through is not None:
            stmt = stmt.where(v.billing_date <= through)
        out: dict[int, dict[str, str]] = {}
        for invoice_id, fmt, path in session.execute(stmt):
            out.setdefault(invoice_id, {})[fmt] = path
        return out


# How many invoices a one-line message names before it counts the rest.
NAMED = 10


def _named(items: list[str]) -> str:
    shown = ", ".join(items[:NAMED])
    return shown + (f" and {len(items) - NAMED} more" if len(items) > NAMED else "")


def documents_missing(reports: Iterable[StepReport | dict]) -> list[dict]:
    """The documents the render step(s) among `reports` could not write."""
    found = []
    for report in reports:
        data = report if isinstance(report, dict) else report.as_dict()
        if data["step"] == "render invoices":
            found += data["details"].get("documents_missing", [])
    return found


def documents_problem(reports: Iterable[StepReport | dict]) -> str | None:
    """One line for an operator when a close could not write some documents: what it
    issued, which documents are missing (invoice and format), why (each reason once) and
    what to do; None when every document was written."""
    reports = list(reports)
    missing = documents_missing(reports)
    if not missing:
        return None
    issued = []
    for report in reports:
        data = report if isinstance(report, dict) else report.as_dict()
        if data["step"] == "issue invoices":
            issued += data["details"].get("issued", [])
    return missing_documents_message(missing, issued)


def missing_documents_message(missing: list[dict], issued: list[str]) -> str:
    from billing_core.config import get_settings

    formats: dict[str, list[str]] = {}
    reasons: dict[str, str] = {}  # the first full reason of each kind ("Permission denied")
    for entry in missing:
        invoice = entry["invoice"]
        label = invoice if isinstance(invoice, str) else f"draft {invoice}"
        formats.setdefault(label, []).append(entry["format"])
        reasons.setdefault(entry["reason"].split(": ", 1)[0], entry["reason"])
    items = [f"{label} ({', '.join(fmts)})" for label, fmts in formats.items()]
    line = (
        f"documents not written: {len(missing)} document(s) of {len(items)} invoice(s) are "
        f"missing: {_named(items)} ({'; '.join(reasons.values())})"
    )
    if issued:
        line += f"; the close issued {len(issued)} invoice(s): {_named(issued)}"
    return (
        line + "; the next close writes them once the output folder "
        f"{get_settings().output_dir} can be written"
    )
