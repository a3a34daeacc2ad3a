"""Invoice documents: HTML from the Jinja2 templates, PDF from that HTML (WeasyPrint).

Drafts get an HTML preview marked DRAFT, rendered again only when the invoice changes.
Issued invoices get their final documents once; nothing regenerates them.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import sqlalchemy as sa
from babel.dates import format_date
from babel.numbers import format_currency, format_decimal
from sqlmodel import Session

from .config import get_settings
from .invoices import lines_of
from .models import Charge, Customer, Invoice, InvoiceDocument, Metric
from .money import ZERO
from .reference import ALL, Scope
from .reference import issuer as load_issuer
from .report import StepReport

ONE_DAY = timedelta(days=1)
LOCALE = "en_US"


def templates_dir() -> Path:
    configured = get_settings().templates_dir
    if configured is not None:
        return Path(configured)
    return Path(str(resources.files("billing_templates")))


@lru_cache(maxsize=8)
def _environment(folder: str, mtime: float) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(folder),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
    )
    env.filters["money"] = money
    env.filters["day"] = day
    env.filters["quantity"] = quantity
    return env


def environment() -> jinja2.Environment:
    folder = templates_dir()
    stamp = max((p.stat().st_mtime for p in folder.glob("*.*")), default=0.0)
    return _environment(str(folder), stamp)


def money(amount: Decimal | None, currency: str) -> str:
    """An amount formatted for its currency (symbol, grouping, minor units)."""
    if amount is None:
        return ""
    return format_currency(amount, currency, locale=LOCALE, currency_digits=True)


def day(value: date | None) -> str:
    """A date nobody can misread: 1 Feb 2026."""
    return "" if value is None else format_date(value, "d MMM y", locale=LOCALE)


def quantity(value: Decimal | None) -> str:
    return "" if value is None else format_decimal(value, locale=LOCALE, decimal_quantization=False)


def period(start: date | None, end: date | None) -> str:
    """A half-open period shown with its inclusive last day."""
    if start is None or end is None:
        return ""
    return f"{day(start)} – {day(end - ONE_DAY)}"


def context(
    invoice: Any,
    lines: list[Any],
    charges: list[Any],
    names: dict[str, str],
    metric_names: dict[str, str],
    issuer: dict,
    billed: Any,
) -> dict:
    """Everything a template shows, already grouped the way finance reads it."""
    currency = invoice.currency
    order: list[str] = []
    by_customer: dict[str, list[Any]] = defaultdict(list)
    for line in lines:
        if line.serviced_customer_id not in by_customer:
            order.append(line.serviced_customer_id)
        by_customer[line.serviced_customer_id].append(line)
    order.sort(key=lambda c: (c != invoice.billed_customer_id, names.get(c, c), c))
    sections = []
    for customer_id in order:
        section_lines = by_customer[customer_id]
        taxes: dict[tuple, Decimal] = defaultdict(lambda: ZERO)
        rows, credits = [], []
        for line in section_lines:
            if line.kind == "tax":
                taxes[(line.jurisdiction, line.tax_rate)] += line.amount
            elif line.kind == "credit":
                credits.append({"label": line.description, "amount": line.amount})
            else:
                rows.append(
                    {
                        "product": line.product,
                        "bundle": line.bundle,
                        "kind": line.kind,
                        "description": line.description
                        if line.kind in ("adjustment", "minimum")
                        else None,
                        "period": period(line.period_start, line.period_end),
                        "quantity": line.quantity,
                        "unit_price": line.unit_price,
                        "amount": line.amount,
                    }
                )
        sections.append(
            {
                "customer_id": customer_id,
                "name": names.get(customer_id, customer_id),
                "is_billed": customer_id == invoice.billed_customer_id,
                "rows": rows,
                "taxes": [
                    {"label": f"Tax {j} {(r * 100).normalize():f}%", "amount": a}
                    for (j, r), a in sorted(taxes.items(), key=lambda kv: str(kv[0]))
                ],
                "credits": credits,
                "subtotal": sum((x.amount for x in section_lines), ZERO),
            }
        )
    usage: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for charge in charges:
        if charge.kind not in ("usage", "adjustment") or charge.metric_code is None:
            continue
        usage[charge.serviced_customer_id][charge.metric_code].append(
            {
                "period": period(charge.period_start, charge.period_end),
                "quantity": charge.quantity,
                "late": charge.kind == "adjustment",
                "product": charge.product,
            }
        )
    breakdown = [
        {
            "name": names.get(c, c),
            "customer_id": c,
            "metrics": [
                {"name": metric_names.get(m, m), "code": m, "rows": rows}
                for m, rows in sorted(
                    usage[c].items(), key=lambda kv: metric_names.get(kv[0], kv[0])
                )
            ],
        }
        for c in sorted(usage, key=lambda c: (c != invoice.billed_customer_id, names.get(c, c), c))
    ]
    return {
        "invoice": {
            "id": invoice.id,
            "number": invoice.number,
            "status": invoice.status,
            "draft": invoice.status == "draft",
            "billing_date": invoice.billing_date,
            "currency": currency,
            "subtotal": invoice.subtotal,
            "discount_total": invoice.discount_total,
            "tax_total": invoice.tax_total,
            "credit_total": invoice.credit_total,
            "total": invoice.total,
        },
        "issuer": issuer,
        "billed": {"id": billed.id, "name": billed.name},
        "sections": sections,
        "breakdown": breakdown,
        "currency": currency,
    }


def source_hash(data: dict) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def render_html(data: dict) -> str:
    return environment().get_template("invoice.html").render(**data)


def render_pdf(html: str, path: Path) -> None:
    import logging

    from weasyprint import HTML

    # Font subsetting falls back to fontTools without HarfBuzz-Subset and says so per PDF.
    logging.getLogger("weasyprint").setLevel(logging.ERROR)

    HTML(string=html, base_url=str(templates_dir())).write_pdf(path)


def document_path(output_dir: Path, invoice: Any, fmt: str) -> Path:
    name = invoice.number or f"draft-{invoice.id}"
    return (
        output_dir
        / invoice.billing_date.isoformat()
        / (f"{invoice.billed_customer_id}-{name}.{fmt}")
    )


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
    v = Invoice.__table__.c
    stmt = sa.select(Invoice.__table__).where(v.status.in_(("draft", "issued", "paid", "void")))
    if through is not None:
        stmt = stmt.where(v.billing_date <= through)
    if invoice_ids is not None:
        stmt = stmt.where(v.id.in_(invoice_ids))
    invoices = list(
        session.execute(
            stmt.where(scope.where(v.family_id)).order_by(v.billing_date, v.billed_customer_id)
        )
    )
    report.read = len(invoices)
    if not invoices:
        return report
    ids = [i.id for i in invoices]
    d = InvoiceDocument.__table__.c
    documents = {
        (r.invoice_id, r.format): r
        for r in session.execute(sa.select(InvoiceDocument.__table__).where(d.invoice_id.in_(ids)))
    }
    wanted = []
    for invoice in invoices:
        for fmt in formats if invoice.status != "draft" else ["html"]:
            doc = documents.get((invoice.id, fmt))
            if doc is not None and doc.final:
                continue  # issued documents are written once
            wanted.append((invoice, fmt, doc))
    if not wanted:
        return report
    needed = sorted({invoice.id for invoice, _, _ in wanted})
    lines = lines_of(session, needed)
    ch = Charge.__table__.c
    charges: dict[int, list[Any]] = defaultdict(list)
    for i in range(0, len(needed), 900):
        for charge in session.execute(
            sa.select(Charge.__table__)
            .where(ch.invoice_id.in_(needed[i : i + 900]))
            .order_by(ch.charge_key)
        ):
            charges[charge.invoice_id].append(charge)
    c = Customer.__table__.c
    customers = {r.id: r for r in session.execute(sa.select(c.id, c.name))}
    names = {k: r.name for k, r in customers.items()}
    metric_names = dict(
        session.execute(sa.select(Metric.__table__.c.code, Metric.__table__.c.name)).all()
    )
    issuer = load_issuer(session, store_name)
    html_cache: dict[int, tuple[str, str]] = {}
    for invoice, fmt, doc in wanted:
        if invoice.id not in html_cache:
            data = context(
                invoice,
                lines[invoice.id],
                charges[invoice.id],
                names,
                metric_names,
                issuer,
                customers[invoice.billed_customer_id],
            )
            html_cache[invoice.id] = (source_hash(data), render_html(data))
        digest, html = html_cache[invoice.id]
        path = document_path(output_dir, invoice, fmt)
        if doc is not None and doc.source_hash == digest and Path(doc.path).exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "html":
            path.write_text(html, encoding="utf-8")
        else:
            render_pdf(html, path)
        row = {
            "invoice_id": invoice.id,
            "format": fmt,
            "path": str(path.resolve()),
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "source_hash": digest,
            "final": invoice.status != "draft",
            "created_at": now,
        }
        if doc is None:
            session.execute(sa.insert(InvoiceDocument.__table__).values(**row))
        else:
            session.execute(
                sa.update(InvoiceDocument.__table__).where(d.id == doc.id).values(**row)
            )
        report.written += 1
    report.details["documents"] = report.written
    return report
