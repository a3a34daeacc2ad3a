"""Day buckets keep the latest event only for metrics that read it

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07

`usage_buckets.latest_at`, `latest_event_id` and `latest_value` become nullable: loads,
`store.usage_buckets.rebuild` and 0012's fill keep a day's latest event only for metrics
whose aggregation reads it (`latest`), and NULL for the others, whose rating never reads
it (a metric's aggregation cannot change once it has usage). Buckets already stored keep
what they hold: the extra latest events of other metrics are never read, and clearing
them would rewrite most of the table for nothing.

The downgrade gives the buckets without one their day's latest event again, from the
events, then makes the columns NOT NULL as 0012 had them.
"""

import sqlalchemy as sa
from alembic import op

from billing_core.store.types import UTCDateTime
from billing_core.store.usage_buckets import day_sql

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

COLUMNS = (
    ("latest_at", UTCDateTime(timezone=True)),
    ("latest_event_id", sa.String(length=256)),
    ("latest_value", sa.BigInteger()),
)


def upgrade() -> None:
    with op.batch_alter_table("usage_buckets") as batch:
        for name, type_ in COLUMNS:
            batch.alter_column(name, existing_type=type_, nullable=True)


def downgrade() -> None:
    day = day_sql(op.get_bind().dialect.name, "timestamp")
    op.execute(
        f"""
UPDATE usage_buckets SET latest_at = last.timestamp, latest_event_id = last.event_id,
    latest_value = last.value
FROM (
    SELECT customer_id, metric_code, day, timestamp, event_id, value FROM (
        SELECT customer_id, metric_code, timestamp, event_id, value, {day} AS day,
            row_number() OVER (
                PARTITION BY customer_id, metric_code, {day}
                ORDER BY timestamp DESC, event_id DESC
            ) AS rank
        FROM usage_events
    ) AS ranked
    WHERE rank = 1
) AS last
WHERE usage_buckets.latest_at IS NULL AND usage_buckets.customer_id = last.customer_id
    AND usage_buckets.metric_code = last.metric_code AND usage_buckets.day = last.day
"""
    )
    with op.batch_alter_table("usage_buckets") as batch:
        for name, type_ in COLUMNS:
            batch.alter_column(name, existing_type=type_, nullable=False)
