"""Where an inbox file is kept after its load

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-14

`usage_loads.archived_as`: the name an inbox file was given in the inbox's `archive/`
folder (`<load id>-<sha256 prefix>-<name>`), so that two files of one name are both kept
and each load names its own copy. Nullable: loads before it (and loads that are not inbox
files) have none.
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("usage_loads", sa.Column("archived_as", sa.String(512), nullable=True))


def downgrade() -> None:
    # Not a batch operation: SQLite would rebuild the table (as 0010 explains).
    op.execute("ALTER TABLE usage_loads DROP COLUMN archived_as")
