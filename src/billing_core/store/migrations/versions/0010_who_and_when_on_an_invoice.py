"""Who an invoice is from and to, and when it is due (SPEC §7.1)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07

The catalog's optional keys for a document a finance team can send: the issuer's tax id,
email, time zone, locale, payment terms and payment instructions; a customer's address,
tax id, email, locale and payment terms; a tax rate's name and note; a credit grant's
name. All nullable: a store upgraded keeps every row as it was. Issuing freezes them with
the invoice (the identity snapshot of 0008 takes every column of these rows).
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

COLUMNS = {
    "issuers": (
        ("tax_id", sa.String(64)),
        ("email", sa.String(320)),
        ("timezone", sa.String(64)),
        ("locale", sa.String(32)),
        ("payment_terms_days", sa.Integer()),
        ("payment_instructions", sa.JSON()),
    ),
    "customers": (
        ("address", sa.JSON()),
        ("tax_id", sa.String(64)),
        ("email", sa.String(320)),
        ("locale", sa.String(32)),
        ("payment_terms_days", sa.Integer()),
    ),
    "tax_rates": (
        ("name", sa.String(64)),
        ("note", sa.Text()),
    ),
    "credit_grants": (("name", sa.Text()),),
}


def upgrade() -> None:
    for table, columns in COLUMNS.items():
        for name, kind in columns:
            op.add_column(table, sa.Column(name, kind, nullable=True))


def downgrade() -> None:
    # Not a batch operation: SQLite would rebuild the tables, which others reference.
    for table, columns in COLUMNS.items():
        for name, _ in reversed(columns):
            op.execute(f"ALTER TABLE {table} DROP COLUMN {name}")
