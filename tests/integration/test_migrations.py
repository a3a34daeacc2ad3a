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
    assert upgrade(empty_url) == "0004"
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


def test_the_frozen_guards_hold_on_either_side_of_0004(empty_url):
    """0004 checks per statement what 0002 checked per row; both refuse the same writes,
    and a downgrade brings the row checks back."""
    from alembic import command

    from billing_core.db import alembic_config, unit_of_work

    upgrade(empty_url)
    with get_engine(empty_url).begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO invoices (id, issuer_id, number, status, billed_customer_id, "
                "family_id, billing_date, currency, subtotal, discount_total, tax_total, "
                "credit_total, total, content_hash, created_at) VALUES "
                "(1, 'default', 'INV-1', 'issued', 'solo', 'solo', '2026-02-01', 'USD', "
                "0, 0, 0, 0, 0, 'x', CURRENT_TIMESTAMP), "
                "(2, 'default', NULL, 'draft', 'solo', 'solo', '2026-03-01', 'USD', "
                "0, 0, 0, 0, 0, 'y', CURRENT_TIMESTAMP)"
            )
        )
    line = (
        "INSERT INTO invoice_lines (invoice_id, position, serviced_customer_id, product, kind, "
        "amount) VALUES (:invoice, 1, 'solo', 'Platform', 'fixed', 10)"
    )
    for revision in ("0004", "0003", "0004"):
        if revision == "0003":
            command.downgrade(alembic_config(empty_url), "0003")
        else:
            upgrade(empty_url)
        with unit_of_work(empty_url) as session:
            session.execute(sa.text(line), {"invoice": 2})  # a draft takes lines
            if empty_url.startswith("postgresql"):
                triggers = set(
                    session.execute(
                        sa.text("SELECT tgname FROM pg_trigger WHERE tgname LIKE 'charges_%'")
                    ).scalars()
                )
                per_statement = {f"charges_frozen_{op}" for op in ("insert", "update", "delete")}
                expected = {"charges_frozen"} if revision == "0003" else per_statement
                assert triggers == expected
            session.rollback()
        with (
            pytest.raises(sa.exc.DBAPIError, match="frozen"),
            get_engine(empty_url).begin() as connection,
        ):
            connection.execute(sa.text(line), {"invoice": 1})
