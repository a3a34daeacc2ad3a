"""Late usage: usage that arrived for periods already on issued invoices. Rating reads the
usage charges it touched, re-rates them (with the price that billed them) and proposes
adjustment lines on the billed customer's next open billing date for the difference."""

from __future__ import annotations

from collections import defaultdict
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from billing_core.domain.charge import Charge as RatedCharge
from billing_core.domain.charge import ChargeRow
from billing_core.domain.model import Reference
from billing_core.domain.money import ZERO
from billing_core.domain.rating import repriced
from billing_core.domain.schedules import Calendar
from billing_core.steps.rate_usage import UsageWindows
from billing_core.store.models import BillingPeriod, Charge, Invoice, UsageTouch, charges_joined
from billing_core.store.reference import Scope
from billing_core.store.rows import delete_in


class LateUsage:
    """Usage that arrived for periods already on issued invoices: adjustment lines on the
    billed customer's next open billing date, for the difference re-rating gives."""

    def __init__(
        self, session: Session, ref: Reference, scope: Scope, through: date, now: datetime
    ):
        self.session, self.ref, self.scope, self.through, self.now = (
            session,
            ref,
            scope,
            through,
            now,
        )
        self.touch_ids: list[int] = []
        self.originals: list[dict] = []  # frozen usage charges to re-rate
        self.frozen_adjustments: dict[int, list[dict]] = defaultdict(list)
        self.pending_keys: set[str] = set()
        self.keep_touches = False
        ch = Charge.__table__.c
        v = Invoice.__table__.c
        self._frozen_usage = (
            sa.select(Charge.__table__)
            .select_from(charges_joined(outer=False))
            .where(v.status != "draft", ch.kind == "usage")
            .where(self.scope.where(ch.family_id))
        )

    def collect(self, windows: UsageWindows) -> None:
        """Read what late usage touched, and register the windows to re-rate."""
        touches = self._touches()
        ch = Charge.__table__.c
        v = Invoice.__table__.c
        pending = list(
            self.session.execute(
                sa.select(Charge.__table__)
                .select_from(charges_joined())
                .where(ch.kind == "adjustment", sa.or_(v.id.is_(None), v.status == "draft"))
                .where(self.scope.where(ch.family_id))
            ).mappings()
        )
        self.pending_keys = {p["charge_key"] for p in pending}
        self.originals = self._originals(touches, {p["adjusts_charge_id"] for p in pending})
        if self.originals:
            ids = [r["id"] for r in self.originals]
            for row in self.session.execute(
                sa.select(Charge.__table__)
                .select_from(charges_joined(outer=False))
                .where(v.status != "draft", ch.kind == "adjustment", ch.adjusts_charge_id.in_(ids))
            ).mappings():
                self.frozen_adjustments[row["adjusts_charge_id"]].append(dict(row))
        for r in self.originals:
            windows.add(
                r["serviced_customer_id"], r["metric_code"], r["window_start"], r["window_end"]
            )

    def _touches(self) -> list[Any]:
        """The usage touches that matter, the others cleared (see below)."""
        ch = Charge.__table__.c
        v = Invoice.__table__.c
        t = UsageTouch.__table__.c
        connection = self.session.connection()
        # A touch matters while it overlaps an issued window (its usage is late) or a draft
        # rated earlier and not re-rated now (a close that went further than this one): the
        # draft lacks that usage and could be issued as it is. Every issued window ends by
        # `horizon`; every such draft's window starts at or after `stale`. Touches between
        # the two are cleared at once, in one statement, before the usage is aggregated (so
        # every event behind them is in this rating's aggregates).
        horizon = connection.execute(
            self._frozen_usage.with_only_columns(sa.func.max(ch.window_end))
        ).scalar()
        stale = connection.execute(
            sa.select(sa.func.min(ch.window_start))
            .select_from(charges_joined())
            .where(sa.or_(v.id.is_(None), v.status == "draft"))
            .where(ch.kind == "usage", ch.billing_date > self.through)
            .where(self.scope.where(ch.family_id))
        ).scalar()
        in_scope = self.scope.where_customer(t.customer_id)
        clear = sa.delete(UsageTouch.__table__).where(in_scope)
        if horizon is not None:
            clear = clear.where(t.earliest >= horizon)
        if stale is not None:
            clear = clear.where(t.latest < stale)
        connection.execute(clear)
        touches = []
        if horizon is not None or stale is not None:
            touches = list(
                connection.execute(
                    sa.select(t.id, t.customer_id, t.metric_code, t.earliest, t.latest).where(
                        in_scope
                    )
                )
            )
        # The rest are cleared by id once rated, except those a stale draft still needs;
        # one that arrives meanwhile waits for the next close.
        self.touch_ids = [x.id for x in touches if stale is None or x.latest < stale]
        return touches

    def _originals(self, touches: list[Any], wanted_ids: set[int]) -> list[dict]:
        """The frozen usage charges to re-rate: those whose window a touch overlaps, those
        a pending adjustment corrects, and every member of a pool period among them."""
        ch = Charge.__table__.c
        frozen_usage = self._frozen_usage
        touched: set[tuple[str, str]] = set()
        spans: dict[tuple[str, str], list[tuple[datetime, datetime]]] = defaultdict(list)
        for x in touches:
            touched.add((x.customer_id, x.metric_code))
            spans[(x.customer_id, x.metric_code)].append((x.earliest, x.latest))
        candidates: list[dict] = []
        if touched or wanted_ids:
            customers = sorted({cu for cu, _ in touched})
            conditions = []
            if customers:
                earliest = min(lo for pairs in spans.values() for lo, _ in pairs)
                conditions.append(
                    sa.and_(ch.serviced_customer_id.in_(customers), ch.window_end > earliest)
                )
            if wanted_ids:
                conditions.append(ch.id.in_(sorted(wanted_ids)))
            for row in self.session.execute(frozen_usage.where(sa.or_(*conditions))).mappings():
                hit = row["id"] in wanted_ids or any(
                    lo < row["window_end"] and hi >= row["window_start"]
                    for lo, hi in spans.get((row["serviced_customer_id"], row["metric_code"]), ())
                )
                if hit:
                    candidates.append(dict(row))
        # A pool is re-rated whole: bring in every member of a touched pool period.
        pool_keys = {
            (r["subscription_id"], r["price_code"], r["period_start"])
            for r in candidates
            if r["pool"]
        }
        if pool_keys:
            subs = sorted({k[0] for k in pool_keys})
            for row in self.session.execute(
                frozen_usage.where(ch.subscription_id.in_(subs), ch.pool.is_not(None))
            ).mappings():
                key = (row["subscription_id"], row["price_code"], row["period_start"])
                if key in pool_keys and all(row["id"] != r["id"] for r in candidates):
                    candidates.append(dict(row))
        return sorted(candidates, key=lambda r: r["charge_key"])

    def _billed(self, original: dict) -> tuple[Decimal, Decimal]:
        """Quantity and amount billed so far for an original charge (with its adjustments)."""
        extra = self.frozen_adjustments.get(original["id"], [])
        return (
            original["quantity"] + sum((a["quantity"] for a in extra), ZERO),
            original["amount"] + sum((a["amount"] for a in extra), ZERO),
        )

    def adjustments(self, windows: UsageWindows) -> list[ChargeRow]:
        """An adjustment for every re-rated charge whose quantity or amount changed."""

        def quantity_of(r: dict) -> Decimal:
            return windows.quantity(
                r["serviced_customer_id"], r["metric_code"], r["window_start"], r["window_end"]
            )

        out: list[ChargeRow] = []
        targets = repriced(self.originals, quantity_of)
        placements = self._placements({r["billed_customer_id"] for r, _, _ in targets})
        for original, quantity, amount in targets:
            billed_quantity, billed_amount = self._billed(original)
            if quantity == billed_quantity and amount == billed_amount:
                continue
            billing_date = placements[original["billed_customer_id"]].place(
                original["billing_date"]
            )
            if billing_date is None:
                self.keep_touches = True
                continue
            number = len(self.frozen_adjustments.get(original["id"], [])) + 1
            out.append(
                RatedCharge.adjustment(
                    original,
                    number,
                    billing_date,
                    quantity - billed_quantity,
                    amount - billed_amount,
                    self.now,
                )
            )
        return out

    def _placements(self, billed: set[str]) -> dict[str, Calendar]:
        """Calendars for adjustments: the customer's billing day, else the billing dates
        its slots land on; dates with a frozen invoice are skipped."""
        out: dict[str, Calendar] = {}
        if not billed:
            return out
        bp = BillingPeriod.__table__.c
        v = Invoice.__table__.c
        dates: dict[str, set[date]] = defaultdict(set)
        for customer, day in self.session.execute(
            sa.select(bp.billed_customer_id, bp.billing_date)
            .distinct()
            .where(bp.billed_customer_id.in_(sorted(billed)), bp.billing_date.is_not(None))
        ):
            dates[customer].add(day)
        taken: dict[str, set[date]] = defaultdict(set)
        for customer, day in self.session.execute(
            sa.select(v.billed_customer_id, v.billing_date).where(
                v.billed_customer_id.in_(sorted(billed)), v.status != "draft"
            )
        ):
            taken[customer].add(day)
        for customer in billed:
            info = self.ref.customers.get(customer)
            out[customer] = Calendar(
                info.billing_day if info else None, (), dates[customer], taken[customer]
            )
        return out

    def clear_touches(self) -> None:
        if not self.keep_touches:
            delete_in(self.session, UsageTouch.__table__.c.id, self.touch_ids)
