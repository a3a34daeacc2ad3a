"""Small set-based helpers over the store: upserts and chunked IN lists."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

# Stay well under SQLite's bound-parameter limit in IN lists and multi-row inserts.
CHUNK = 900


def chunks(items: Sequence[Any], size: int = CHUNK) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _insert(session: Session, table: sa.Table):
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(table)


def upsert(session: Session, model: Any, rows: list[dict], keys: Sequence[str]) -> None:
    """Insert rows, or update every other column where the key already exists."""
    if not rows:
        return
    table = model.__table__
    stmt = _insert(session, table)
    columns = [c for c in rows[0] if c not in keys]
    if columns:
        stmt = stmt.on_conflict_do_update(
            index_elements=list(keys), set_={c: stmt.excluded[c] for c in columns}
        )
    else:
        stmt = stmt.on_conflict_do_nothing(index_elements=list(keys))
    session.execute(stmt, rows)


def insert_ignore(session: Session, model: Any, rows: list[dict], keys: Sequence[str]) -> None:
    """Insert rows, skipping any whose key already exists."""
    if rows:
        stmt = _insert(session, model.__table__).on_conflict_do_nothing(index_elements=list(keys))
        session.execute(stmt, rows)


def insert_rows(session: Session, model: Any, rows: list[dict]) -> None:
    """Plain bulk insert (executemany)."""
    if rows:
        session.execute(sa.insert(model.__table__), rows)


def delete_in(session: Session, column: sa.ColumnElement, values: Iterable[Any]) -> int:
    """DELETE ... WHERE column IN (values), in chunks; returns rows deleted."""
    values = list(values)
    deleted = 0
    for part in chunks(values):
        result = session.execute(sa.delete(column.table).where(column.in_(part)))
        deleted += result.rowcount or 0
    return deleted


def select_in(session: Session, stmt: sa.Select, column: sa.ColumnElement, values: Iterable[Any]):
    """Rows of `stmt` filtered by column IN (values), in chunks."""
    values = list(values)
    for part in chunks(values):
        yield from session.execute(stmt.where(column.in_(part)))
