"""Migrations carry a store's data forward: usage recorded before 0003 survives the change
of key and stays idempotent on event_id afterwards."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from billing_core.db import dispose_engines, get_engine, upgrade
from billing_core.usage import ingest_files


@pytest.fixture(params=["sqlite", "postgres"])
def empty_url(request, tmp_path, monkeypatch):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'old.db'}"
    else:
        from tests.conftest import need_postgres

        need_postgres()
        url = request.getfixturevalue("pg_databases").create()
    monkeypatch.setenv("BILLING_DATABASE_URL", url)
    yield url
    dispose_engines()


def test_usage_recorded_before_0003_survives_it(empty_url, tmp_path):
    upgrade(empty_url, "0002")
    with get_engine(empty_url).begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO customers (id, name, currency, family_id, bill_to, tax_basis, "
                "rollup_lines, timezone) VALUES ('solo', 'Solo', 'USD', 'solo', 'parent', "
                "'billed', 'breakdown', 'UTC')"
            )
        )
        connection.execute(
            sa.text(
                "INSERT INTO metrics (code, name, aggregation, field) "
                "VALUES ('units', 'Units', 'sum', 'quantity')"
            )
        )
        connection.execute(
            sa.text(
                "INSERT INTO usage_events (event_id, customer_id, metric_code, timestamp, "
                "quantity, value, ingested_at) VALUES ('old-1', 'solo', 'units', "
                ":at, '2.5', 2500000, :at)"
            ),
            {"at": "2026-01-05 10:00:00+00:00"},
        )
    assert upgrade(empty_url) == "0003"
    path = tmp_path / "again.csv"
    path.write_text(
        "event_id,customer,metric,timestamp,quantity\n"
        "old-1,solo,units,2026-01-05T10:00:00Z,2.5\n"
        "new-1,solo,units,2026-01-06T10:00:00Z,1\n"
    )
    from billing_core.db import unit_of_work

    with unit_of_work(empty_url) as session:
        result = ingest_files(session, [path])
        session.commit()
    assert (result.loaded, result.duplicates) == (1, 1)
    with get_engine(empty_url).connect() as connection:
        rows = connection.execute(
            sa.text("SELECT event_id, value FROM usage_events ORDER BY event_id")
        ).all()
        columns = {c["name"] for c in sa.inspect(connection).get_columns("usage_events")}
    assert [(r[0], int(r[1])) for r in rows] == [("new-1", 1_000_000), ("old-1", 2_500_000)]
    assert "id" not in columns
