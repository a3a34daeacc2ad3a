"""What an invoice document shows: its lines grouped by serviced customer, taxes, credits,
totals and the usage breakdown, formatted the way finance reads them. The same context
feeds the HTML, the PDF and the terminal.

`contexts` reads what it needs from the store set-based (no query per invoice); `context`
builds one invoice's from those rows.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from billing_core.domain.charge import pick
from billing_core.domain.explain import Explanation
from billing_core.domain.explain import of_charge as explain_charge
from billing_core.domain.money import ZERO
from billing_core.domain.tax import TAXED_KINDS
from billing_core.domain.terms import dates_of, locale_of, terms_label, terms_of
from billing_core.invoices.explanations import Formatter, average, counted, steps, summary
from billing_core.invoices.formatting import day, money, percent, period, quantity
from billing_core.invoices.identity import mentions_of
from billing_core.invoices.identity import of as identity_of
from billing_core.invoices.lifecycle import lines_of
from billing_core.store.models import Charge, InvoiceCharge
from billing_core.store.rows import chunks

# What the breakdown page reads of a charge (not its stored pricing: that is heavy).
BREAKDOWN_COLUMNS = pick(
    "kind",
    "subscription_id",
    "price_code",
    "metric_code",
    "serviced_customer_id",
    "product",
    "pool",
    "period_start",
    "period_end",
    "full_start",
    "full_end",
    "currency",
    "quantity",
    "amount",
    "pricing",
    "charge_key",
)
# What identifies a pool's period: its members' charges share these.
POOL_KEY = ("subscription_id", "price_code", "period_start", "period_end")


def contexts(session: Session, invoices: list[Any], store_name: str = "billing") -> dict[int, dict]:
    """The document context of each invoice, loaded set-based (no query per invoice)."""
    if not invoices:
        return {}
    ids = sorted(i.id for i in invoices)
    lines = lines_of(session, ids)
    charges = _breakdown_charges(session, ids)
    pools = pool_totals(session, ids)
    # An issued invoice shows the identity frozen with it; a draft, the catalog's now.
    identities = identity_of(
        session,
        invoices,
        store_name,
        {i.id: mentions_of(lines[i.id], charges[i.id]) for i in invoices},
    )
    return {i.id: context(i, lines[i.id], charges[i.id], identities[i.id], pools) for i in invoices}


def _breakdown_charges(session: Session, ids: list[int]) -> dict[int, list[Any]]:
    """The charges of each invoice, with the columns the breakdown reads."""
    ch = Charge.__table__.c
    link = InvoiceCharge.__table__.c
    charges: dict[int, list[Any]] = defaultdict(list)
    for part in chunks(ids):
        for charge in session.execute(
            sa.select(link.invoice_id, ch.id, *(ch[name] for name in BREAKDOWN_COLUMNS))
            .join_from(Charge.__table__, InvoiceCharge.__table__, link.charge_id == ch.id)
            .where(link.invoice_id.in_(part))
        ):
            charges[charge.invoice_id].append(charge)
    return charges


def pool_totals(session: Session, ids: list[int]) -> dict[tuple, tuple[Decimal, Decimal]]:
    """(total quantity, total amount) of every pool period the invoices bill a share of,
    over all its members' charges, on whatever invoice each is."""
    ch = Charge.__table__.c
    link = InvoiceCharge.__table__.c
    member = Charge.__table__.alias("member")
    totals: dict[tuple, tuple[Decimal, Decimal]] = {}
    for part in chunks(ids):
        pooled = (
            sa.select(*(ch[k] for k in POOL_KEY))
            .distinct()
            .join_from(Charge.__table__, InvoiceCharge.__table__, link.charge_id == ch.id)
            .where(link.invoice_id.in_(part), ch.pool.is_not(None), ch.kind == "usage")
            .subquery()
        )
        rows = session.execute(
            sa.select(*(member.c[k] for k in POOL_KEY), member.c.quantity, member.c.amount)
            .join(pooled, sa.and_(*(member.c[k] == pooled.c[k] for k in POOL_KEY)))
            .where(member.c.kind == "usage", member.c.pool.is_not(None))
        )
        sums: dict[tuple, list[Decimal]] = defaultdict(lambda: [ZERO, ZERO])
        for row in rows:
            key = tuple(row[: len(POOL_KEY)])
            sums[key][0] += row.quantity
            sums[key][1] += row.amount
        totals.update({key: (q, a) for key, (q, a) in sums.items()})
    return totals


def _explanation(charge: Any, pools: dict[tuple, tuple[Decimal, Decimal]]) -> Explanation | None:
    pool = pools.get(tuple(getattr(charge, k) for k in POOL_KEY)) if charge.pool else None
    return explain_charge(charge, pool)


def _section_order(customer_ids: Iterable[str], billed: str, names: dict[str, str]) -> list[str]:
    """The billed customer's own section first, then the others by name."""
    return sorted(set(customer_ids), key=lambda c: (c != billed, names.get(c, c).casefold(), c))


def context(
    invoice: Any,
    lines: list[Any],
    charges: list[Any],
    identity: dict,
    pools: dict[tuple, tuple[Decimal, Decimal]] | None = None,
) -> dict:
    """Everything a document or the terminal shows, grouped and formatted the way finance
    reads it. Only what is frozen with an issued invoice goes in (its lines, charges and
    the identity snapshot taken at issue), so a final document reads the same whenever it
    is rendered."""
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
    explained = {c.id: _explanation(c, pools or {}) for c in charges}
    fmt = Formatter(locale)
    notes = _line_notes(lines, charges, explained, currency, fmt)
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
        )
        for customer_id in _section_order(by_customer, billed, names)
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
        "summary": _summary(sections, invoice, currency, locale),
        "totals": _totals(invoice, currency, locale),
        "breakdown": _breakdown(charges, billed, names, identity, explained, fmt),
        "tax_notes": [rates[j]["note"] for j in sorted(used) if rates.get(j, {}).get("note")],
    }


def _dates(invoice: Any, identity: dict, locale: str) -> dict:
    """Invoice date, due date and terms as the document prints them (a draft has no dates
    yet, but its terms are known)."""
    dated = dates_of(invoice.issued_at, identity)
    if dated is None:
        return {"issue_date": None, "due_date": None, "terms": terms_label(terms_of(identity))}
    issued, due, days = dated
    return {
        "issue_date": day(issued, locale),
        "due_date": day(due, locale),
        "terms": terms_label(days),
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
) -> dict:
    """One serviced customer's part of an invoice: its rows, taxes, credits and total, and
    the raw sums the summary of a roll-up adds up."""
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
            rows.append(_row(line, currency, fmt, *notes.get(line.position, (None, False))))
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
        "total": money(sum((x.amount for x in section_lines), ZERO), currency, locale),
        "sums": _sums(section_lines),
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


# What a section's lines add to each column of a roll-up's summary.
SUMMED = {
    "fixed": "subtotal",
    "usage": "subtotal",
    "minimum": "subtotal",
    "adjustment": "subtotal",
    "discount": "discounts",
    "tax": "tax",
    "credit": "credits",
}
SUMMARY_COLUMNS = {
    "subtotal": "Subtotal",
    "discounts": "Discounts",
    "tax": "Tax",
    "credits": "Credits",
    "total": "Total",
}


def _sums(section_lines: list[Any]) -> dict[str, Decimal]:
    """A section's subtotal, discounts, tax, credits and total, unformatted: summed as the
    invoice's totals are (SPEC §8), so the sections add up to them."""
    sums = dict.fromkeys(SUMMARY_COLUMNS, ZERO)
    for line in section_lines:
        sums[SUMMED[line.kind]] += line.amount
        sums["total"] += line.amount
    return sums


def _summary(sections: list[dict], invoice: Any, currency: str, locale: str) -> dict | None:
    """What opens a roll-up with more than one serviced customer (SPEC §7.1): a row per
    serviced customer, in section order, with its subtotal, tax, credits and total, and
    the invoice's totals under them. Discounts get a column when the invoice has any, so
    that every row and the totals add up across."""
    if len(sections) < 2:
        return None
    totals = {
        "subtotal": invoice.subtotal,
        "discounts": invoice.discount_total,
        "tax": invoice.tax_total,
        "credits": invoice.credit_total,
        "total": invoice.total,
    }
    shown = [
        key
        for key in SUMMARY_COLUMNS
        if key != "discounts" or totals[key] or any(s["sums"][key] for s in sections)
    ]
    return {
        "columns": [SUMMARY_COLUMNS[key] for key in shown],
        "rows": [
            {
                "customer_id": s["customer_id"],
                "name": s["name"],
                "amounts": [money(s["sums"][key], currency, locale) for key in shown],
            }
            for s in sections
        ],
        "totals": [money(totals[key], currency, locale) for key in shown],
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
            average(line.unit_price, currency, fmt)
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


def _line_notes(
    lines: list[Any],
    charges: list[Any],
    explained: dict[int, Explanation | None],
    currency: str,
    fmt: Formatter,
) -> dict[int, tuple[str | None, bool]]:
    """Per line position: a short note on how its amount came about (a part period, a
    pool's share, packages, tiers), and whether its unit price is an average. A line of
    several charges (a pool's summary, merged periods) is an average when its price is."""
    by_price: dict[str | None, Explanation] = {}
    for charge in charges:
        found = explained.get(charge.id)
        if found is not None:
            by_price.setdefault(charge.price_code, found)
    out: dict[int, tuple[str | None, bool]] = {}
    for line in lines:
        if line.kind not in ("fixed", "usage", "adjustment"):
            continue
        own = explained.get(line.charge_id) if line.charge_id is not None else None
        found = own or by_price.get(line.price_code)
        if found is not None:
            how = summary(own, currency, fmt) if own is not None else None
            out[line.position] = (how, line.kind != "fixed" and found.averaged)
    return out


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


def _breakdown(
    charges: list[Any],
    billed: str,
    names: dict[str, str],
    identity: dict,
    explained: dict[int, Explanation | None],
    fmt: Formatter,
) -> list[dict]:
    """Usage per serviced customer, then per metric: what was counted, the quantities and
    service periods, and how each was priced, step by step; then the part periods of
    flat fees as days of days."""
    metric_names: dict[str, str] = identity["metrics"]
    rules: dict[str, list] = identity.get("metric_rules", {})
    usage: dict[str, dict[str, list[Any]]] = defaultdict(lambda: defaultdict(list))
    prorated: dict[str, list[Any]] = defaultdict(list)
    for charge in charges:
        found = explained.get(charge.id)
        if charge.kind == "fixed" and found is not None and found.proration is not None:
            prorated[charge.serviced_customer_id].append(charge)
            continue
        if charge.kind not in ("usage", "adjustment") or charge.metric_code is None:
            continue
        if charge.quantity == 0:
            continue  # a customer without usage in a period has nothing to break down
        usage[charge.serviced_customer_id][charge.metric_code].append(charge)
    return [
        {
            "customer_id": customer_id,
            "name": names.get(customer_id, customer_id),
            "metrics": [
                _metric(code, usage[customer_id][code], metric_names, rules, explained, fmt)
                for code in sorted(
                    usage[customer_id], key=lambda m: (metric_names.get(m, m).casefold(), m)
                )
            ],
            "prorated": [
                {
                    "product": c.product,
                    "period": period(c.period_start, c.period_end, fmt.locale),
                    "amount": money(c.amount, c.currency, fmt.locale),
                    "how": steps(explained[c.id], c.currency, fmt),
                }
                for c in sorted(prorated[customer_id], key=lambda c: (c.period_start, c.product))
            ],
        }
        for customer_id in _section_order({*usage, *prorated}, billed, names)
    ]


def _metric(
    code: str,
    charges: list[Any],
    metric_names: dict[str, str],
    rules: dict[str, list],
    explained: dict[int, Explanation | None],
    fmt: Formatter,
) -> dict:
    """One metric's usage for one customer: a row per service period with how it was
    priced, and their total."""
    found = sorted(charges, key=lambda c: (c.period_start, c.kind != "usage", c.charge_key))
    rows = []
    for c in found:
        how = explained.get(c.id)
        rows.append(
            {
                "product": c.product,
                "period": period(c.period_start, c.period_end, fmt.locale),
                "quantity": quantity(c.quantity, fmt.locale),
                "amount": money(c.amount, c.currency, fmt.locale),
                "note": "late usage" if c.kind == "adjustment" else ("pooled" if c.pool else ""),
                "how": steps(how, c.currency, fmt) if how is not None else _late(c, fmt),
            }
        )
    return {
        "name": metric_names.get(code, code),
        "code": code,
        "counted": counted(rules.get(code)),
        "rows": rows,
        "total": (
            quantity(sum((c.quantity for c in found), ZERO), fmt.locale) if len(found) > 1 else None
        ),
    }


def _late(charge: Any, fmt: Formatter) -> list[str]:
    """What a late-usage adjustment's row says: the units that arrived after the period
    was billed, re-rated with the price that billed it."""
    if charge.kind != "adjustment":
        return []
    return [
        f"{fmt.quantity(charge.quantity)} more counted after this period was billed; the "
        f"period re-rated with its price comes to {fmt.money(charge.amount, charge.currency)} more"
    ]
