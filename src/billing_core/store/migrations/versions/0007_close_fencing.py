"""A close's fencing token and the families it could not finish

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07

`store_locks.holder` carries the close lock's holder as JSON, now with the fencing token
every commit of the close checks (and the backend or lock file it holds): 1,024
characters instead of 256. `close_runs.failures` records, per customer family a close
could not finish, the step and the reason (the close finished the other families).
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("store_locks") as batch:
        batch.alter_column(
            "holder", existing_type=sa.String(256), type_=sa.String(1024), existing_nullable=False
        )
    with op.batch_alter_table("close_runs") as batch:
        batch.add_column(sa.Column("failures", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("close_runs") as batch:
        batch.drop_column("failures")
    op.execute("DELETE FROM store_locks")
    with op.batch_alter_table("store_locks") as batch:
        batch.alter_column(
            "holder", existing_type=sa.String(1024), type_=sa.String(256), existing_nullable=False
        )
