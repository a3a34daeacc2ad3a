"""The store: SQLModel tables and the unique keys that make every step idempotent.

Every table in one module (about 420 lines): the schema reads as one page, as the
migrations that make it do.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from billing_core.store.types import DecimalType, UTCDateTime

# Primary keys of high-volume tables: BIGINT on PostgreSQL, the rowid on SQLite.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _json(nullable: bool = True) -> Any:
    return Field(default=None, sa_type=sa.JSON, nullable=nullable)


def _money(nullable: bool = False, default: Decimal | None = None) -> Any:
    return Field(default=default, sa_type=DecimalType, nullable=nullable)


# --- catalog -------------------------------------------------------------------------


class Issuer(SQLModel, table=True):
    __tablename__ = "issuers"
    id: str = Field(primary_key=True, max_length=64)
    name: str
    invoice_prefix: str = Field(max_length=32)
    address: list[str] | None = _json()
    tax_id: str | None = Field(default=None, max_length=64)
    email: str | None = Field(default=None, max_length=320)
    timezone: str | None = Field(default=None, max_length=64)
    locale: str | None = Field(default=None, max_length=32)
    payment_terms_days: int | None = None
    payment_instructions: list[str] | None = _json()


class TaxRate(SQLModel, table=True):
    __tablename__ = "tax_rates"
    jurisdiction: str = Field(primary_key=True, max_length=64)
    rate: Decimal = _money()
    name: str | None = Field(default=None, max_length=64)  # e.g. VAT
    note: str | None = None  # e.g. a reverse-charge sentence


class Customer(SQLModel, table=True):
    __tablename__ = "customers"
    id: str = Field(primary_key=True, max_length=128)
    name: str
    currency: str = Field(max_length=3)
    timezone: str = Field(default="UTC", max_length=64)
    jurisdiction: str | None = Field(default=None, max_length=64)
    parent_id: str | None = Field(default=None, foreign_key="customers.id", max_length=128)
    bill_to: str = Field(default="self", max_length=8)
    billing_day: int | None = None
    tax_basis: str = Field(default="billed", max_length=16)
    rollup_lines: str = Field(default="breakdown", max_length=16)
    # The root of the customer's tree: shards never split a family.
    family_id: str = Field(index=True, max_length=128)
    # Who the invoice is to (SPEC §7.1), frozen with an issued invoice.
    address: list[str] | None = _json()
    tax_id: str | None = Field(default=None, max_length=64)
    email: str | None = Field(default=None, max_length=320)
    locale: str | None = Field(default=None, max_length=32)
    payment_terms_days: int | None = None


class Metric(SQLModel, table=True):
    __tablename__ = "metrics"
    code: str = Field(primary_key=True, max_length=128)
    name: str
    aggregation: str = Field(max_length=16)
    field: str | None = Field(default=None, max_length=128)


class Price(SQLModel, table=True):
    __tablename__ = "prices"
    code: str = Field(primary_key=True, max_length=128)
    product: str
    bundle: str | None = None
    currency: str = Field(max_length=3)
    model: str = Field(max_length=16)
    metric_code: str | None = Field(default=None, foreign_key="metrics.code", max_length=128)
    # The model's terms as one JSON value, each decimal as its exact string; what they
    # hold is the model's (billing_core.domain.pricing).
    terms: dict = Field(default_factory=dict, sa_type=sa.JSON, nullable=False)


class Subscription(SQLModel, table=True):
    __tablename__ = "subscriptions"
    id: str = Field(primary_key=True, max_length=128)
    customer_id: str = Field(foreign_key="customers.id", index=True, max_length=128)
    start: date
    end: date | None = None
    cadence: str = Field(max_length=16)
    billing_day: int
    rollup: bool | None = None
    align_to_parent: bool = False
    status: str = Field(default="active", max_length=16)
    minimum: Decimal | None = _money(nullable=True)
    discounts: list[dict] | None = _json()


class SubscriptionItem(SQLModel, table=True):
    __tablename__ = "subscription_items"
    __table_args__ = (sa.UniqueConstraint("subscription_id", "phase", "price_code"),)
    id: int | None = Field(default=None, primary_key=True)
    subscription_id: str = Field(
        sa_column=sa.Column(
            sa.String(128), sa.ForeignKey("subscriptions.id", ondelete="CASCADE"), nullable=False
        )
    )
    # 0 for the subscription's own items; 1, 2, ... for its phases in date order.
    phase: int = 0
    phase_start: date
    price_code: str = Field(foreign_key="prices.code", max_length=128)
    timing: str = Field(max_length=16)
    pool: str | None = Field(default=None, max_length=16)


class CreditGrant(SQLModel, table=True):
    __tablename__ = "credit_grants"
    id: str = Field(primary_key=True, max_length=128)
    customer_id: str = Field(foreign_key="customers.id", index=True, max_length=128)
    subscription_id: str | None = Field(default=None, max_length=128)
    amount: Decimal = _money()
    currency: str = Field(max_length=3)
    effective: date
    expires: date | None = None
    priority: int = 100
    name: str | None = None


# --- usage ---------------------------------------------------------------------------


class UsageEvent(SQLModel, table=True):
    __tablename__ = "usage_events"
    # SQLite finds a window's events by this index; PostgreSQL hash-joins a period's
    # events (BRIN on timestamp, see migration 0003) and has no such b-tree.
    __table_args__ = (
        sa.Index("ix_usage_events_window", "customer_id", "metric_code", "timestamp"),
    )
    event_id: str = Field(primary_key=True, max_length=256)
    # No foreign keys here: ingestion validates customers and metrics itself, and a
    # per-row foreign-key check would cost more than the whole COPY.
    customer_id: str = Field(max_length=128)
    metric_code: str = Field(max_length=128)
    timestamp: datetime = Field(sa_type=UTCDateTime)
    quantity: Decimal = _money()
    # The metric's measured value scaled by 10^6 (exact integer sums on both stores)...
    value: int = Field(sa_type=sa.BigInteger)
    # ...or, for unique_count metrics, the property value counted.
    dimension: str | None = None
    properties: dict | None = _json()
    source: str | None = Field(default=None, max_length=256)
    ingested_at: datetime = Field(sa_type=UTCDateTime)


class UsageBucket(SQLModel, table=True):
    """A customer and metric's usage of one UTC day, kept by ingestion from the events it
    actually wrote (an event id already stored adds nothing): what every aggregation needs
    to combine days without reading their events. Rating reads the days a window covers
    whole from here and only its cut days' events (`store.usage_totals`)."""

    __tablename__ = "usage_buckets"
    # PostgreSQL: BRIN, as for the events (days arrive in about their order); SQLite: b-tree.
    __table_args__ = (sa.Index("ix_usage_buckets_day", "day", postgresql_using="brin"),)
    customer_id: str = Field(primary_key=True, max_length=128)
    metric_code: str = Field(primary_key=True, max_length=128)
    day: datetime = Field(primary_key=True, sa_type=UTCDateTime)  # 00:00 UTC
    events: int = Field(sa_type=sa.BigInteger)
    # The sum of the events' values (millionths) as its high and low 32 bits summed
    # apart: (high << 32) + low, exact on both stores without overflow.
    total_high: int = Field(sa_type=sa.BigInteger)
    total_low: int = Field(sa_type=sa.BigInteger)
    max_value: int = Field(sa_type=sa.BigInteger)
    # The day's last event by timestamp, equal timestamps going to the greater event id:
    # only for metrics whose aggregation reads it (`latest`), NULL for the others.
    latest_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    latest_event_id: str | None = Field(default=None, max_length=256)
    latest_value: int | None = Field(default=None, sa_type=sa.BigInteger)


class UsageBucketValue(SQLModel, table=True):
    """A value a customer's events of a `unique_count` metric carried on one UTC day."""

    __tablename__ = "usage_bucket_values"
    customer_id: str = Field(primary_key=True, max_length=128)
    metric_code: str = Field(primary_key=True, max_length=128)
    day: datetime = Field(primary_key=True, sa_type=UTCDateTime)
    dimension: str = Field(primary_key=True)


class UsageTouch(SQLModel, table=True):
    """Usage arrived for a customer and metric between two instants: the rating step checks
    issued periods it overlaps for late usage, then clears the touch."""

    __tablename__ = "usage_touches"
    id: int | None = Field(default=None, sa_column=sa.Column(BigId, primary_key=True))
    customer_id: str = Field(index=True, max_length=128)
    metric_code: str = Field(max_length=128)
    earliest: datetime = Field(sa_type=UTCDateTime)
    latest: datetime = Field(sa_type=UTCDateTime)
    created_at: datetime = Field(sa_type=UTCDateTime)


class UsageSource(SQLModel, table=True):
    """State of a configured usage source (the SQL source's watermark)."""

    __tablename__ = "usage_sources"
    name: str = Field(primary_key=True, max_length=128)
    kind: str = Field(max_length=16)
    watermark: str | None = None
    updated_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class UsageLoad(SQLModel, table=True):
    """What one load brought in: one row per file of a load (its own counts), per inbox
    file's arrival, per SQL batch."""

    __tablename__ = "usage_loads"
    id: int | None = Field(default=None, primary_key=True)
    source: str = Field(max_length=128)
    key: str = Field(max_length=512)
    close_run_id: int | None = None
    events_read: int = 0
    events_loaded: int = 0
    duplicates: int = 0
    rejected: int = 0
    loaded_at: datetime = Field(sa_type=UTCDateTime)
    # An inbox file's name in the inbox's archive/ folder: `<id>-<sha256 prefix>-<name>`.
    archived_as: str | None = Field(default=None, max_length=512)


# --- schedules, charges, invoices ------------------------------------------------------


class BillingPeriod(SQLModel, table=True):
    """One slot to bill: a subscription item (or its minimum) for one service period and
    serviced customer, with its due date and the billing date it lands on."""

    __tablename__ = "billing_periods"
    __table_args__ = (sa.Index("ix_billing_periods_billing", "billing_date", "billed_customer_id"),)
    id: int | None = Field(default=None, sa_column=sa.Column(BigId, primary_key=True))
    slot_key: str = Field(unique=True, max_length=512)
    kind: str = Field(max_length=16)  # item | minimum
    subscription_id: str = Field(index=True, max_length=128)
    price_code: str | None = Field(default=None, max_length=128)
    timing: str | None = Field(default=None, max_length=16)
    serviced_customer_id: str = Field(max_length=128)
    billed_customer_id: str = Field(max_length=128)
    family_id: str = Field(index=True, max_length=128)
    pool: str | None = Field(default=None, max_length=16)
    pool_owner_id: str | None = Field(default=None, max_length=128)
    period_start: date
    period_end: date  # exclusive
    full_start: date  # the whole cadence period, for proration
    full_end: date
    due_date: date
    billing_date: date | None = None


class Charge(SQLModel, table=True):
    """One rated amount for one serviced customer, item and service period."""

    __tablename__ = "charges"
    __table_args__ = (sa.Index("ix_charges_billing", "billing_date", "billed_customer_id"),)
    id: int | None = Field(default=None, sa_column=sa.Column(BigId, primary_key=True))
    charge_key: str = Field(unique=True, max_length=600)
    billing_period_id: int | None = Field(default=None, sa_type=sa.BigInteger)
    kind: str = Field(max_length=16)  # fixed | usage | minimum | discount | adjustment
    subscription_id: str = Field(max_length=128)
    price_code: str | None = Field(default=None, max_length=128)
    product: str
    bundle: str | None = None
    metric_code: str | None = Field(default=None, max_length=128)
    serviced_customer_id: str = Field(max_length=128)
    billed_customer_id: str = Field(max_length=128)
    family_id: str = Field(index=True, max_length=128)
    pool: str | None = Field(default=None, max_length=16)
    pool_owner_id: str | None = Field(default=None, max_length=128)
    period_start: date
    period_end: date  # exclusive
    full_start: date  # the whole cadence period (discounts and minimums group by it)
    full_end: date
    due_date: date
    billing_date: date
    currency: str = Field(max_length=3)
    quantity: Decimal = _money()
    unit_price: Decimal | None = _money(nullable=True)
    amount: Decimal = _money()
    description: str | None = None
    # The price as rated, so late usage is re-rated with the price that billed it.
    pricing: dict | None = _json()
    adjusts_charge_id: int | None = Field(default=None, sa_type=sa.BigInteger)
    # The UTC instants whose usage a usage charge rated.
    window_start: datetime | None = Field(default=None, sa_type=UTCDateTime)
    window_end: datetime | None = Field(default=None, sa_type=UTCDateTime)
    rated_at: datetime = Field(sa_type=UTCDateTime)


class InvoiceCharge(SQLModel, table=True):
    """The draft or invoice a charge is on, written by the roll-up. A charge without a row
    is not consolidated yet (or waits for a later billing date). Kept apart from `charges`
    so that consolidating writes two narrow columns per charge instead of rewriting the
    charge's row and every index on it.

    Its references (and `invoice_lines.invoice_id`) are constraints on SQLite; on
    PostgreSQL, triggers that check and lock them once per statement (migration 0006)."""

    __tablename__ = "invoice_charges"
    charge_id: int = Field(
        sa_column=sa.Column(
            BigId,
            sa.ForeignKey("charges.id", ondelete="CASCADE"),
            primary_key=True,
            autoincrement=False,
        )
    )
    invoice_id: int = Field(
        sa_column=sa.Column(
            BigId, sa.ForeignKey("invoices.id", ondelete="CASCADE"), index=True, nullable=False
        )
    )


def charges_joined(outer: bool = True) -> sa.Join:
    """`charges` joined to the invoice each is on, through `invoice_charges`: outer joins
    keep the charges on no invoice (their `Invoice` columns are NULL), inner joins keep only
    the charges on one."""
    ch, link, v = Charge.__table__, InvoiceCharge.__table__, Invoice.__table__
    return ch.join(link, link.c.charge_id == ch.c.id, isouter=outer).join(
        v, v.c.id == link.c.invoice_id, isouter=outer
    )


class Invoice(SQLModel, table=True):
    __tablename__ = "invoices"
    __table_args__ = (sa.UniqueConstraint("billed_customer_id", "billing_date"),)
    id: int | None = Field(default=None, sa_column=sa.Column(BigId, primary_key=True))
    issuer_id: str = Field(max_length=64)
    number: str | None = Field(default=None, unique=True, max_length=64)
    status: str = Field(default="draft", max_length=16)
    billed_customer_id: str = Field(max_length=128)
    family_id: str = Field(index=True, max_length=128)
    billing_date: date = Field(index=True)
    currency: str = Field(max_length=3)
    subtotal: Decimal = _money()
    discount_total: Decimal = _money()
    tax_total: Decimal = _money()
    credit_total: Decimal = _money()
    total: Decimal = _money()
    # Fingerprint of the lines before credits: a re-close that computes the same lines
    # leaves the draft (and its credit consumption) alone.
    content_hash: str = Field(max_length=64)
    created_at: datetime = Field(sa_type=UTCDateTime)
    issued_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    paid_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    voided_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    canceled_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # Who it is from and to, as its documents show them, taken when it is issued and
    # frozen with it (billing_core.invoices.identity); NULL on a draft.
    identity: dict | None = _json()


class InvoiceLine(SQLModel, table=True):
    __tablename__ = "invoice_lines"
    id: int | None = Field(default=None, sa_column=sa.Column(BigId, primary_key=True))
    invoice_id: int = Field(
        sa_column=sa.Column(
            BigId, sa.ForeignKey("invoices.id", ondelete="CASCADE"), index=True, nullable=False
        )
    )
    position: int
    # The customer whose section the line sits in (for credits, the grant's holder).
    serviced_customer_id: str = Field(max_length=128)
    subscription_id: str | None = Field(default=None, max_length=128)
    price_code: str | None = Field(default=None, max_length=128)
    product: str | None = None
    bundle: str | None = None
    kind: str = Field(max_length=16)
    description: str | None = None
    period_start: date | None = None
    period_end: date | None = None  # exclusive
    quantity: Decimal | None = _money(nullable=True)
    unit_price: Decimal | None = _money(nullable=True)
    amount: Decimal = _money()
    charge_id: int | None = Field(default=None, sa_type=sa.BigInteger)
    grant_id: str | None = Field(default=None, max_length=128)
    tax_rate: Decimal | None = _money(nullable=True)
    jurisdiction: str | None = Field(default=None, max_length=64)
    # For a tax line, the position of the line it taxes.
    taxed_position: int | None = None


class InvoiceDocument(SQLModel, table=True):
    __tablename__ = "invoice_documents"
    __table_args__ = (sa.UniqueConstraint("invoice_id", "format"),)
    id: int | None = Field(default=None, primary_key=True)
    invoice_id: int = Field(
        sa_column=sa.Column(BigId, sa.ForeignKey("invoices.id", ondelete="CASCADE"), nullable=False)
    )
    format: str = Field(max_length=8)
    path: str
    sha256: str = Field(max_length=64)
    # Fingerprint of what was rendered: a draft is rendered again only when it changes.
    source_hash: str = Field(max_length=64)
    final: bool = False
    created_at: datetime = Field(sa_type=UTCDateTime)


class InvoiceSequence(SQLModel, table=True):
    """The last number given per issuer and billing-date year (gapless numbering)."""

    __tablename__ = "invoice_sequences"
    issuer_id: str = Field(primary_key=True, max_length=64)
    year: int = Field(primary_key=True)
    last_number: int = 0


class CreditLedgerEntry(SQLModel, table=True):
    __tablename__ = "credit_ledger"
    id: int | None = Field(default=None, sa_column=sa.Column(BigId, primary_key=True))
    grant_id: str = Field(foreign_key="credit_grants.id", index=True, max_length=128)
    # Consumption is negative, a rollback positive; a discarded draft's entries keep
    # their history with the invoice link cleared.
    amount: Decimal = _money()
    kind: str = Field(max_length=16)  # consumption | rollback
    invoice_id: int | None = Field(
        default=None,
        sa_column=sa.Column(
            BigId, sa.ForeignKey("invoices.id", ondelete="SET NULL"), index=True, nullable=True
        ),
    )
    billing_date: date
    note: str | None = None
    created_at: datetime = Field(sa_type=UTCDateTime)


class CloseRun(SQLModel, table=True):
    """One period close: what it was asked, what each step did."""

    __tablename__ = "close_runs"
    id: int | None = Field(default=None, primary_key=True)
    through: date
    issue: bool = False
    flow_run_id: str | None = Field(default=None, max_length=64)
    status: str = Field(default="running", max_length=16)
    started_at: datetime = Field(sa_type=UTCDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    steps: dict | None = _json()
    # Families the close could not finish: family id -> {"step": ..., "reason": ...}.
    failures: dict | None = _json()


class StoreLock(SQLModel, table=True):
    """A named lock held in the store (the SQLite stand-in for an advisory lock)."""

    __tablename__ = "store_locks"
    name: str = Field(primary_key=True, max_length=64)
    # Who holds it (JSON): name, host, pid, since, and the fencing token its commits check.
    holder: str = Field(max_length=1024)
    acquired_at: datetime = Field(sa_type=UTCDateTime)
