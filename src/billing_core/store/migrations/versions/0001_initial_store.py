"""initial store

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op

from billing_core.store.types import DecimalType, UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "billing_periods",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("slot_key", sa.String(length=512), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("subscription_id", sa.String(length=128), nullable=False),
        sa.Column("price_code", sa.String(length=128), nullable=True),
        sa.Column("timing", sa.String(length=16), nullable=True),
        sa.Column("serviced_customer_id", sa.String(length=128), nullable=False),
        sa.Column("billed_customer_id", sa.String(length=128), nullable=False),
        sa.Column("family_id", sa.String(length=128), nullable=False),
        sa.Column("pool", sa.String(length=16), nullable=True),
        sa.Column("pool_owner_id", sa.String(length=128), nullable=True),
        sa.Column("period_start", sa.Date(), nullable=False),
        sa.Column("period_end", sa.Date(), nullable=False),
        sa.Column("full_start", sa.Date(), nullable=False),
        sa.Column("full_end", sa.Date(), nullable=False),
        sa.Column("due_date", sa.Date(), nullable=False),
        sa.Column("billing_date", sa.Date(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("slot_key"),
    )
    with op.batch_alter_table("billing_periods", schema=None) as batch_op:
        batch_op.create_index(
            "ix_billing_periods_billing", ["billing_date", "billed_customer_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_billing_periods_family_id"), ["family_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_billing_periods_subscription_id"), ["subscription_id"], unique=False
        )

    op.create_table(
        "close_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("through", sa.Date(), nullable=False),
        sa.Column("issue", sa.Boolean(), nullable=False),
        sa.Column("flow_run_id", sa.String(length=64), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("started_at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("finished_at", UTCDateTime(timezone=True), nullable=True),
        sa.Column("steps", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "customers",
        sa.Column("id", sa.String(length=128), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("timezone", sa.String(length=64), nullable=False),
        sa.Column("jurisdiction", sa.String(length=64), nullable=True),
        sa.Column("parent_id", sa.String(length=128), nullable=True),
        sa.Column("bill_to", sa.String(length=8), nullable=False),
        sa.Column("billing_day", sa.Integer(), nullable=True),
        sa.Column("tax_basis", sa.String(length=16), nullable=False),
        sa.Column("rollup_lines", sa.String(length=16), nullable=False),
        sa.Column("family_id", sa.String(length=128), nullable=False),
        sa.ForeignKeyConstraint(
            ["parent_id"],
            ["customers.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("customers", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_customers_family_id"), ["family_id"], unique=False)

    op.create_table(
        "invoice_sequences",
        sa.Column("issuer_id", sa.String(length=64), nullable=False),
        sa.Column("year", sa.Integer(), nullable=False),
        sa.Column("last_number", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("issuer_id", "year"),
    )
    op.create_table(
        "invoices",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("issuer_id", sa.String(length=64), nullable=False),
        sa.Column("number", sa.String(length=64), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("billed_customer_id", sa.String(length=128), nullable=False),
        sa.Column("family_id", sa.String(length=128), nullable=False),
        sa.Column("billing_date", sa.Date(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("subtotal", DecimalType(), nullable=False),
        sa.Column("discount_total", DecimalType(), nullable=False),
        sa.Column("tax_total", DecimalType(), nullable=False),
        sa.Column("credit_total", DecimalType(), nullable=False),
        sa.Column("total", DecimalType(), nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("issued_at", UTCDateTime(timezone=True), nullable=True),
        sa.Column("paid_at", UTCDateTime(timezone=True), nullable=True),
        sa.Column("voided_at", UTCDateTime(timezone=True), nullable=True),
        sa.Column("canceled_at", UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("billed_customer_id", "billing_date"),
        sa.UniqueConstraint("number"),
    )
    with op.batch_alter_table("invoices", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_invoices_billing_date"), ["billing_date"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_invoices_family_id"), ["family_id"], unique=False)

    op.create_table(
        "issuers",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("invoice_prefix", sa.String(length=32), nullable=False),
        sa.Column("address", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "metrics",
        sa.Column("code", sa.String(length=128), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("aggregation", sa.String(length=16), nullable=False),
        sa.Column("field", sa.String(length=128), nullable=True),
        sa.PrimaryKeyConstraint("code"),
    )
    op.create_table(
        "store_locks",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("holder", sa.String(length=256), nullable=False),
        sa.Column("acquired_at", UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "tax_rates",
        sa.Column("jurisdiction", sa.String(length=64), nullable=False),
        sa.Column("rate", DecimalType(), nullable=False),
        sa.PrimaryKeyConstraint("jurisdiction"),
    )
    op.create_table(
        "usage_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("event_id", sa.String(length=256), nullable=False),
        sa.Column("customer_id", sa.String(length=128), nullable=False),
        sa.Column("metric_code", sa.String(length=128), nullable=False),
        sa.Column("timestamp", UTCDateTime(timezone=True), nullable=False),
        sa.Column("quantity", DecimalType(), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.Column("dimension", sa.String(), nullable=True),
        sa.Column("properties", sa.JSON(), nullable=True),
        sa.Column("source", sa.String(length=256), nullable=True),
        sa.Column("ingested_at", UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("event_id"),
    )
    with op.batch_alter_table("usage_events", schema=None) as batch_op:
        batch_op.create_index(
            "ix_usage_events_window", ["customer_id", "metric_code", "timestamp"], unique=False
        )

    op.create_table(
        "usage_loads",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(length=128), nullable=False),
        sa.Column("key", sa.String(length=512), nullable=False),
        sa.Column("close_run_id", sa.Integer(), nullable=True),
        sa.Column("events_read", sa.Integer(), nullable=False),
        sa.Column("events_loaded", sa.Integer(), nullable=False),
        sa.Column("duplicates", sa.Integer(), nullable=False),
        sa.Column("rejected", sa.Integer(), nullable=False),
        sa.Column("loaded_at", UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "usage_sources",
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("watermark", sa.String(), nullable=True),
        sa.Column("updated_at", UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "usage_touches",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("customer_id", sa.String(length=128), nullable=False),
        sa.Column("metric_code", sa.String(length=128), nullable=False),
        sa.Column("earliest", UTCDateTime(timezone=True), nullable=False),
        sa.Column("latest", UTCDateTime(timezone=True), nullable=False),
        sa.Column("created_at", UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("usage_touches", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_usage_touches_customer_id"), ["customer_id"], unique=False
        )

    op.create_table(
        "charges",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("charge_key", sa.String(length=600), nullable=False),
        sa.Column("billing_period_id", sa.BigInteger(), nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("subscription_id", sa.String(length=128), nullable=False),
        sa.Column("price_code", sa.String(length=128), nullable=True),
        sa.Column("product", sa.String(), nullable=False),
        sa.Column("bundle", sa.String(), nullable=True),
        sa.Column("metric_code", sa.String(length=128), nullable=True),
        sa.Column("serviced_customer_id", sa.String(length=128), nullable=False),
        sa.Column("billed_customer_id", sa.String(length=128), nullable=False),
        sa.Column("family_id", sa.String(length=128), nullable=False),
        sa.Column("pool", sa.String(length=16), nullable=True),
        sa.Column("pool_owner_id", sa.String(length=128), nullable=True),
        sa.Column("period_start", sa.Date(), nullable=False),
        sa.Column("period_end", sa.Date(), nullable=False),
        sa.Column("full_start", sa.Date(), nullable=False),
        sa.Column("full_end", sa.Date(), nullable=False),
        sa.Column("due_date", sa.Date(), nullable=False),
        sa.Column("billing_date", sa.Date(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("quantity", DecimalType(), nullable=False),
        sa.Column("unit_price", DecimalType(), nullable=True),
        sa.Column("amount", DecimalType(), nullable=False),
        sa.Column("description", sa.String(), nullable=True),
        sa.Column("pricing", sa.JSON(), nullable=True),
        sa.Column("adjusts_charge_id", sa.BigInteger(), nullable=True),
        sa.Column("window_start", UTCDateTime(timezone=True), nullable=True),
        sa.Column("window_end", UTCDateTime(timezone=True), nullable=True),
        sa.Column("rated_at", UTCDateTime(timezone=True), nullable=False),
        sa.Column(
            "invoice_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.ForeignKeyConstraint(["invoice_id"], ["invoices.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("charge_key"),
    )
    with op.batch_alter_table("charges", schema=None) as batch_op:
        batch_op.create_index(
            "ix_charges_billing", ["billing_date", "billed_customer_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_charges_family_id"), ["family_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_charges_invoice_id"), ["invoice_id"], unique=False)

    op.create_table(
        "credit_grants",
        sa.Column("id", sa.String(length=128), nullable=False),
        sa.Column("customer_id", sa.String(length=128), nullable=False),
        sa.Column("subscription_id", sa.String(length=128), nullable=True),
        sa.Column("amount", DecimalType(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("effective", sa.Date(), nullable=False),
        sa.Column("expires", sa.Date(), nullable=True),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["customer_id"],
            ["customers.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("credit_grants", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_credit_grants_customer_id"), ["customer_id"], unique=False
        )

    op.create_table(
        "invoice_documents",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column(
            "invoice_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("format", sa.String(length=8), nullable=False),
        sa.Column("path", sa.String(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("source_hash", sa.String(length=64), nullable=False),
        sa.Column("final", sa.Boolean(), nullable=False),
        sa.Column("created_at", UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["invoice_id"], ["invoices.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("invoice_id", "format"),
    )
    op.create_table(
        "invoice_lines",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "invoice_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("serviced_customer_id", sa.String(length=128), nullable=False),
        sa.Column("subscription_id", sa.String(length=128), nullable=True),
        sa.Column("price_code", sa.String(length=128), nullable=True),
        sa.Column("product", sa.String(), nullable=True),
        sa.Column("bundle", sa.String(), nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("description", sa.String(), nullable=True),
        sa.Column("period_start", sa.Date(), nullable=True),
        sa.Column("period_end", sa.Date(), nullable=True),
        sa.Column("quantity", DecimalType(), nullable=True),
        sa.Column("unit_price", DecimalType(), nullable=True),
        sa.Column("amount", DecimalType(), nullable=False),
        sa.Column("charge_id", sa.BigInteger(), nullable=True),
        sa.Column("grant_id", sa.String(length=128), nullable=True),
        sa.Column("tax_rate", DecimalType(), nullable=True),
        sa.Column("jurisdiction", sa.String(length=64), nullable=True),
        sa.Column("taxed_position", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["invoice_id"], ["invoices.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("invoice_lines", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_invoice_lines_invoice_id"), ["invoice_id"], unique=False
        )

    op.create_table(
        "prices",
        sa.Column("code", sa.String(length=128), nullable=False),
        sa.Column("product", sa.String(), nullable=False),
        sa.Column("bundle", sa.String(), nullable=True),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("model", sa.String(length=16), nullable=False),
        sa.Column("metric_code", sa.String(length=128), nullable=True),
        sa.Column("amount", DecimalType(), nullable=True),
        sa.Column("unit_price", DecimalType(), nullable=True),
        sa.Column("package_size", sa.Integer(), nullable=True),
        sa.Column("package_price", DecimalType(), nullable=True),
        sa.Column("tiers", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(
            ["metric_code"],
            ["metrics.code"],
        ),
        sa.PrimaryKeyConstraint("code"),
    )
    op.create_table(
        "subscriptions",
        sa.Column("id", sa.String(length=128), nullable=False),
        sa.Column("customer_id", sa.String(length=128), nullable=False),
        sa.Column("start", sa.Date(), nullable=False),
        sa.Column("end", sa.Date(), nullable=True),
        sa.Column("cadence", sa.String(length=16), nullable=False),
        sa.Column("billing_day", sa.Integer(), nullable=False),
        sa.Column("rollup", sa.Boolean(), nullable=True),
        sa.Column("align_to_parent", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("minimum", DecimalType(), nullable=True),
        sa.Column("discounts", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(
            ["customer_id"],
            ["customers.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("subscriptions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_subscriptions_customer_id"), ["customer_id"], unique=False
        )

    op.create_table(
        "credit_ledger",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("grant_id", sa.String(length=128), nullable=False),
        sa.Column("amount", DecimalType(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column(
            "invoice_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column("billing_date", sa.Date(), nullable=False),
        sa.Column("note", sa.String(), nullable=True),
        sa.Column("created_at", UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["grant_id"],
            ["credit_grants.id"],
        ),
        sa.ForeignKeyConstraint(["invoice_id"], ["invoices.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("credit_ledger", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_credit_ledger_grant_id"), ["grant_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_credit_ledger_invoice_id"), ["invoice_id"], unique=False
        )

    op.create_table(
        "subscription_items",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("subscription_id", sa.String(length=128), nullable=False),
        sa.Column("phase", sa.Integer(), nullable=False),
        sa.Column("phase_start", sa.Date(), nullable=False),
        sa.Column("price_code", sa.String(length=128), nullable=False),
        sa.Column("timing", sa.String(length=16), nullable=False),
        sa.Column("pool", sa.String(length=16), nullable=True),
        sa.ForeignKeyConstraint(
            ["price_code"],
            ["prices.code"],
        ),
        sa.ForeignKeyConstraint(["subscription_id"], ["subscriptions.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("subscription_id", "phase", "price_code"),
    )


def downgrade() -> None:
    op.drop_table("subscription_items")
    with op.batch_alter_table("credit_ledger", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_credit_ledger_invoice_id"))
        batch_op.drop_index(batch_op.f("ix_credit_ledger_grant_id"))

    op.drop_table("credit_ledger")
    with op.batch_alter_table("subscriptions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_subscriptions_customer_id"))

    op.drop_table("subscriptions")
    op.drop_table("prices")
    with op.batch_alter_table("invoice_lines", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_invoice_lines_invoice_id"))

    op.drop_table("invoice_lines")
    op.drop_table("invoice_documents")
    with op.batch_alter_table("credit_grants", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_credit_grants_customer_id"))

    op.drop_table("credit_grants")
    with op.batch_alter_table("charges", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_charges_invoice_id"))
        batch_op.drop_index(batch_op.f("ix_charges_family_id"))
        batch_op.drop_index("ix_charges_billing")

    op.drop_table("charges")
    with op.batch_alter_table("usage_touches", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_usage_touches_customer_id"))

    op.drop_table("usage_touches")
    op.drop_table("usage_sources")
    op.drop_table("usage_loads")
    with op.batch_alter_table("usage_events", schema=None) as batch_op:
        batch_op.drop_index("ix_usage_events_window")

    op.drop_table("usage_events")
    op.drop_table("tax_rates")
    op.drop_table("store_locks")
    op.drop_table("metrics")
    op.drop_table("issuers")
    with op.batch_alter_table("invoices", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_invoices_family_id"))
        batch_op.drop_index(batch_op.f("ix_invoices_billing_date"))

    op.drop_table("invoices")
    op.drop_table("invoice_sequences")
    with op.batch_alter_table("customers", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_customers_family_id"))

    op.drop_table("customers")
    op.drop_table("close_runs")
    with op.batch_alter_table("billing_periods", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_billing_periods_subscription_id"))
        batch_op.drop_index(batch_op.f("ix_billing_periods_family_id"))
        batch_op.drop_index("ix_billing_periods_billing")

    op.drop_table("billing_periods")
