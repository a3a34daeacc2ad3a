"""The render step: writes the invoice documents that are missing or out of date, and
records them.

Drafts get an HTML preview marked DRAFT, rendered again only when the invoice or the
templates change (`source_hash`). Issued invoices get their final documents once. A final
document found missing is written again where its record says, only when rendering it
again gives the recorded bytes (`invoices.verification.identical`); otherwise it is
reported, to be restored from a backup. Final records never change.
"""

from __future__ import annotations

import hashlib
import json
import marshal
import time
from collections import defaultdict
from datetime import UTC, date, datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from billing_core.config import get_settings
from billing_core.invoices.contexts import contexts
from billing_core.invoices.documents import (
    document_key,
    environment,
    render_html,
    render_pdfs,
    templates_digest,
    templates_dir,
)
from billing_core.invoices.lifecycle import unlink_after_commit
from billing_core.invoices.verification import NotIdentical, identical
from billing_core.report import StepReport
from billing_core.store import files as outputs
from billing_core.store.document_store import DocumentStore, document_store
from billing_core.store.models import Invoice, InvoiceDocument
from billing_core.store.recorded_documents import write_recorded
from billing_core.store.reference import ALL, Scope
from billing_core.store.rows import chunks, insert_rows

# The statuses whose invoices get documents (a canceled draft gets none).
RENDERED = ("draft", "issued", "paid", "void")

# A document to write: the invoice, its format and its record (None when it has none).
Wanted = tuple[Any, str, Any]
# A document written: the invoice, its format, its record, where it went (a file's Path,
# an object's URL) and its SHA-256.
Written = tuple[Any, str, Any, Any, str]
# A document not written: the invoice, its format, its record and why.
Failure = tuple[Any, str, Any, OSError]


def source_hash(data: dict, templates: str) -> str:
    """What a document is made from: its context and the templates' digest
    (`documents.templates_digest`). The locale is in the context (its `lang`, and every
    amount and date written for it). A draft's preview is rendered again when this
    changes: when the invoice changes, and when the templates do.

    The context is written in its own key order, which `invoices.contexts` makes the same
    for the same invoice (an identity keeps the order it is stored or built in); a
    context whose keys came in another order would only have its preview rendered again.
    It is written by `marshal` (format 2: no references between objects, so the bytes
    are the values' alone, whatever objects a batch's contexts share), with the sections'
    unformatted sums as text: 0.038 ms of CPU a preview with the SHA-256, where JSON took
    0.056 (it escapes every string and key; the bytes hashed are as many, some 5 KB). A
    context holding a value marshal does not take is written as JSON instead, without
    sorting keys or checking for cycles (a context is a tree). Another Python may write
    other bytes: its first close renders the previews again."""
    digest = hashlib.sha256(templates.encode())
    digest.update(_context_bytes(data))
    return digest.hexdigest()


_CONTEXT_JSON = json.JSONEncoder(check_circular=False, default=str)


def _context_bytes(data: dict) -> bytes:
    plain = data
    if "sections" in data:
        plain = {
            **data,
            "sections": [
                {**s, "sums": {k: str(v) for k, v in s["sums"].items()}} if "sums" in s else s
                for s in data["sections"]
            ],
        }
    try:
        return marshal.dumps(plain, 2)
    except ValueError:  # a value marshal does not write
        return _CONTEXT_JSON.encode(data).encode()


def render(
    session: Session,
    through: date | None = None,
    scope: Scope = ALL,
    invoice_ids: list[int] | None = None,
    store_name: str = "billing",
    now: datetime | None = None,
) -> StepReport:
    """Write the documents that are missing or out of date for the invoices in scope.

    The report's `details["cpu_seconds"]` is the CPU time of the thread that rendered
    (summed over shards: what the documents cost, whatever else the machine ran)."""
    cpu = time.thread_time()
    report = _render(session, through, scope, invoice_ids, store_name, now)
    report.details["cpu_seconds"] = round(time.thread_time() - cpu, 3)
    return report


def _render(
    session: Session,
    through: date | None,
    scope: Scope,
    invoice_ids: list[int] | None,
    store_name: str,
    now: datetime | None,
) -> StepReport:
    now = now or datetime.now(UTC)
    settings = get_settings()
    store = document_store(settings)
    formats = [f for f in ("html", "pdf") if f in settings.formats] or ["html"]
    report = StepReport("render invoices")
    invoices = _invoices(session, through, scope, invoice_ids)
    report.read = len(invoices)
    if not invoices:
        return report
    wanted, lost = _wanted(invoices, _documents(session, invoices), formats, store)
    # Every document the invoices in scope have: those not written now were up to date.
    report.details["documents_unchanged"] = sum(
        len(formats) if i.status != "draft" else 1 for i in invoices
    )
    if not wanted and not lost:
        return report
    needed = {invoice.id: invoice for invoice, _, _ in [*wanted, *lost]}
    data = contexts(session, list(needed.values()), store_name)
    templates = templates_digest()
    digests = {i: source_hash(d, templates) for i, d in data.items()}
    written, failures = _write(wanted, data, digests, store) if wanted else ([], [])
    failures += _write_again(lost, data, report)
    _report_missing(session, report, failures, store)
    _record(session, report, written, digests, now, store)
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
    invoices: list[Any], documents: dict, formats: list[str], store: DocumentStore
) -> tuple[list[Wanted], list[Wanted]]:
    """Each invoice's documents that may need writing: a draft's HTML preview, an issued
    invoice's formats not yet written for good; and apart, the final documents on record
    whose file is gone."""
    wanted, lost = [], []
    for invoice in invoices:
        for fmt in formats if invoice.status != "draft" else ["html"]:
            doc = documents.get((invoice.id, fmt))
            if doc is not None and doc.final:
                if not store.exists(doc.path):
                    lost.append((invoice, fmt, doc))
                continue
            wanted.append((invoice, fmt, doc))
    return wanted, lost


def _write_again(lost: list[Wanted], data: dict[int, dict], report: StepReport) -> list[Failure]:
    """Write the lost final documents again where their records say, each only when
    rendered again it is the recorded bytes (from the invoice's frozen context, never
    today's catalog); reported either way. Returns the ones the disk or the object store
    refused: reported missing, and the next close tries again."""
    env, folder = environment(), str(templates_dir())
    failures: list[Failure] = []
    for invoice, fmt, doc in lost:
        said = f"invoice {invoice.number}: its {fmt} document {doc.path}"
        try:
            write_recorded(doc.path, identical(data[invoice.id], fmt, doc.sha256, env, folder))
        except NotIdentical as refused:
            report.warnings.append(f"{said} is missing; not written: {refused}")
        except OSError as error:
            failures.append((invoice, fmt, doc, error))
        else:
            report.written += 1
            report.details.setdefault("documents_written_again", []).append(
                {"invoice": invoice.number, "format": fmt, "path": doc.path}
            )
            report.warnings.append(
                f"{said} was missing; written again, identical to the one issued"
            )
    return failures


def _write(
    wanted: list[Wanted], data: dict[int, dict], digests: dict[int, str], store: DocumentStore
) -> tuple[list[Written], list[Failure]]:
    """Write the wanted documents whose file is missing or out of date: HTML as it comes,
    then the PDFs one after the other. Returns what was written and what was not."""
    env, folder = environment(), str(templates_dir())
    written: list[Written] = []
    pdfs: list[tuple[Any, Any, Any, str]] = []  # invoice, doc, target, html
    failures: list[Failure] = []
    # A document that cannot be written (a full or read-only disk, an object store that
    # refuses it) is reported and left unrecorded, and the others are still written: the
    # next render writes it.
    with store.writer() as writer:
        for invoice, fmt, doc in wanted:
            target = store.target(document_key(invoice, fmt))
            if (
                doc is not None
                and doc.source_hash == digests[invoice.id]
                and store.current(doc.path, target)
            ):
                continue
            refused = store.prepare(target)
            if refused is not None:
                failures.append((invoice, fmt, doc, refused))
            elif fmt == "html":
                content = render_html(data[invoice.id], env).encode("utf-8")
                try:
                    writer.put(target, content, replace=doc is not None)
                except OSError as error:
                    failures.append((invoice, fmt, doc, error))
                else:
                    sha = hashlib.sha256(content).hexdigest()
                    written.append((invoice, fmt, doc, target, sha))
            else:
                html = render_html(data[invoice.id], env, inline_css=False)
                pdfs.append((invoice, doc, target, html))
        written += _write_pdfs(pdfs, folder, failures, writer.put)
        # Uploads still under way: the ones refused are failures, not documents written.
        late = writer.finish()
    if late:
        failures += [(i, f, d, late[t]) for i, f, d, t, _ in written if t in late]
        written = [w for w in written if w[3] not in late]
    return written, failures


def _write_pdfs(
    pdfs: list[tuple[Any, Any, Any, str]], folder: str, failures: list[Failure], write: Any
) -> list[Written]:
    """Write the PDFs (invoice, doc, target, html); the ones refused go to `failures`."""

    def pdf_failed(index: int, error: OSError) -> None:
        invoice, doc, _, _ = pdfs[index]
        failures.append((invoice, "pdf", doc, error))

    shas = render_pdfs([(html, target) for _, _, target, html in pdfs], folder, pdf_failed, write)
    return [
        (invoice, "pdf", doc, target, sha)
        for (invoice, doc, target, _), sha in zip(pdfs, shas, strict=True)
        if sha is not None
    ]


def _record(
    session: Session,
    report: StepReport,
    written: list[Written],
    digests: dict[int, str],
    now: datetime,
    store: DocumentStore,
) -> None:
    """Record the documents written: new ones in one insert, replaced ones in one
    executemany; a preview now written under a new name has its old file removed after
    the commit."""
    inserts, updates, moved = [], [], []
    for invoice, fmt, doc, target, sha in written:
        row = {
            "invoice_id": invoice.id,
            "format": fmt,
            "path": store.record(target),
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


def _report_missing(
    session: Session, report: StepReport, failures: list[Failure], store: DocumentStore
) -> None:
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
        if doc is not None and not doc.final and not store.exists(doc.path):
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
