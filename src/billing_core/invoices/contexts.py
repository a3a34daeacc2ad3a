"""What an invoice document shows: its lines grouped by serviced customer, taxes, credits,
totals, a roll-up's summary (`invoices.summary`) and the usage breakdown
(`invoices.breakdown`), formatted the way finance reads them in the document's locale. The
same context feeds the HTML, the PDF and the terminal.

`contexts` reads what it needs from the store set-based (no query per invoice); `context`
builds one invoice's from those rows.
"""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal
from typing import Any

from sqlmodel import Session

from billing_core.domain.lines import section_order
from billing_core.domain.money import ZERO
from billing_core.domain.tax import TAXED_KINDS
from billing_core.domain.terms import dates_of, locale_of, terms_label, terms_of
from billing_core.invoices.breakdown import (
    Explainer,
    breakdown,
    charges_of,
    line_notes,
    pool_totals,
)
from billing_core.invoices.explanations import Formatter, line_average
from billing_core.invoices.formatting import day, money, percent, period, quantity
from billing_core.invoices.identity import mentions_of
from billing_core.invoices.identity import of as identity_of
from billing_core.invoices.lifecycle import lines_of
from billing_core.invoices.summary import summary as summary_of
from billing_core.invoices.summary import sums


def contexts(session: Session, invoices: list[Any], store_name: str = "billing") -> dict[int, dict]:
    """The document context of each invoice, loaded set-based (no query per invoice)."""
    if not invoices:
        return {}
    ids = sorted(i.id for i in invoices)
    lines = lines_of(session, ids)
    charges = charges_of(session, ids)
    pools = pool_totals(session, ids)
    # An issued invoice shows the identity frozen with it; a draft, the catalog's now.
    identities = identity_of(
        session,
        invoices,
        store_name,
        {i.id: mentions_of(lines[i.id], charges[i.id]) for i in invoices},
    )
    explainer = Explainer(pools)
    return {
        i.id: context(i, lines[i.id], charges[i.id], identities[i.id], pools, explainer)
        for i in invoices
    }


def context(
    invoice: Any,
    lines: list[Any],
    charges: list[Any],
    identity: dict,
    pools: dict[tuple, tuple[Decimal, Decimal]] | None = None,
    explainer: Explainer | None = None,
) -> dict:
    """Everything a document or the terminal shows, grouped and formatted the way finance
    reads it. Only what is frozen with an issued invoice goes in (its lines, charges and
    the identity snapshot taken at issue), so a final document reads the same whenever it
    is rendered. `explainer` (with the same `pools`) is shared by the invoices of a batch:
    each distinct charge is explained and worded once."""
    names: dict[str, str] = identity["customers"]
    issuer = {k: v for k, v in identity["issuer"].items() if k not in ("id", "invoice_prefix")}
    currency = invoice.currency
    locale = locale_of(identity)
    billed = invoice.billed_customer_id
    by_position = {line.position: line for line in lines}
    by_customer: dict[str, list[Any]] = defaultdict(list)
    for line in lines:
        by_customer[line.serviced_customer_id].append(line)
    rates: dict[str, dict] = identity.get("tax_rates", {})
    explainer = explainer or Explainer(pools)
    explained = {c.id: explainer.of(c) for c in charges}
    fmt = Formatter(locale)
    notes = line_notes(lines, charges, explained, currency, fmt, explainer)
    sections = [
        _section(
            customer_id,
            by_customer[customer_id],
            by_position,
            names,
            billed,
            currency,
            identity,
            notes,
            fmt,
            explainer.rows,
        )
        for customer_id in section_order(by_customer, billed, names)
    ]
    # The notes of the rates the document shows (a rate of 0 included: a reverse charge).
    used = {t["jurisdiction"] for s in sections for t in s["taxes"] if t["jurisdiction"]}
    return {
        "lang": locale.replace("_", "-"),
        "invoice": {
            "id": invoice.id,
            "number": invoice.number,
            "draft": invoice.status == "draft",
            "reference": invoice.number or f"Draft {invoice.id}",
            "billing_date": day(invoice.billing_date, locale),
            "currency": currency,
            **_dates(invoice, identity, locale),
        },
        "issuer": {
            **dict.fromkeys(("tax_id", "email", "payment_instructions")),
            **issuer,
            "address": list(issuer.get("address") or []),
        },
        "billed": {
            **dict.fromkeys(("address", "tax_id", "email")),
            **identity["billed"],
            "id": billed,
        },
        "sections": sections,
        "multiple_sections": len(sections) > 1,
        "summary": summary_of(sections, invoice, currency, locale),
        "totals": _totals(invoice, currency, locale),
        "breakdown": breakdown(charges, billed, names, identity, explained, fmt, explainer),
        "tax_notes": [rates[j]["note"] for j in sorted(used) if rates.get(j, {}).get("note")],
    }


def _dates(invoice: Any, identity: dict, locale: str) -> dict:
    """Invoice date, due date and terms as the document prints them (a draft has no dates
    yet, but its terms are known), and the document's date in ISO form (`dated`: the
    invoice date, a draft's billing date)."""
    dated = dates_of(invoice.issued_at, identity)
    if dated is None:
        return {
            "issue_date": None,
            "due_date": None,
            "terms": terms_label(terms_of(identity)),
            "dated": invoice.billing_date.isoformat(),
        }
    issued, due, days = dated
    return {
        "issue_date": day(issued, locale),
        "due_date": day(due, locale),
        "terms": terms_label(days),
        # The document's own date (its PDF's creation and modification dates): the
        # invoice date, frozen with it, never the clock that rendered it (docs/decisions.md,
        # "Documents byte for byte").
        "dated": issued.isoformat(),
    }


def _tax_label(jurisdiction: str, rate: Decimal, rates: dict[str, dict], locale: str) -> str:
    """`VAT 19% (DE)` with the rate's name; `Tax DE 19%` without one."""
    name = rates.get(jurisdiction, {}).get("name")
    if name:
        return f"{name} {percent(rate, locale)} ({jurisdiction})"
    return f"Tax {jurisdiction} {percent(rate, locale)}"


def _section(
    customer_id: str,
    section_lines: list[Any],
    by_position: dict[int, Any],
    names: dict[str, str],
    billed: str,
    currency: str,
    identity: dict,
    notes: dict[int, tuple[str | None, bool]],
    fmt: Formatter,
    made: dict[tuple, dict] | None = None,
) -> dict:
    """One serviced customer's part of an invoice: its rows, taxes, credits and total, and
    the raw sums the summary of a roll-up adds up. With `made` (a batch's), a row alike in
    all it shows to one made before is that one, shared (`_row`)."""
    locale = fmt.locale
    rates: dict[str, dict] = identity.get("tax_rates", {})
    taxes: dict[tuple, list[Decimal]] = {}
    rows, credits = [], []
    for line in section_lines:
        if line.kind == "tax":
            taxed = by_position.get(line.taxed_position)
            key = (line.jurisdiction, line.tax_rate)
            base, amount = taxes.setdefault(key, [ZERO, ZERO])
            taxes[key] = [base + (taxed.amount if taxed else ZERO), amount + line.amount]
        elif line.kind == "credit":
            credits.append(_credit(line, currency, identity.get("credits"), locale))
        else:
            how, averaged = notes.get(line.position, (None, False))
            if made is None:
                rows.append(_row(line, currency, fmt, how, averaged))
                continue
            # The amounts by their text (see `formatting.money`).
            key = (line.product, line.bundle, line.kind, line.period_start, line.period_end)
            key += (str(line.quantity), str(line.unit_price), str(line.amount))
            key += (currency, locale, how, averaged)
            row = made.get(key)
            if row is None:
                row = made[key] = _row(line, currency, fmt, how, averaged)
            rows.append(row)
    section_sums = sums(section_lines)
    zero_rated = _zero_rated(customer_id, section_lines, identity)
    if zero_rated is not None:
        taxes.setdefault(*zero_rated)
    return {
        "customer_id": customer_id,
        "name": names.get(customer_id, customer_id),
        "is_billed": customer_id == billed,
        "rows": rows,
        "taxes": [
            {
                "jurisdiction": jurisdiction,
                "label": _tax_label(jurisdiction, rate, rates, locale),
                "base": money(base, currency, locale),
                "amount": money(amount, currency, locale),
            }
            for (jurisdiction, rate), (base, amount) in sorted(
                taxes.items(), key=lambda kv: (kv[0][0] or "", kv[0][1])
            )
        ],
        "credits": credits,
        "total": money(section_sums["total"], currency, locale),
        "sums": section_sums,
    }


def _zero_rated(
    customer_id: str, section_lines: list[Any], identity: dict
) -> tuple[tuple, list[Decimal]] | None:
    """A rate of 0 where this customer's lines are taxed (a reverse charge) makes no tax
    line; the document still shows it, as a row of 0 on what it applied to, so the rate
    and its note are on the invoice. None for any other rate."""
    jurisdiction = identity.get("taxed_at", {}).get(customer_id)
    rate = identity.get("tax_rates", {}).get(jurisdiction or "", {}).get("rate")
    if rate is None or Decimal(rate) != 0:
        return None
    taxed = [x.amount for x in section_lines if x.kind in TAXED_KINDS]
    if not taxed:
        return None
    return (jurisdiction, ZERO), [sum(taxed, ZERO), ZERO]


def _credit(line: Any, currency: str, grants: dict[str, dict] | None, locale: str) -> dict:
    """A credit line: the grant's name (else its id) and its balance left after this
    invoice, frozen at issue (a draft shows the ledger's now). An invoice issued before
    grants were frozen with it keeps the line's own description, without a balance."""
    amount = money(line.amount, currency, locale)
    grant = (grants or {}).get(line.grant_id)
    if grant is None:
        label = line.description or line.product
        return {"label": label, "name": label, "balance": None, "amount": amount}
    name = grant.get("name") or f"Credit {line.grant_id}"
    balance = money(Decimal(grant["balance_after"]), currency, locale)
    return {
        "label": f"{name} · balance left after this invoice {balance}",
        "name": name,
        "balance": balance,
        "amount": amount,
    }


def _row(
    line: Any, currency: str, fmt: Formatter, how: str | None = None, averaged: bool = False
) -> dict:
    """A charged line as the document lists it (quantity and unit price when itemized; a
    unit price that is an average says so)."""
    itemized = line.kind in ("fixed", "usage", "adjustment")
    unit_price = ""
    if itemized and line.unit_price is not None:
        unit_price = (
            line_average(line, currency, fmt)
            if averaged
            else money(line.unit_price, currency, fmt.locale, exact=True)
        )
    return {
        "product": line.product or "",
        "bundle": line.bundle,
        "kind": line.kind,
        "note": _note(line) or how,
        "period": period(line.period_start, line.period_end, fmt.locale),
        "quantity": quantity(line.quantity, fmt.locale) if itemized else "",
        "unit_price": unit_price,
        "average": bool(unit_price) and averaged,
        "amount": money(line.amount, currency, fmt.locale),
    }


def _note(line: Any) -> str | None:
    if line.kind == "adjustment":
        return "Late usage for this period, not billed before"
    if line.kind == "minimum":
        return "Shortfall against the minimum commitment"
    return None


def _totals(invoice: Any, currency: str, locale: str) -> list[dict]:
    rows = [
        {"label": "Subtotal", "amount": money(invoice.subtotal, currency, locale), "grand": False}
    ]
    if invoice.discount_total:
        rows.append(
            {
                "label": "Discounts",
                "amount": money(invoice.discount_total, currency, locale),
                "grand": False,
            }
        )
    rows.append(
        {"label": "Tax", "amount": money(invoice.tax_total, currency, locale), "grand": False}
    )
    if invoice.credit_total:
        rows.append(
            {
                "label": "Credits",
                "amount": money(invoice.credit_total, currency, locale),
                "grand": False,
            }
        )
    rows.append(
        {
            "label": f"Total due ({currency})",
            "amount": money(invoice.total, currency, locale),
            "grand": True,
        }
    )
    return rows
