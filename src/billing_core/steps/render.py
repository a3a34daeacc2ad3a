"""The render step: writes the invoice documents that are missing or out of date, and
records them.

Drafts get an HTML preview marked DRAFT, rendered again only when the invoice changes.
Issued invoices get their final documents once; nothing regenerates them.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from billing_core.config import get_settings
from billing_core.invoices.contexts import contexts
from billing_core.invoices.documents import (
    document_path,
    environment,
    render_html,
    render_pdfs,
    templates_dir,
)
from billing_core.invoices.lifecycle import unlink_after_commit
from billing_core.report import StepReport
from billing_core.store import files as outputs
from billing_core.store.models import Invoice, InvoiceDocument
from billing_core.store.reference import ALL, Scope
from billing_core.store.rows import chunks, insert_rows

# The statuses whose invoices get documents (a canceled draft gets none).
RENDERED = ("draft", "issued", "paid", "void")

# A document to write: the invoice, its format and its record (None when it has none).
Wanted = tuple[Any, str, Any]
# A document written: the invoice, its format, its record, its path and its SHA-256.
Written = tuple[Any, str, Any, Path, str]
# A document not written: the invoice, its format, its record and why.
Failure = tuple[Any, str, Any, OSError]


def source_hash(data: dict) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def render(
    session: Session,
    through: date | None = None,
    scope: Scope = ALL,
    invoice_ids: list[int] | None = None,
    store_name: str = "billing",
    now: datetime | None = None,
) -> StepReport:
    """Write the documents that are missing or out of date for the invoices in scope."""
    now = now or datetime.now(UTC)
    settings = get_settings()
    output_dir = Path(settings.output_dir)
    formats = [f for f in ("html", "pdf") if f in settings.formats] or ["html"]
    report = StepReport("render invoices")
    invoices = _invoices(session, through, scope, invoice_ids)
    report.read = len(invoices)
    if not invoices:
        return report
    wanted = _wanted(invoices, _documents(session, invoices), formats, report)
    # Every document the invoices in scope have: those not written now were up to date.
    report.details["documents_unchanged"] = sum(
        len(formats) if i.status != "draft" else 1 for i in invoices
    )
    if not wanted:
        return report
    needed = {invoice.id: invoice for invoice, _, _ in wanted}
    data = contexts(session, list(needed.values()), store_name)
    digests = {i: source_hash(d) for i, d in data.items()}
    written, failures = _write(wanted, data, digests, output_dir)
    _report_missing(session, report, failures)
    _record(session, report, written, digests, now)
    report.details["documents"] = report.written
    report.details["documents_unchanged"] -= report.written + len(failures)
    return report


def _invoices(
    session: Session, through: date | None, scope: Scope, invoice_ids: list[int] | None
) -> list[Any]:
    """The invoices in scope that get documents, by billing date and billed customer."""
    v = Invoice.__table__.c
    stmt = sa.select(Invoice.__table__).where(v.status.in_(RENDERED))
    if through is not None:
        stmt = stmt.where(v.billing_date <= through)
    if invoice_ids is not None:
        stmt = stmt.where(v.id.in_(invoice_ids))
    return list(
        session.execute(
            stmt.where(scope.where(v.family_id)).order_by(v.billing_date, v.billed_customer_id)
        )
    )


def _documents(session: Session, invoices: list[Any]) -> dict[tuple[int, str], Any]:
    """The document records of the invoices, by (invoice id, format)."""
    d = InvoiceDocument.__table__.c
    documents = {}
    for part in chunks([i.id for i in invoices]):
        documents.update(
            {
                (r.invoice_id, r.format): r
                for r in session.execute(
                    sa.select(InvoiceDocument.__table__).where(d.invoice_id.in_(part))
                )
            }
        )
    return documents


def _wanted(
    invoices: list[Any], documents: dict, formats: list[str], report: StepReport
) -> list[Wanted]:
    """Each invoice's documents that may need writing: a draft's HTML preview, an issued
    invoice's formats not yet written for good."""
    wanted = []
    for invoice in invoices:
        for fmt in formats if invoice.status != "draft" else ["html"]:
            doc = documents.get((invoice.id, fmt))
            if doc is not None and doc.final:
                # Issued documents are written once, never again: a missing file is
                # restored from a backup, not re-rendered from today's catalog.
                if not Path(doc.path).exists():
                    report.warnings.append(
                        f"invoice {invoice.number}: its {fmt} document {doc.path} is missing"
                    )
                continue
            wanted.append((invoice, fmt, doc))
    return wanted


def _write(
    wanted: list[Wanted], data: dict[int, dict], digests: dict[int, str], output_dir: Path
) -> tuple[list[Written], list[Failure]]:
    """Write the wanted documents whose file is missing or out of date: HTML as it comes,
    then the PDFs one after the other. Returns what was written and what was not."""
    env, folder = environment(), str(templates_dir())
    written: list[Written] = []
    pdfs: list[tuple[Any, Any, Path, str]] = []  # invoice, doc, path, html
    failures: list[Failure] = []
    ready = _folder_maker()
    # A document that cannot be written (a full or read-only disk) is reported and left
    # unrecorded, and the others are still written: the next render writes it.
    for invoice, fmt, doc in wanted:
        path = document_path(output_dir, invoice, fmt)
        if doc is not None and doc.source_hash == digests[invoice.id] and Path(doc.path).exists():
            continue
        refused = ready(path)
        if refused is not None:
            failures.append((invoice, fmt, doc, refused))
        elif fmt == "html":
            content = render_html(data[invoice.id], env).encode("utf-8")
            try:
                outputs.write_file(path, content, replace=doc is not None)
            except OSError as error:
                failures.append((invoice, fmt, doc, error))
            else:
                written.append((invoice, fmt, doc, path, hashlib.sha256(content).hexdigest()))
        else:
            pdfs.append((invoice, doc, path, render_html(data[invoice.id], env, inline_css=False)))
    written += _write_pdfs(pdfs, folder, failures)
    return written, failures


def _folder_maker() -> Callable[[Path], OSError | None]:
    """Makes a document's folder, each folder once (or refuses it once): the error, if any."""
    folders: dict[Path, OSError | None] = {}

    def ready(path: Path) -> OSError | None:
        if path.parent not in folders:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                folders[path.parent] = None
            except OSError as error:
                folders[path.parent] = error
        return folders[path.parent]

    return ready


def _write_pdfs(
    pdfs: list[tuple[Any, Any, Path, str]], folder: str, failures: list[Failure]
) -> list[Written]:
    """Write the PDFs (invoice, doc, path, html); the ones refused go to `failures`."""

    def pdf_failed(index: int, error: OSError) -> None:
        invoice, doc, _, _ = pdfs[index]
        failures.append((invoice, "pdf", doc, error))

    shas = render_pdfs([(html, path) for _, _, path, html in pdfs], folder, pdf_failed)
    return [
        (invoice, "pdf", doc, path, sha)
        for (invoice, doc, path, _), sha in zip(pdfs, shas, strict=True)
        if sha is not None
    ]


def _record(
    session: Session,
    report: StepReport,
    written: list[Written],
    digests: dict[int, str],
    now: datetime,
) -> None:
    """Record the documents written: new ones in one insert, replaced ones in one
    executemany; a preview now written under a new name has its old file removed after
    the commit."""
    inserts, updates, moved = [], [], []
    for invoice, fmt, doc, path, sha in written:
        row = {
            "invoice_id": invoice.id,
            "format": fmt,
            "path": str(path.resolve()),
            "sha256": sha,
            "source_hash": digests[invoice.id],
            "final": invoice.status != "draft",
            "created_at": now,
        }
        if doc is None:
            inserts.append(row)
        else:
            updates.append({"_id": doc.id, **row})
            if doc.path != row["path"]:
                moved.append(doc.path)  # a preview now written under a new name
        report.written += 1
    insert_rows(session, InvoiceDocument, inserts)
    if updates:
        d = InvoiceDocument.__table__.c
        session.execute(
            sa.update(InvoiceDocument.__table__).where(d.id == sa.bindparam("_id")), updates
        )
    unlink_after_commit(session, moved)


def _report_missing(session: Session, report: StepReport, failures: list[Failure]) -> None:
    """The documents that could not be written, in the step's report: each in
    `details["documents_missing"]` ({invoice, format, reason}), and a warning per invoice.

    Nothing is recorded for them. A draft's preview that was on record stays so while its
    last good file is still there (the file is replaced whole or not at all), and the
    next render, seeing it out of date, writes it again; a record whose file is gone too
    is dropped, so no document row ever points at a missing file.
    """
    if not failures:
        return
    by_invoice: dict[int, list[tuple[Any, str, OSError]]] = defaultdict(list)
    gone = []
    for invoice, fmt, doc, error in failures:
        by_invoice[invoice.id].append((invoice, fmt, error))
        if doc is not None and not doc.final and not Path(doc.path).exists():
            gone.append(doc.id)
    missing = report.details.setdefault("documents_missing", [])
    for entries in by_invoice.values():
        invoice = entries[0][0]
        label = invoice.number or invoice.id
        for _, fmt, error in entries:
            missing.append({"invoice": label, "format": fmt, "reason": outputs.os_reason(error)})
        formats = ", ".join(fmt for _, fmt, _ in entries)
        reason = outputs.os_reason(entries[0][2])
        them = "them" if len(entries) > 1 else "it"
        report.warnings.append(
            f"{invoice_label(invoice)}: {formats} not written ({reason}); "
            f"the next close writes {them}"
        )
    if gone:
        d = InvoiceDocument.__table__.c
        for part in chunks(gone):
            session.execute(sa.delete(InvoiceDocument.__table__).where(d.id.in_(part)))


def invoice_label(invoice: Any) -> str:
    """An invoice as messages name it: its number, or "draft ID"."""
    return f"invoice {invoice.number}" if invoice.number else f"draft {invoice.id}"
