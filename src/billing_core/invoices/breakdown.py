"""The usage breakdown page (SPEC §7.1): usage per serviced customer and metric, what
each metric counted and how each line was priced, step by step, and the part periods of
flat fees; and the short note and the average label a line takes on the first page.

`charges_of` and `pool_totals` read the charges and pool totals of many invoices
set-based; the rest builds one invoice's breakdown from those rows. An `Explainer` works
out and words each distinct charge once for all the documents it serves (see its
docstring).
"""

from __future__ import annotations

import json
from collections import defaultdict, namedtuple
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from billing_core.domain.charge import pick
from billing_core.domain.explain import Explanation
from billing_core.domain.explain import of_charge as explain_charge
from billing_core.domain.lines import section_order
from billing_core.domain.money import ZERO
from billing_core.invoices.explanations import Formatter, counted, steps, summary
from billing_core.invoices.formatting import money, period, quantity
from billing_core.store.models import Charge, InvoiceCharge
from billing_core.store.rows import among

# What the documents read of a charge: the breakdown's columns and what explains it.
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
# A charge as the documents read it: a named tuple (a field read costs a twentieth of a
# SQLAlchemy Row's), its price terms parsed.
ChargeRecord = namedtuple("ChargeRecord", ("invoice_id", "id", *BREAKDOWN_COLUMNS))  # type: ignore[misc]
_TERMS = BREAKDOWN_COLUMNS.index("pricing") + 2


def charges_of(session: Session, ids: list[int]) -> dict[int, list[Any]]:
    """The charges of each invoice, with the columns the breakdown reads.

    The price terms are read as text and parsed once per distinct terms: the charges of
    one price share one dict (read it, never change it), and thousands of charges of a
    few prices cost a few parses, not thousands."""
    ch = Charge.__table__.c
    link = InvoiceCharge.__table__.c
    columns = [
        sa.cast(ch.pricing, sa.Text).label(name) if name == "pricing" else ch[name]
        for name in BREAKDOWN_COLUMNS
    ]
    parsed: dict[str | None, Any] = {None: None}  # terms text -> its dict
    charges: dict[int, list[Any]] = defaultdict(list)
    for among_ids in among(session, link.invoice_id, ids):
        for row in session.execute(
            sa.select(link.invoice_id, ch.id, *columns)
            .join_from(Charge.__table__, InvoiceCharge.__table__, link.charge_id == ch.id)
            .where(among_ids)
        ).fetchall():
            text = row[_TERMS]
            if text in parsed:
                terms = parsed[text]
            else:
                terms = parsed[text] = json.loads(text)
            charge = ChargeRecord(*row[:_TERMS], terms, *row[_TERMS + 1 :])
            charges[charge.invoice_id].append(charge)
    return charges


def pool_totals(session: Session, ids: list[int]) -> dict[tuple, tuple[Decimal, Decimal]]:
    """(total quantity, total amount) of every pool period the invoices bill a share of,
    over all its members' charges, on whatever invoice each is."""
    ch = Charge.__table__.c
    link = InvoiceCharge.__table__.c
    member = Charge.__table__.alias("member")
    totals: dict[tuple, tuple[Decimal, Decimal]] = {}
    for among_ids in among(session, link.invoice_id, ids):
        pooled = (
            sa.select(*(ch[k] for k in POOL_KEY))
            .distinct()
            .join_from(Charge.__table__, InvoiceCharge.__table__, link.charge_id == ch.id)
            .where(among_ids, ch.pool.is_not(None), ch.kind == "usage")
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


def _fields(charge: Any) -> Any:
    """What `domain.explain.of_charge` reads a charge from: a mapping."""
    if isinstance(charge, dict):
        return charge
    if isinstance(charge, tuple) and hasattr(charge, "_asdict"):
        return charge._asdict()
    return charge._mapping


class Explainer:
    """Charges explained and worded, each distinct one once, for the documents of one
    batch (a render step's, a command's).

    A close bills thousands of charges that come out alike: every root's flat fee, the
    many customers with the same count of seats or active users under the same price. A
    charge's explanation depends only on its terms, kind, currency, quantity, amount, part
    period (a flat fee) and pool totals (a pooled share), so charges equal in those share
    one `Explanation`, and an explanation's wording (`steps`, `summary`) in a currency and
    locale is made once. The words are the same as made one by one; the lists returned
    are shared between documents, to be read, not changed.
    """

    def __init__(self, pools: dict[tuple, tuple[Decimal, Decimal]] | None = None):
        self.pools = pools or {}
        # key -> (the terms object keyed by identity, kept alive; the explanation)
        self._explained: dict[tuple, tuple[Any, Explanation | None]] = {}
        # (explanation id, currency, locale) -> (the explanation, kept alive; its words)
        self._steps: dict[tuple, tuple[Explanation, list[str]]] = {}
        self._summaries: dict[tuple, tuple[Explanation, str | None]] = {}
        # What a document shows of one metric of one customer, by what makes it
        # (`_metric`): two thirds of a close's are alike (the same usage priced alike).
        self.metrics: dict[tuple, tuple[tuple, dict]] = {}
        # A charged line as the first page lists it, by what it shows (`contexts._row`).
        self.rows: dict[tuple, dict] = {}

    def of(self, charge: Any) -> Explanation | None:
        terms = charge.pricing
        if charge.kind not in ("fixed", "usage") or not terms:
            return None
        pool = None
        if charge.pool:
            pool = self.pools.get(tuple(getattr(charge, k) for k in POOL_KEY))
        period = None
        if charge.kind == "fixed":
            period = (charge.period_start, charge.period_end, charge.full_start, charge.full_end)
        # The quantity and amount by their text: a Decimal's first hash is a modular power
        # (`formatting.money`), and each charge's are objects of their own.
        key = (id(terms), charge.kind, charge.currency, str(charge.quantity), str(charge.amount))
        key += (period, pool)
        found = self._explained.get(key)
        if found is None or found[0] is not terms:
            found = self._explained[key] = (terms, explain_charge(_fields(charge), pool))
        return found[1]

    def steps(self, explanation: Explanation, currency: str, fmt: Formatter) -> list[str]:
        key = (id(explanation), currency, fmt.locale)
        found = self._steps.get(key)
        if found is None or found[0] is not explanation:
            found = self._steps[key] = (explanation, steps(explanation, currency, fmt))
        return found[1]

    def summary(self, explanation: Explanation, currency: str, fmt: Formatter) -> str | None:
        key = (id(explanation), currency, fmt.locale)
        found = self._summaries.get(key)
        if found is None or found[0] is not explanation:
            found = self._summaries[key] = (explanation, summary(explanation, currency, fmt))
        return found[1]


def line_notes(
    lines: list[Any],
    charges: list[Any],
    explained: dict[int, Explanation | None],
    currency: str,
    fmt: Formatter,
    explainer: Explainer | None = None,
) -> dict[int, tuple[str | None, bool]]:
    """Per line position: a short note on how its amount came about (a part period, a
    pool's share, packages, tiers), and whether its unit price is an average. A line of
    several charges (a pool's summary, merged periods) is an average when its price is."""
    worded = explainer.summary if explainer is not None else summary
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
            how = worded(own, currency, fmt) if own is not None else None
            out[line.position] = (how, line.kind != "fixed" and found.averaged)
    return out


def breakdown(
    charges: list[Any],
    billed: str,
    names: dict[str, str],
    identity: dict,
    explained: dict[int, Explanation | None],
    fmt: Formatter,
    explainer: Explainer | None = None,
) -> list[dict]:
    """Usage per serviced customer, then per metric: what was counted, the quantities and
    service periods, and how each was priced, step by step; then the part periods of
    flat fees as days of days."""
    worded = explainer.steps if explainer is not None else steps
    made = explainer.metrics if explainer is not None else None
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
                _metric(
                    code,
                    usage[customer_id][code],
                    metric_names,
                    rules,
                    explained,
                    fmt,
                    worded,
                    made,
                )
                for code in sorted(
                    usage[customer_id], key=lambda m: (metric_names.get(m, m).casefold(), m)
                )
            ],
            "prorated": [
                {
                    "product": c.product,
                    "period": period(c.period_start, c.period_end, fmt.locale),
                    "amount": money(c.amount, c.currency, fmt.locale),
                    "how": worded(explained[c.id], c.currency, fmt),
                }
                for c in sorted(prorated[customer_id], key=lambda c: (c.period_start, c.product))
            ],
        }
        for customer_id in section_order({*usage, *prorated}, billed, names)
    ]


def _metric(
    code: str,
    charges: list[Any],
    metric_names: dict[str, str],
    rules: dict[str, list],
    explained: dict[int, Explanation | None],
    fmt: Formatter,
    worded: Any = steps,
    made: dict[tuple, tuple[tuple, dict]] | None = None,
) -> dict:
    """One metric's usage for one customer: a row per service period with how it was
    priced, and their total.

    With `made` (an `Explainer`'s, whose explanations `worded` words), a metric whose
    charges are alike in all it shows (the same name and rule, the same products, periods,
    quantities, amounts and explanations) is the one made before, shared: read it, never
    change it. Its rows are dicts of their own, never one twice (the template tells a
    metric's first row by identity, `is sameas`, rather than pay for Jinja's `loop`)."""
    found = sorted(charges, key=lambda c: (c.period_start, c.kind != "usage", c.charge_key))
    if made is not None:
        hows = tuple(explained.get(c.id) for c in found)
        key = (code, metric_names.get(code, code), tuple(rules.get(code) or ()), fmt.locale)
        key += tuple(
            (c.product, c.period_start, c.period_end, str(c.quantity), str(c.amount))
            + (c.currency, c.kind, bool(c.pool), id(how))
            for c, how in zip(found, hows, strict=True)
        )
        shared = made.get(key)
        if shared is not None:
            return shared[1]
        # The explanations kept alive with it: their ids are in its key.
        metric = _metric(code, found, metric_names, rules, explained, fmt, worded)
        made[key] = (hows, metric)
        return metric
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
                "how": worded(how, c.currency, fmt) if how is not None else _late(c, fmt),
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
