"""Who an invoice is from and to, as its documents show them (SPEC §7.1).

An issued invoice keeps a snapshot taken when it was issued (`invoices.identity`, frozen
with the rest of the invoice by the store's triggers): the issuer's catalog entry, the
billed customer's name and the fields a finance team sends with it, the names of the
serviced customers and metrics on the invoice, and the tax rates of its jurisdictions.
Every document rendered for it later reads the snapshot, never the catalog as it is now.
A draft has no snapshot: its documents are rendered from the same shape built from the
live catalog.

Besides who, the snapshot keeps two things a document prints that the invoice's lines do
not hold: `credits`, each grant the invoice used with its name and the balance left after
the invoice (`invoices.ledger.balances_after`), so a copy rendered after later invoices
drew on the grant shows the balance as it was; and `taxed_at`, the jurisdiction each
serviced customer's lines are taxed at, so a rate of 0 (a reverse charge), which makes no
tax line, still shows with its note.

The snapshot is JSON so that fields the catalog gains later (the issuer's tax id, email,
payment instructions, time zone, locale and terms; the customer's address, tax id, email,
locale and terms) are kept without another migration: the issuer's whole catalog row is
copied, and of the billed customer every column named in BILLED_FIELDS that the table
has.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from billing_core.domain.money import money_str
from billing_core.domain.tax import jurisdiction_for
from billing_core.invoices.ledger import balances_after
from billing_core.store.models import (
    Charge,
    CreditGrant,
    Customer,
    InvoiceCharge,
    InvoiceLine,
    Metric,
    TaxRate,
)
from billing_core.store.reference import issuer as load_issuer
from billing_core.store.rows import chunks, select_in

# What of the billed customer an invoice shows or is sent with (those the table has).
BILLED_FIELDS = ("name", "address", "tax_id", "email", "locale", "payment_terms_days")


@dataclass
class Mentions:
    """What an invoice names: serviced customers, metrics, tax jurisdictions, grants."""

    customers: set[str] = field(default_factory=set)
    metrics: set[str] = field(default_factory=set)
    jurisdictions: set[str] = field(default_factory=set)
    grants: set[str] = field(default_factory=set)

    def line(self, customer: str, jurisdiction: str | None, grant: str | None = None) -> None:
        self.customers.add(customer)
        if jurisdiction:
            self.jurisdictions.add(jurisdiction)
        if grant:
            self.grants.add(grant)

    def charge(self, customer: str, metric: str | None) -> None:
        self.customers.add(customer)
        if metric:
            self.metrics.add(metric)


NOTHING = Mentions()


def mentions_of(lines: Iterable[Any], charges: Iterable[Any]) -> Mentions:
    """What one invoice's lines and charges name (rows already read)."""
    found = Mentions()
    for line in lines:
        found.line(line.serviced_customer_id, line.jurisdiction, line.grant_id)
    for charge in charges:
        found.charge(charge.serviced_customer_id, charge.metric_code)
    return found


def mentions(session: Session, invoice_ids: list[int]) -> dict[int, Mentions]:
    """What each invoice names, read set-based from its lines and charges."""
    out: dict[int, Mentions] = defaultdict(Mentions)
    ln = InvoiceLine.__table__.c
    ch, link = Charge.__table__.c, InvoiceCharge.__table__.c
    lines = sa.select(
        ln.invoice_id, ln.serviced_customer_id, ln.jurisdiction, ln.grant_id
    ).distinct()
    charges = (
        sa.select(link.invoice_id, ch.serviced_customer_id, ch.metric_code)
        .distinct()
        .join_from(InvoiceCharge.__table__, Charge.__table__, ch.id == link.charge_id)
    )
    for part in chunks(sorted(invoice_ids)):
        for invoice_id, customer, jurisdiction, grant in session.execute(
            lines.where(ln.invoice_id.in_(part))
        ).all():
            out[invoice_id].line(customer, jurisdiction, grant)
        for invoice_id, customer, metric in session.execute(
            charges.where(link.invoice_id.in_(part))
        ).all():
            out[invoice_id].charge(customer, metric)
    return out


def json_safe(value: Any) -> Any:
    """A catalog value as JSON holds it: decimals as text, dates in ISO form."""
    if isinstance(value, Decimal):
        return f"{value:f}"
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def live(
    session: Session,
    invoices: list[Any],
    store_name: str,
    mentioned: dict[int, Mentions] | None = None,
    issuer_id: str | None = None,
) -> dict[int, dict]:
    """Each invoice's identity as the catalog has it now (what issuing freezes), from its
    own issuer or from `issuer_id`'s."""
    if not invoices:
        return {}
    if mentioned is None:
        mentioned = mentions(session, [i.id for i in invoices])
    issuers = {
        issuer: json_safe(load_issuer(session, store_name, issuer))
        for issuer in sorted({issuer_id or i.issuer_id for i in invoices})
    }
    c = Customer.__table__.c
    fields = [name for name in BILLED_FIELDS if name in c]
    wanted = {i.billed_customer_id for i in invoices}
    for i in invoices:
        wanted |= mentioned.get(i.id, NOTHING).customers
    customers = {
        row.id: row
        for row in select_in(
            session,
            sa.select(c.id, c.jurisdiction, c.tax_basis, *(c[f] for f in fields)),
            c.id,
            wanted,
        )
    }
    m = Metric.__table__.c
    metric_rows = session.execute(sa.select(m.code, m.name, m.aggregation, m.field)).all()
    metric_names = {row.code: row.name for row in metric_rows}
    metric_rules = {row.code: [row.aggregation, row.field] for row in metric_rows}
    rates = {
        row["jurisdiction"]: json_safe(
            {k: v for k, v in row.items() if k != "jurisdiction" and v is not None}
        )
        for row in session.execute(sa.select(TaxRate.__table__)).mappings()
    }
    credits = _credits(session, invoices, mentioned)
    out = {}
    for invoice in invoices:
        found = mentioned.get(invoice.id, NOTHING)
        billed = invoice.billed_customer_id
        row = customers.get(billed)
        serviced = sorted(found.customers | {billed})
        names = {
            customer: customers[customer].name if customer in customers else customer
            for customer in serviced
        }
        taxed_at = _taxed_at(row, serviced, customers)
        jurisdictions = found.jurisdictions | set(taxed_at.values())
        out[invoice.id] = {
            "issuer": issuers[issuer_id or invoice.issuer_id],
            "billed": _billed_entry(billed, row, fields),
            "customers": names,
            "metrics": {code: metric_names.get(code, code) for code in sorted(found.metrics)},
            # What each metric counts (its aggregation and field), as the breakdown says.
            "metric_rules": {
                code: metric_rules[code] for code in sorted(found.metrics) if code in metric_rules
            },
            "tax_rates": {j: rates[j] for j in sorted(jurisdictions) if j in rates},
            "taxed_at": taxed_at,
            "credits": credits.get(invoice.id, {}),
        }
    return out


def _billed_entry(billed: str, row: Any, fields: list[str]) -> dict[str, Any]:
    """The billed customer as the snapshot keeps it: its id, its name (its id without a
    catalog row) and those of `fields` it has set."""
    entry: dict[str, Any] = {"id": billed, "name": billed}
    if row is not None:
        found = row._mapping
        entry.update(
            {f: json_safe(found[f]) for f in fields if f == "name" or found[f] is not None}
        )
    return entry


def _taxed_at(billed: Any, serviced: list[str], customers: dict[str, Any]) -> dict[str, str]:
    """serviced customer -> the jurisdiction its lines are taxed at (the rule of
    domain.tax), for those taxed anywhere: what a rate of 0 is shown by."""
    if billed is None:
        return {}
    out = {}
    for customer in serviced:
        where = jurisdiction_for({"serviced_customer_id": customer}, billed, customers)
        if where:
            out[customer] = where
    return out


def _credits(
    session: Session, invoices: list[Any], mentioned: dict[int, Mentions]
) -> dict[int, dict[str, dict]]:
    """invoice -> grant it used -> the grant's name (when it has one) and its balance left
    after the invoice, as the ledger has it now (what issuing freezes)."""
    used = {i.id: mentioned.get(i.id, NOTHING).grants for i in invoices}
    wanted = {g for grants in used.values() for g in grants}
    if not wanted:
        return {}
    g = CreditGrant.__table__.c
    named = {row.id: row.name for row in select_in(session, sa.select(g.id, g.name), g.id, wanted)}
    after = balances_after(session, invoices, used)
    out: dict[int, dict[str, dict]] = {}
    for invoice in invoices:
        out[invoice.id] = {
            grant: {
                **({"name": named[grant]} if named.get(grant) else {}),
                "balance_after": money_str(balance, invoice.currency),
            }
            for grant, balance in sorted(after.get(invoice.id, {}).items())
        }
    return out


def of(
    session: Session,
    invoices: list[Any],
    store_name: str,
    mentioned: dict[int, Mentions] | None = None,
) -> dict[int, dict]:
    """The identity each invoice's documents show: an issued invoice's frozen snapshot,
    a draft's from the catalog as it is now."""
    out = {i.id: i.identity for i in invoices if i.status != "draft" and i.identity}
    rest = [i for i in invoices if i.id not in out]
    out.update(live(session, rest, store_name, mentioned))
    return out
