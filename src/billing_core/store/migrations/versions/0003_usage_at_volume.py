"""Usage events shaped for bulk loads and set-based aggregation

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22

- `usage_events` is keyed by its `event_id` (the idempotency key) instead of a surrogate
  id: one index less to maintain per event.
- On PostgreSQL the (customer, metric, timestamp) b-tree goes: rating joins a period's
  events to its windows with a parallel hash join, which never used it, while every
  ingested event paid for it. A BRIN index on `timestamp` narrows a close to the periods
  it rates at almost no cost to ingestion. SQLite keeps the b-tree (it has no hash join).
- `usage_windows`: the windows one aggregation pass reads, keyed by a batch id so that
  concurrent closes (shards) never see each other's; UNLOGGED on PostgreSQL (scratch
  data, no WAL) but a real table, so that the join can run in parallel workers, which a
  temporary table forbids.
"""

import sqlalchemy as sa
from alembic import op

from billing_core.store.types import DecimalType, UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    if postgres:
        op.drop_constraint("usage_events_pkey", "usage_events", type_="primary")
        op.drop_column("usage_events", "id")
        op.drop_constraint("usage_events_event_id_key", "usage_events", type_="unique")
        op.create_primary_key("usage_events_pkey", "usage_events", ["event_id"])
        op.drop_index("ix_usage_events_window", table_name="usage_events")
        op.create_index(
            "ix_usage_events_timestamp_brin",
            "usage_events",
            ["timestamp"],
            postgresql_using="brin",
        )
    else:
        # SQLite cannot alter keys in place: rebuild the table.
        op.create_table(
            "usage_events_new",
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
            sa.PrimaryKeyConstraint("event_id"),
        )
        op.execute(
            "INSERT INTO usage_events_new SELECT event_id, customer_id, metric_code, "
            "timestamp, quantity, value, dimension, properties, source, ingested_at "
            "FROM usage_events"
        )
        op.drop_index("ix_usage_events_window", table_name="usage_events")
        op.drop_table("usage_events")
        op.rename_table("usage_events_new", "usage_events")
        op.create_index(
            "ix_usage_events_window", "usage_events", ["customer_id", "metric_code", "timestamp"]
        )
    op.create_table(
        "usage_windows",
        sa.Column("batch", sa.String(length=36), nullable=False),
        sa.Column("key", sa.Integer(), nullable=False),
        sa.Column("customer_id", sa.String(length=128), nullable=False),
        sa.Column("metric_code", sa.String(length=128), nullable=False),
        sa.Column("start_ts", UTCDateTime(timezone=True), nullable=False),
        sa.Column("end_ts", UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("batch", "key"),
        prefixes=["UNLOGGED"] if postgres else [],
    )


def downgrade() -> None:
    raise NotImplementedError("usage_events keeps its event_id key; restore from a backup")
