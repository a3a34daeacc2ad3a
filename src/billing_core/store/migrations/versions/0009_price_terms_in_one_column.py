"""A price's terms in one JSON column

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07

`prices.terms` holds what the price's model rates with (see billing_core.domain.pricing),
each decimal as its exact string: `{"amount": "500.00"}`, `{"unit_price": "0.00157"}`,
`{"package_size": "100", "package_price": "5.00"}`, `{"tiers": [...]}`. It replaces the
columns `amount`, `unit_price`, `package_size`, `package_price` and `tiers`, so a new
model needs no migration. The strings are those the close read from the old columns
(and kept on its charges), so rating a draft again after the upgrade writes nothing.

Only the catalog's `prices` change: an issued invoice's charges keep the terms they were
rated with, and its identity snapshot (0008) holds no price.
"""

import json
from decimal import Decimal

import sqlalchemy as sa
from alembic import op

from billing_core.store.types import DecimalType

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

DECIMALS = ("amount", "unit_price", "package_price")
OLD_COLUMNS = ("amount", "unit_price", "package_size", "package_price", "tiers")


def _json(value):
    """A JSON column's value as read without its type: SQLite hands back the text."""
    return json.loads(value) if isinstance(value, str) else value


def _plain(value) -> str:
    """A stored decimal as its exact string (what the close's terms held)."""
    return f"{value if isinstance(value, Decimal) else Decimal(str(value)):f}"


def _terms(row) -> dict:
    terms = {}
    if row.amount is not None:
        terms["amount"] = _plain(row.amount)
    if row.unit_price is not None:
        terms["unit_price"] = _plain(row.unit_price)
    if row.package_size is not None:
        terms["package_size"] = str(row.package_size)
    if row.package_price is not None:
        terms["package_price"] = _plain(row.package_price)
    tiers = _json(row.tiers)
    if tiers is not None:
        terms["tiers"] = tiers
    return terms


def upgrade() -> None:
    op.add_column(
        "prices",
        sa.Column("terms", sa.JSON(), nullable=False, server_default=sa.text("'{}'")),
    )
    bind = op.get_bind()
    rows = bind.execute(sa.text(f"SELECT code, {', '.join(OLD_COLUMNS)} FROM prices")).all()
    prices = sa.table("prices", sa.column("code", sa.String()), sa.column("terms", sa.JSON()))
    if rows:
        bind.execute(
            sa.update(prices)
            .where(prices.c.code == sa.bindparam("price"))
            .values(terms=sa.bindparam("new_terms", type_=sa.JSON())),
            [{"price": row.code, "new_terms": _terms(row)} for row in rows],
        )
    # Not a batch operation: SQLite would rebuild the table, which subscription items
    # reference.
    for column in OLD_COLUMNS:
        op.execute(f"ALTER TABLE prices DROP COLUMN {column}")


def downgrade() -> None:
    for column in DECIMALS:
        op.add_column("prices", sa.Column(column, DecimalType(), nullable=True))
    op.add_column("prices", sa.Column("package_size", sa.Integer(), nullable=True))
    op.add_column("prices", sa.Column("tiers", sa.JSON(), nullable=True))
    bind = op.get_bind()
    rows = bind.execute(sa.text("SELECT code, terms FROM prices")).all()
    prices = sa.table(
        "prices",
        sa.column("code", sa.String()),
        *(sa.column(column, DecimalType()) for column in DECIMALS),
        sa.column("package_size", sa.Integer()),
        sa.column("tiers", sa.JSON()),
    )
    values = []
    for code, stored in rows:
        terms = _json(stored) or {}
        row = {"price": code, "new_tiers": terms.get("tiers")}
        for column in DECIMALS:
            row[f"new_{column}"] = None if terms.get(column) is None else Decimal(terms[column])
        size = terms.get("package_size")
        row["new_package_size"] = None if size is None else int(Decimal(size))
        values.append(row)
    if values:
        bind.execute(
            sa.update(prices)
            .where(prices.c.code == sa.bindparam("price"))
            .values(
                {
                    **{c: sa.bindparam(f"new_{c}", type_=DecimalType()) for c in DECIMALS},
                    "package_size": sa.bindparam("new_package_size", type_=sa.Integer()),
                    "tiers": sa.bindparam("new_tiers", type_=sa.JSON()),
                }
            ),
            values,
        )
    op.execute("ALTER TABLE prices DROP COLUMN terms")
