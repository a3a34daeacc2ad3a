"""Migrations carry a store's data forward: usage recorded before 0003 survives the change
of key and stays idempotent on event_id afterwards; charges keep their invoices across
0005 both ways; the frozen-invoice guards hold on either side of each change; the
references of lines and links hold across 0006."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
import sqlalchemy as sa

from billing_core.inputs.usage import ingest_files
from billing_core.store.engine import dispose_engines, get_engine, head_revision, upgrade


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


# One customer, inserted in SQL: the tests below start from early revisions, which the
# code's models (the newest revision's) do not fit.
SOLO = sa.text(
    "INSERT INTO customers (id, name, currency, family_id, bill_to, tax_basis, "
    "rollup_lines, timezone) VALUES ('solo', 'Solo', 'USD', 'solo', 'parent', "
    "'billed', 'breakdown', 'UTC')"
)


def _solo_customer(connection: sa.Connection) -> None:
    connection.execute(SOLO)


INVOICES = (
    "INSERT INTO invoices (id, issuer_id, number, status, billed_customer_id, "
    "family_id, billing_date, currency, subtotal, discount_total, tax_total, "
    "credit_total, total, content_hash, created_at) VALUES "
    "(1, 'default', 'INV-1', 'issued', 'solo', 'solo', '2026-02-01', 'USD', "
    "0, 0, 0, 0, 0, 'x', CURRENT_TIMESTAMP), "
    "(2, 'default', NULL, 'draft', 'solo', 'solo', '2026-03-01', 'USD', "
    "0, 0, 0, 0, 0, 'y', CURRENT_TIMESTAMP)"
)


def test_usage_recorded_before_0003_survives_it(empty_url, tmp_path):
    upgrade(empty_url, "0002")
    with get_engine(empty_url).begin() as connection:
        _solo_customer(connection)
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
    assert upgrade(empty_url) == head_revision()
    path = tmp_path / "again.csv"
    path.write_text(
        "event_id,customer,metric,timestamp,quantity\n"
        "old-1,solo,units,2026-01-05T10:00:00Z,2.5\n"
        "new-1,solo,units,2026-01-06T10:00:00Z,1\n"
    )
    from billing_core.store.engine import unit_of_work

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

    from billing_core.store.engine import alembic_config, unit_of_work

    upgrade(empty_url, "0004")
    with get_engine(empty_url).begin() as connection:
        connection.execute(sa.text(INVOICES))
    line = (
        "INSERT INTO invoice_lines (invoice_id, position, serviced_customer_id, product, kind, "
        "amount) VALUES (:invoice, 1, 'solo', 'Platform', 'fixed', 10)"
    )
    for revision in ("0004", "0003", "0004"):
        if revision == "0003":
            command.downgrade(alembic_config(empty_url), "0003")
        else:
            upgrade(empty_url, "0004")
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


CHARGE_COLUMNS = (
    "charge_key, kind, subscription_id, product, serviced_customer_id, billed_customer_id, "
    "family_id, period_start, period_end, full_start, full_end, due_date, billing_date, "
    "currency, quantity, amount, rated_at"
)


def _charge(key: str, billing_date: str) -> str:
    return (
        f"INSERT INTO charges ({CHARGE_COLUMNS}) VALUES ('{key}', 'fixed', 's', 'Platform', "
        "'solo', 'solo', 'solo', '2026-01-01', '2026-02-01', '2026-01-01', '2026-02-01', "
        f"'2026-02-01', '{billing_date}', 'USD', 1, 10, CURRENT_TIMESTAMP)"
    )


def _links(url: str) -> dict[str, int | None]:
    with get_engine(url).connect() as connection:
        columns = {c["name"] for c in sa.inspect(connection).get_columns("charges")}
        if "invoice_id" in columns:
            rows = connection.execute(sa.text("SELECT charge_key, invoice_id FROM charges"))
        else:
            rows = connection.execute(
                sa.text(
                    "SELECT c.charge_key, l.invoice_id FROM charges c "
                    "LEFT JOIN invoice_charges l ON l.charge_id = c.id"
                )
            )
        return dict(rows.all())


def test_charges_keep_their_invoices_across_0005_and_stay_frozen(empty_url):
    """0005 moves charges.invoice_id into invoice_charges and back on a downgrade; on
    either side a charge of an issued invoice cannot be changed, deleted or unlinked, and
    no charge can be put on one."""
    from alembic import command

    from billing_core.store.engine import alembic_config

    upgrade(empty_url, "0004")
    with get_engine(empty_url).begin() as connection:
        # Invoice 1 is linked while a draft, then issued.
        connection.execute(sa.text(INVOICES.replace("'INV-1', 'issued'", "NULL, 'draft'")))
        for key, day in (
            ("on-issued", "2026-02-01"),
            ("on-draft", "2026-03-01"),
            ("free", "2026-03-01"),
        ):
            connection.execute(sa.text(_charge(key, day)))
        connection.execute(
            sa.text("UPDATE charges SET invoice_id = 1 WHERE charge_key = 'on-issued'")
        )
        connection.execute(
            sa.text("UPDATE charges SET invoice_id = 2 WHERE charge_key = 'on-draft'")
        )
        connection.execute(
            sa.text("UPDATE invoices SET status = 'issued', number = 'INV-1' WHERE id = 1")
        )
    expected = {"on-issued": 1, "on-draft": 2, "free": None}
    assert _links(empty_url) == expected
    for revision in ("0005", "0004", "0005"):
        if revision == "0004":
            command.downgrade(alembic_config(empty_url), "0004")
        else:
            upgrade(empty_url, "0005")
        assert _links(empty_url) == expected
        linked = revision == "0005"
        refused = [
            "UPDATE charges SET amount = 1 WHERE charge_key = 'on-issued'",
            "DELETE FROM charges WHERE charge_key = 'on-issued'",
        ]
        if linked:
            refused += [
                "DELETE FROM invoice_charges WHERE invoice_id = 1",
                "UPDATE invoice_charges SET invoice_id = 2 WHERE invoice_id = 1",
                "INSERT INTO invoice_charges (charge_id, invoice_id) "
                "SELECT id, 1 FROM charges WHERE charge_key = 'free'",
            ]
        else:
            refused += ["UPDATE charges SET invoice_id = 1 WHERE charge_key = 'free'"]
        for statement in refused:
            with (
                pytest.raises(sa.exc.DBAPIError, match="frozen"),
                get_engine(empty_url).begin() as connection,
            ):
                connection.execute(sa.text(statement))
        # A draft's charges stay free to change.
        with get_engine(empty_url).begin() as connection:
            connection.execute(
                sa.text("UPDATE charges SET amount = 11 WHERE charge_key = 'on-draft'")
            )
    assert _links(empty_url) == expected


def test_references_hold_on_either_side_of_0006(empty_url):
    """0006 keeps the references of lines and links by per-statement triggers on
    PostgreSQL instead of constraints, and a downgrade brings the constraints back; rows
    stay, and a reference to nothing is refused at every revision."""
    from alembic import command

    from billing_core.store.engine import alembic_config

    upgrade(empty_url, "0005")
    with get_engine(empty_url).begin() as connection:
        connection.execute(sa.text(INVOICES))
        connection.execute(sa.text(_charge("on-draft", "2026-03-01")))
        connection.execute(
            sa.text(
                "INSERT INTO invoice_charges (charge_id, invoice_id) "
                "SELECT id, 2 FROM charges WHERE charge_key = 'on-draft'"
            )
        )
    expected = {"on-draft": 2}
    postgres = empty_url.startswith("postgresql")
    for revision in ("0006", "0005", "0006"):
        if revision == "0005":
            command.downgrade(alembic_config(empty_url), "0005")
        else:
            upgrade(empty_url, "0006")
        assert _links(empty_url) == expected
        with get_engine(empty_url).connect() as connection:
            keys = [
                fk["referred_table"]
                for table in ("invoice_lines", "invoice_charges")
                for fk in sa.inspect(connection).get_foreign_keys(table)
            ]
        if postgres and revision == "0006":
            assert keys == []
        else:
            assert sorted(keys) == ["charges", "invoices", "invoices"]
        with (
            pytest.raises(sa.exc.IntegrityError),
            get_engine(empty_url).begin() as connection,
        ):
            connection.execute(
                sa.text("INSERT INTO invoice_charges (charge_id, invoice_id) VALUES (999, 2)")
            )
        with (  # and the frozen-invoice guard, rewritten by 0006, still holds
            pytest.raises(sa.exc.DBAPIError, match="frozen"),
            get_engine(empty_url).begin() as connection,
        ):
            connection.execute(
                sa.text(
                    "INSERT INTO invoice_lines (invoice_id, position, serviced_customer_id, "
                    "product, kind, amount) VALUES (1, 1, 'solo', 'Platform', 'fixed', 10)"
                )
            )


# A price of each model as the columns before 0009 held it, and its terms after.
OLD_PRICES = {
    "fee": ("flat", None, "amount, tiers", "'500.00', 'null'"),
    "calls": ("per_unit", "units", "unit_price", "'0.00157'"),
    "packs": ("package", "units", "package_size, package_price", "100, '5.10'"),
    "steps": (
        "graduated",
        "units",
        "tiers",
        """'[{"up_to": "1000", "unit_price": "1.00", "flat_fee": "5"}, """
        """{"up_to": null, "unit_price": "0.000000000001"}]'""",
    ),
    "bulk": (
        "volume",
        "units",
        "tiers",
        """'[{"up_to": "10", "unit_price": "2"}, {"up_to": null, "unit_price": "1.50"}]'""",
    ),
}
TERMS = {
    "fee": {"amount": "500.00"},
    "calls": {"unit_price": "0.00157"},
    "packs": {"package_size": "100", "package_price": "5.10"},
    "steps": {
        "tiers": [
            {"up_to": "1000", "unit_price": "1.00", "flat_fee": "5"},
            {"up_to": None, "unit_price": "0.000000000001"},
        ]
    },
    "bulk": {"tiers": [{"up_to": "10", "unit_price": "2"}, {"up_to": None, "unit_price": "1.50"}]},
}


def _price_terms(url: str) -> dict[str, dict]:
    with get_engine(url).connect() as connection:
        rows = connection.execute(sa.text("SELECT code, terms FROM prices")).all()
    return {code: json.loads(t) if isinstance(t, str) else t for code, t in rows}


def _old_price_columns(url: str) -> dict[str, tuple]:
    with get_engine(url).connect() as connection:
        rows = connection.execute(
            sa.text(
                "SELECT code, amount, unit_price, package_size, package_price, tiers FROM prices"
            )
        ).all()
    return {
        code: (
            *(None if v is None else f"{Decimal(str(v)):f}" for v in (amount, unit, price)),
            size,
            json.loads(tiers) if isinstance(tiers, str) else tiers,
        )
        for code, amount, unit, size, price, tiers in rows
    }


def test_price_terms_move_into_one_column_across_0009_and_back(empty_url):
    """0009 puts each price's terms in `prices.terms` as the close read them (decimals as
    their exact strings, never floats) and drops the old columns; a downgrade restores
    the columns with the same values, and upgrading again gives the same terms. An
    issued invoice's charge and snapshot are not touched."""
    from alembic import command

    from billing_core.store.engine import alembic_config

    upgrade(empty_url, "0008")
    with get_engine(empty_url).begin() as connection:
        _solo_customer(connection)
        connection.execute(
            sa.text(
                "INSERT INTO metrics (code, name, aggregation, field) "
                "VALUES ('units', 'Units', 'sum', 'quantity')"
            )
        )
        for code, (model, metric, columns, values) in OLD_PRICES.items():
            connection.execute(
                sa.text(
                    f"INSERT INTO prices (code, product, currency, model, metric_code, {columns}) "
                    f"VALUES ('{code}', '{code}', 'USD', '{model}', :metric, {values})"
                ),
                {"metric": metric},
            )
        connection.execute(
            sa.text(
                "INSERT INTO subscriptions (id, customer_id, start, cadence, billing_day, "
                "align_to_parent, status) VALUES ('s', 'solo', '2026-01-01', 'monthly', 1, "
                "false, 'active')"
            )
        )
        connection.execute(
            sa.text(
                "INSERT INTO subscription_items (subscription_id, phase, phase_start, "
                "price_code, timing) VALUES ('s', 0, '2026-01-01', 'calls', 'in_arrears')"
            )
        )
        connection.execute(sa.text(INVOICES.replace("'INV-1', 'issued'", "NULL, 'draft'")))
        connection.execute(sa.text(_charge("on-issued", "2026-02-01")))
        connection.execute(
            sa.text("UPDATE charges SET pricing = :pricing WHERE charge_key = 'on-issued'"),
            {"pricing": json.dumps({"model": "per_unit", "unit_price": "0.00157"})},
        )
        connection.execute(
            sa.text(
                "INSERT INTO invoice_charges (charge_id, invoice_id) "
                "SELECT id, 1 FROM charges WHERE charge_key = 'on-issued'"
            )
        )
        connection.execute(
            sa.text("UPDATE invoices SET status = 'issued', number = 'INV-1' WHERE id = 1")
        )
    old_columns = _old_price_columns(empty_url)
    frozen = "SELECT i.identity, c.pricing FROM invoices i, charges c WHERE i.id = 1"
    with get_engine(empty_url).connect() as connection:
        issued = connection.execute(sa.text(frozen)).one()
    for revision in ("0009", "0008", "0009"):
        if revision == "0008":
            command.downgrade(alembic_config(empty_url), "0008")
            assert _old_price_columns(empty_url) == old_columns
        else:
            upgrade(empty_url, "0009")
            assert _price_terms(empty_url) == TERMS
            with get_engine(empty_url).connect() as connection:
                columns = {c["name"] for c in sa.inspect(connection).get_columns("prices")}
            assert not columns & {"amount", "unit_price", "package_size", "package_price"}
        with get_engine(empty_url).connect() as connection:
            assert connection.execute(sa.text(frozen)).one() == issued


def _load_columns(url: str) -> set[str]:
    with get_engine(url).connect() as connection:
        return {c["name"] for c in sa.inspect(connection).get_columns("usage_loads")}


def test_usage_loads_take_an_archived_name_across_0011_and_back(empty_url):
    """0011 adds `usage_loads.archived_as` (the inbox file's name in archive/), empty for
    the loads before it; a downgrade drops it, and every load row stays."""
    from alembic import command

    from billing_core.store.engine import alembic_config

    upgrade(empty_url, "0010")
    with get_engine(empty_url).begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO usage_loads (source, key, events_read, events_loaded, duplicates, "
                "rejected, loaded_at) VALUES ('inbox', 'jan.csv:ab', 2, 2, 0, 0, :at)"
            ),
            {"at": "2026-01-05 10:00:00+00:00"},
        )
    loads = "SELECT source, key, events_read, events_loaded FROM usage_loads"
    for revision in ("0011", "0010", "0011"):
        if revision == "0010":
            command.downgrade(alembic_config(empty_url), "0010")
            assert "archived_as" not in _load_columns(empty_url)
        else:
            upgrade(empty_url, "0011")
            assert "archived_as" in _load_columns(empty_url)
            with get_engine(empty_url).begin() as connection:
                assert connection.execute(sa.text("SELECT archived_as FROM usage_loads")).all() == [
                    (None,)
                ]
        with get_engine(empty_url).connect() as connection:
            assert connection.execute(sa.text(loads)).all() == [("inbox", "jan.csv:ab", 2, 2)]


def test_day_buckets_keep_a_latest_event_only_where_read_across_0013_and_back(empty_url):
    """0012 fills the buckets of the usage already stored (the latest event only for a
    `latest` metric); 0013 lets the others' be NULL; a downgrade gives every bucket its
    day's latest event again, from the events, and makes the columns NOT NULL as before."""
    from alembic import command

    from billing_core.store.engine import alembic_config

    upgrade(empty_url, "0011")
    with get_engine(empty_url).begin() as connection:
        _solo_customer(connection)
        connection.execute(
            sa.text(
                "INSERT INTO metrics (code, name, aggregation, field) VALUES "
                "('units', 'Units', 'sum', 'quantity'), ('seats', 'Seats', 'latest', NULL)"
            )
        )
        for event_id, metric, at, value in (
            ("u1", "units", "2026-01-05 10:00:00+00:00", 1),
            ("u2", "units", "2026-01-05 12:00:00+00:00", 2),
            ("s1", "seats", "2026-01-05 11:00:00+00:00", 3),
            ("s2", "seats", "2026-01-05 09:00:00+00:00", 4),
        ):
            connection.execute(
                sa.text(
                    "INSERT INTO usage_events (event_id, customer_id, metric_code, timestamp, "
                    "quantity, value, ingested_at) VALUES (:id, 'solo', :metric, :at, :q, "
                    ":value, :at)"
                ),
                {"id": event_id, "metric": metric, "at": at, "q": value, "value": value * 10**6},
            )
    buckets = (
        "SELECT metric_code, events, latest_event_id, latest_value FROM usage_buckets "
        "ORDER BY metric_code"
    )

    def nullable() -> set[str]:
        with get_engine(empty_url).connect() as connection:
            columns = sa.inspect(connection).get_columns("usage_buckets")
        return {c["name"] for c in columns if c["nullable"]}

    upgrade(empty_url, "0013")
    with get_engine(empty_url).connect() as connection:
        assert connection.execute(sa.text(buckets)).all() == [
            ("seats", 2, "s1", 3_000_000),
            ("units", 2, None, None),
        ]
    assert {"latest_at", "latest_event_id", "latest_value"} <= nullable()
    command.downgrade(alembic_config(empty_url), "0012")
    with get_engine(empty_url).connect() as connection:
        assert connection.execute(sa.text(buckets)).all() == [
            ("seats", 2, "s1", 3_000_000),
            ("units", 2, "u2", 2_000_000),
        ]
    assert not {"latest_at", "latest_event_id", "latest_value"} & nullable()
    upgrade(empty_url, "0013")
    assert {"latest_at", "latest_event_id", "latest_value"} <= nullable()


def test_the_revisions_read_without_alembic_are_alembics(empty_url):
    """`require_current` reads the store's revision and the code's head without importing
    Alembic: the same answers as Alembic's, at every step of the way."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from billing_core.store.engine import (
        StoreError,
        alembic_config,
        current_revision,
        require_current,
    )

    def alembics() -> str | None:
        with get_engine(empty_url).connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()

    head_revision.cache_clear()
    assert head_revision() == ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert current_revision(empty_url) is None is alembics()
    with pytest.raises(StoreError, match="is at revision none, the code needs"):
        require_current(empty_url)
    for revision in ("0001", "0012", "head"):
        upgrade(empty_url, revision)
        assert current_revision(empty_url) == alembics()
        if revision == "0012":
            with pytest.raises(
                StoreError, match=f"is at revision 0012, the code needs {head_revision()}: run"
            ):
                require_current(empty_url)
    assert current_revision(empty_url) == head_revision()
    require_current(empty_url)  # nothing to refuse
