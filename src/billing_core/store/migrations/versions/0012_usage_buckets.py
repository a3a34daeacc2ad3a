"""Usage aggregated at ingestion, per customer, metric and UTC day

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07

`usage_buckets` holds, per customer, metric and UTC day, the events' count, the sum of
their values (its high and low 32 bits summed apart), their maximum, and the latest event
with its tie-break key; `usage_bucket_values` the distinct values of `unique_count`
metrics per day. Ingestion keeps both in its own transaction from the events it writes;
rating reads whole days from them and only the cut days' events
(`store.usage_buckets`, `store.usage_totals`). The upgrade fills them from the events
already stored.

The latest event's columns are nullable (0013): the fill keeps it only for metrics whose
aggregation reads it.
"""

import sqlalchemy as sa
from alembic import op

from billing_core.store.types import UTCDateTime
from billing_core.store.usage_buckets import fill_sql

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "usage_buckets",
        sa.Column("customer_id", sa.String(length=128), nullable=False),
        sa.Column("metric_code", sa.String(length=128), nullable=False),
        sa.Column("day", UTCDateTime(timezone=True), nullable=False),
        sa.Column("events", sa.BigInteger(), nullable=False),
        sa.Column("total_high", sa.BigInteger(), nullable=False),
        sa.Column("total_low", sa.BigInteger(), nullable=False),
        sa.Column("max_value", sa.BigInteger(), nullable=False),
        sa.Column("latest_at", UTCDateTime(timezone=True), nullable=True),
        sa.Column("latest_event_id", sa.String(length=256), nullable=True),
        sa.Column("latest_value", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("customer_id", "metric_code", "day"),
    )
    op.create_index("ix_usage_buckets_day", "usage_buckets", ["day"], postgresql_using="brin")
    op.create_table(
        "usage_bucket_values",
        sa.Column("customer_id", sa.String(length=128), nullable=False),
        sa.Column("metric_code", sa.String(length=128), nullable=False),
        sa.Column("day", UTCDateTime(timezone=True), nullable=False),
        sa.Column("dimension", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("customer_id", "metric_code", "day", "dimension"),
    )
    for statement in fill_sql(op.get_bind().dialect.name):
        op.execute(statement)


def downgrade() -> None:
    op.drop_table("usage_bucket_values")
    op.drop_index("ix_usage_buckets_day", table_name="usage_buckets")
    op.drop_table("usage_buckets")
