"""Writing what a step computed as a diff against what the store holds: a row that
compares equal is left alone, so a re-run that computes the same rows writes nothing."""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from billing_core.store.rows import delete_in, insert_rows, select_keys


def write_diff(
    session: Session,
    model: Any,
    key: str,
    existing: dict[str, Any],
    wanted: dict[str, Any],
    compared: Sequence[str],
    *,
    later: tuple[sa.Select, sa.ColumnElement | None],
    is_stale: Callable[[str, Any], bool],
    by_attribute: bool = False,
    also: Sequence[str] = (),
    as_insert: Callable[[Any], dict] | None = None,
) -> tuple[int, int]:
    """Insert, update or delete rows of `model` so that, of the rows keyed by `key` in
    `existing` (what the step read), the store holds `wanted`; returns (written, deleted).

    A wanted key missing from `existing` may be a row a later close wrote that now falls
    earlier: `later` is (the statement to look it up in, the condition every such row
    meets, see `select_keys`), and it is updated in place rather than written twice.
    A row that differs from its stored one in a `compared` column is updated (those and
    the `also` columns); a stored row that is not wanted and `is_stale(key, row)` goes.
    Rows are read by column name, or by attribute with `by_attribute` (named tuples, planned slots);
    `as_insert` turns a wanted row into the dict to insert (default: it is one).
    """
    table = model.__table__
    stmt, beyond = later
    column = table.c[key]
    missing = [k for k in wanted if k not in existing]
    for r in select_keys(session, stmt, column, missing, beyond):
        if by_attribute:
            existing[getattr(r, key)] = r
        else:
            existing[r._mapping[key]] = r._mapping
    getter = operator.attrgetter if by_attribute else operator.itemgetter
    # One tuple of the compared values a side: compared at once, not column by column.
    values, written, id_of = getter(*compared), getter(*compared, *also), getter("id")
    names = (*compared, *also)
    inserts, updates = [], []
    for k, row in wanted.items():
        old = existing.get(k)
        if old is None:
            inserts.append(row if as_insert is None else as_insert(row))
        elif values(old) != values(row):
            updates.append({"_id": id_of(old), **dict(zip(names, written(row), strict=True))})
    stale = [id_of(r) for k, r in existing.items() if k not in wanted and is_stale(k, r)]
    delete_in(session, table.c.id, stale)
    insert_rows(session, model, inserts)
    if updates:
        session.execute(sa.update(table).where(table.c.id == sa.bindparam("_id")), updates)
    return len(inserts) + len(updates), len(stale)
