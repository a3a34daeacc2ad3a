"""Column types that behave the same on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import GenericFunction
from sqlalchemy.types import TypeDecorator


class DecimalType(TypeDecorator):
    """Exact decimals: NUMERIC on PostgreSQL, text on SQLite (whose NUMERIC is a float)."""

    impl = sa.Numeric
    cache_ok = True

    def load_dialect_impl(self, dialect):
        if dialect.name == "sqlite":
            return dialect.type_descriptor(sa.String(48))
        return dialect.type_descriptor(sa.Numeric(asdecimal=True))

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        value = value if isinstance(value, Decimal) else Decimal(str(value))
        return f"{value:f}" if dialect.name == "sqlite" else value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return value if isinstance(value, Decimal) else Decimal(str(value))

    def result_processor(self, dialect, coltype):
        if dialect.name == "postgresql":
            return None  # psycopg reads NUMERIC as Decimal already: nothing to convert
        return super().result_processor(dialect, coltype)


class UTCDateTime(TypeDecorator):
    """An instant, stored in UTC: timestamptz on PostgreSQL, naive UTC text on SQLite."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: instants must carry an offset")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class DecimalTotal:
    """SQLite's exact sum of decimals held as text (`decimal_sum`), registered on each
    connection (store.engine). SQLite's own SUM reads text as a float: 0.10 + 0.20 would
    not be 0.30. NULLs are skipped; no value at all sums to NULL, as SUM does."""

    def __init__(self) -> None:
        self.total: Decimal | None = None

    def step(self, value: object) -> None:
        if value is not None:
            self.total = (self.total or Decimal(0)) + Decimal(str(value))

    def finalize(self) -> str | None:
        return None if self.total is None else f"{self.total:f}"


class decimal_sum(GenericFunction):  # noqa: N801 - an SQL function's name
    """SUM of a DecimalType column, exact on both stores: PostgreSQL's SUM of a NUMERIC,
    SQLite's `decimal_sum` (DecimalTotal). The result reads back as a Decimal."""

    type = DecimalType()
    inherit_cache = True


@compiles(decimal_sum)
def _sum_elsewhere(element, compiler, **kw):
    return f"sum({compiler.process(element.clauses, **kw)})"


@compiles(decimal_sum, "sqlite")
def _sum_on_sqlite(element, compiler, **kw):
    return f"decimal_sum({compiler.process(element.clauses, **kw)})"
