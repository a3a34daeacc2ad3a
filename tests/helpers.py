"""Helpers for store tests: import a catalog, ingest usage, close, export."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path

from billing_core.inputs.catalog import import_catalog, load_file, parse
from billing_core.inputs.usage import ingest_files
from billing_core.invoices.lifecycle import export
from billing_core.steps import close as steps
from billing_core.store.engine import unit_of_work


def import_yaml(text: str, folder: Path | None = None, name: str = "catalog.yaml"):
    """Import a catalog given as YAML text; returns the ImportResult."""
    path = (folder or Path.cwd()) / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    with unit_of_work() as session:
        result = import_catalog(session, parse(load_file(path)))
        session.commit()
    return result


def ingest_csv(text: str, folder: Path | None = None, name: str = "usage.csv"):
    """Ingest usage given as CSV text; returns the IngestResult."""
    path = (folder or Path.cwd()) / name
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    with unit_of_work() as session:
        result = ingest_files(session, [path])
        session.commit()
    return result


def close(through: str | date, issue: bool = False):
    """The whole close in-process (no Prefect)."""
    day = date.fromisoformat(through) if isinstance(through, str) else through
    return steps.close_locally(day, issue_invoices=issue)


@contextmanager
def recorded_statements(*needles: str) -> Iterator[list[str]]:
    """The SQL statements sent inside the block that contain any of `needles`."""
    import sqlalchemy as sa

    seen: list[str] = []

    def record(conn, cursor, statement, *args):
        if any(needle in statement for needle in needles):
            seen.append(statement)

    sa.event.listen(sa.engine.Engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", record)


def invoices(status: str | None = None) -> list[dict]:
    with unit_of_work() as session:
        return export(session, status)


def one(status: str | None = None, **match) -> dict:
    """The single exported invoice matching the given fields."""
    found = [i for i in invoices(status) if all(i[k] == v for k, v in match.items())]
    assert len(found) == 1, f"expected one invoice matching {match}, got {found}"
    return found[0]


def lines(invoice: dict, **match) -> list[dict]:
    return [x for x in invoice["lines"] if all(x[k] == v for k, v in match.items())]
