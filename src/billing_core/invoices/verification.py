"""Issued documents checked against the SHA-256 recorded when they were written, and a
missing or altered one written again, byte for byte (`billing invoices verify
[--repair]`; the render step writes a missing one again too).

An issued invoice's document can be rendered again to the same bytes: its context is
frozen with the invoice (lines, charges, the identity snapshot), and the same context
renders to the same bytes (`invoices.documents`). A document is therefore written again
only when rendering it again gives exactly the recorded hash (`identical`); when it does
not (the templates, fonts or WeasyPrint changed since it was written, or it was written
before documents were reproducible), nothing is written: it is restored from a backup.
The records themselves are frozen with the invoice and never change.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import jinja2
import sqlalchemy as sa
from sqlmodel import Session

from billing_core.invoices.contexts import contexts
from billing_core.invoices.documents import document_bytes, environment, templates_dir
from billing_core.invoices.lifecycle import InvoiceError
from billing_core.store import recorded_documents
from billing_core.store.files import os_reason
from billing_core.store.models import Invoice, InvoiceDocument

# The statuses of an issued invoice: its documents are final.
ISSUED = ("issued", "paid", "void")


class NotIdentical(Exception):
    """A document that, rendered again, would not be the one on record."""

    def __init__(self, found: str, recorded: str):
        super().__init__(found, recorded)
        self.found, self.recorded = found, recorded

    def __str__(self) -> str:
        return (
            f"rendered again it would be sha256 {self.found}, recorded {self.recorded} (the "
            "templates, fonts or WeasyPrint changed since it was written); restore it from "
            "a backup"
        )


def identical(
    data: dict,
    fmt: str,
    recorded: str,
    env: jinja2.Environment | None = None,
    folder: str | None = None,
) -> bytes:
    """An issued document rendered again from its (frozen) context: its bytes when their
    SHA-256 is the recorded one, else NotIdentical."""
    content = document_bytes(data, fmt, env, folder)
    found = hashlib.sha256(content).hexdigest()
    if found != recorded:
        raise NotIdentical(found, recorded)
    return content


@dataclass(frozen=True)
class Finding:
    """A recorded document that is not as recorded: missing, altered (`found`: the
    SHA-256 of what is there, `content`: its bytes) or not readable (`error`)."""

    invoice: Any
    format: str
    path: str
    recorded: str
    found: str | None = None
    content: bytes | None = None
    error: OSError | None = None

    @property
    def missing(self) -> bool:
        return self.found is None and self.error is None

    @property
    def altered(self) -> bool:
        return self.found is not None

    def line(self) -> str:
        """`INV-2026-000001 pdf /srv/documents/2026-02-01/acme-INV-2026-000001.pdf: missing`"""
        if self.error is not None:
            state = f"not read ({os_reason(self.error)})"
        elif self.found is None:
            state = "missing"
        else:
            state = f"altered: sha256 {self.found}, recorded {self.recorded}"
        return f"{self.invoice.number} {self.format} {self.path}: {state}"


@dataclass(frozen=True)
class Checked:
    """What `check` looked at, and what it found."""

    invoices: int
    documents: int
    findings: list[Finding]

    def summary(self) -> str:
        said = f"{self.documents} document(s) of {self.invoices} issued invoice(s) checked: "
        if not self.findings:
            return said + "all as recorded"
        missing = sum(f.missing for f in self.findings)
        altered = sum(f.altered for f in self.findings)
        unread = len(self.findings) - missing - altered
        return (
            said
            + f"{missing} missing, {altered} altered"
            + (f", {unread} not read" if unread else "")
        )


def check(session: Session, invoice_ids: list[int] | None = None) -> Checked:
    """Read every final document of the issued invoices (or of these) where its record
    says it is, and compare its SHA-256 with the recorded one. Findings come in order of
    billing date, billed customer and format."""
    v, d = Invoice.__table__.c, InvoiceDocument.__table__.c
    issued = sa.select(Invoice.__table__).where(v.status.in_(ISSUED))
    if invoice_ids is not None:
        _only_issued(session, invoice_ids)
        issued = issued.where(v.id.in_(invoice_ids))
    invoices = {row.id: row for row in session.execute(issued)}
    documents = list(
        session.execute(
            sa.select(d.invoice_id, d.format, d.path, d.sha256)
            .join(Invoice.__table__, v.id == d.invoice_id)
            .where(d.final, v.status.in_(ISSUED))
            .where(v.id.in_(invoice_ids) if invoice_ids is not None else sa.true())
            .order_by(v.billing_date, v.billed_customer_id, v.id, d.format)
        )
    )
    findings = []
    read = recorded_documents.read_recorded([doc.path for doc in documents])
    for doc, content in zip(documents, read, strict=True):
        found = Finding(invoices[doc.invoice_id], doc.format, doc.path, doc.sha256)
        if isinstance(content, OSError):
            findings.append(replace(found, error=content))
        elif content is None:
            findings.append(found)
        else:
            sha = hashlib.sha256(content).hexdigest()
            if sha != doc.sha256:
                findings.append(replace(found, found=sha, content=content))
    return Checked(len(invoices), len(documents), findings)


def _only_issued(session: Session, invoice_ids: list[int]) -> None:
    v = Invoice.__table__.c
    rows = session.execute(
        sa.select(v.id, v.status).where(v.id.in_(invoice_ids), v.status.not_in(ISSUED))
    ).all()
    if rows:
        named = ", ".join(f"{r.id} ({r.status})" for r in rows)
        raise InvoiceError(f"only issued invoices have final documents to verify: {named}")


@dataclass(frozen=True)
class Outcome:
    written: bool
    text: str


def repair(
    session: Session,
    findings: list[Finding],
    store_name: str = "billing",
    now: datetime | None = None,
) -> list[Outcome]:
    """Write each missing or altered document again where its record says, when rendered
    again it is the recorded bytes (else nothing is written). An altered one is first
    kept beside it as `<name>.altered-<UTC time>` (the evidence); one that could not be
    read is left as it is. One outcome per finding, in order."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    invoices = {f.invoice.id: f.invoice for f in findings if f.error is None}
    data = contexts(session, list(invoices.values()), store_name)
    env, folder = environment(), str(templates_dir())
    outcomes = []
    for finding in findings:
        if finding.error is not None:
            outcomes.append(Outcome(False, "left as it is"))
            continue
        try:
            content = identical(
                data[finding.invoice.id], finding.format, finding.recorded, env, folder
            )
        except NotIdentical as refused:
            outcomes.append(Outcome(False, f"not written: {refused}"))
            continue
        try:
            kept = None
            if finding.content is not None:
                kept = recorded_documents.set_aside(
                    finding.path, f".altered-{stamp}", finding.content
                )
            recorded_documents.write_recorded(finding.path, content)
        except OSError as error:
            outcomes.append(Outcome(False, f"not written ({os_reason(error)})"))
            continue
        if kept is not None:
            outcomes.append(Outcome(True, f"replaced, the altered file kept as {kept}"))
        else:
            outcomes.append(
                Outcome(True, f"written again (sha256 {finding.recorded}, as recorded)")
            )
    return outcomes
