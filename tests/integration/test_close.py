"""The close end to end on each store, without Prefect: idempotence, issuing, credits."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest
import sqlalchemy as sa

from billing_core.steps import close as steps
from billing_core.store.engine import get_engine
from tests.helpers import close, import_yaml, ingest_csv, invoices, lines, one

POOLED = """
customers:
  - {id: hq, name: HQ Holdings, currency: USD}
  - {id: account-a, name: Account A, currency: USD, parent: hq}
  - {id: account-b, name: Account B, currency: USD, parent: hq}
metrics:
  - {code: units, name: Units, aggregation: sum, field: quantity}
prices:
  - code: units-tiered
    product: Units
    currency: USD
    model: graduated
    metric: units
    tiers: [{up_to: 1000, unit_price: "1.00"}, {up_to: null, unit_price: "0.90"}]
  - {code: platform, product: Platform, currency: USD, model: flat, amount: "100.00"}
subscriptions:
  - id: sub-hq
    customer: hq
    start: 2026-01-01
    cadence: monthly
    billing_day: 1
    items:
      - {price: units-tiered, timing: in_arrears, pool: breakdown}
      - {price: platform, timing: in_advance}
credits:
  - {id: promo, customer: hq, amount: "150.00", currency: USD, effective: 2026-01-01}
"""

USAGE = """
event_id,customer,metric,timestamp,quantity
a-1,account-a,units,2026-01-03T10:00:00Z,400
a-2,account-a,units,2026-01-17T08:30:00Z,500
b-1,account-b,units,2026-01-09T12:00:00+01:00,200
b-2,account-b,units,2026-01-30T23:59:59Z,300
"""

VOLATILE = {"created_at", "rated_at", "issued_at", "ingested_at", "started_at", "finished_at"}


def snapshot(url: str) -> dict[str, list[tuple]]:
    """Every row of every billing table, without timestamps that record when."""
    engine = get_engine(url)
    out = {}
    meta = sa.MetaData()
    meta.reflect(engine)
    with engine.connect() as connection:
        for name, table in sorted(meta.tables.items()):
            if name in ("alembic_version", "close_runs", "usage_loads"):
                continue
            cols = [c for c in table.columns if c.name not in VOLATILE]
            rows = connection.execute(sa.select(*cols)).all()
            out[name] = sorted(tuple(str(v) for v in row) for row in rows)
    return out


def test_pooled_close_matches_m3ter_and_applies_credit(store):
    import_yaml(POOLED)
    ingest_csv(USAGE)
    close("2026-02-01")
    invoice = one(billed_customer="hq", billing_date="2026-02-01")
    assert [x["amount"] for x in lines(invoice, kind="usage")] == ["874.29", "485.71"]
    assert invoice["subtotal"] == "1460.00"  # with February's platform fee in advance
    # January's platform fee, billed in advance on 1 January, took 100.00 of the grant first.
    january = one(billed_customer="hq", billing_date="2026-01-01")
    assert (january["subtotal"], january["credit_total"], january["total"]) == (
        "100.00",
        "-100.00",
        "0.00",
    )
    assert lines(invoice, kind="credit")[0]["amount"] == "-50.00"
    assert invoice["total"] == "1410.00"


def test_closing_twice_leaves_the_same_rows(store):
    import_yaml(POOLED)
    ingest_csv(USAGE)
    close("2026-02-01")
    first = snapshot(store.url)
    close("2026-02-01")
    assert snapshot(store.url) == first
    ingest_csv(USAGE)  # the same events again: counted once
    close("2026-02-01")
    assert snapshot(store.url) == first


def test_a_close_reads_the_catalog_once_and_the_next_close_reads_it_afresh(store, monkeypatch):
    from billing_core.store import reference
    from billing_core.store.engine import unit_of_work

    import_yaml(POOLED)
    ingest_csv(USAGE)
    reads = []
    load = reference._load_reference

    def counted(session, scope):
        reads.append(scope)
        return load(session, scope)

    monkeypatch.setattr(reference, "_load_reference", counted)
    close("2026-02-01")
    assert reads == [reference.ALL]  # the schedules and the rating share one read
    assert one(billed_customer="hq", billing_date="2026-02-01")["subtotal"] == "1460.00"
    import_yaml(POOLED.replace('amount: "100.00"', 'amount: "120.00"'))
    reads.clear()
    close("2026-02-01")
    assert reads == [reference.ALL]
    assert one(billed_customer="hq", billing_date="2026-02-01")["subtotal"] == "1480.00"
    reads.clear()
    with unit_of_work() as session:  # outside a close, every call reads
        reference.load_reference(session)
        reference.load_reference(session)
    assert len(reads) == 2


def test_issue_numbers_in_billing_date_then_customer_order(store):
    import_yaml(POOLED)
    ingest_csv(USAGE)
    close("2026-02-01", issue=True)
    issued = invoices("issued")
    assert [(i["billing_date"], i["number"]) for i in issued] == [
        ("2026-01-01", "INV-2026-000001"),
        ("2026-02-01", "INV-2026-000002"),
    ]
    # A re-close changes nothing on issued invoices and creates nothing new.
    close("2026-02-01", issue=True)
    assert invoices() == issued


def test_late_usage_becomes_an_adjustment_on_the_next_invoice(store):
    import_yaml(POOLED)
    ingest_csv(USAGE)
    close("2026-02-01", issue=True)
    before = one(billed_customer="hq", billing_date="2026-02-01")
    ingest_csv(
        """
    event_id,customer,metric,timestamp,quantity
    late-1,account-b,units,2026-01-20T10:00:00Z,100
    """,
        name="late.csv",
    )
    close("2026-03-01")
    assert one(billed_customer="hq", billing_date="2026-02-01") == before
    march = one(billed_customer="hq", billing_date="2026-03-01")
    adjustments = lines(march, kind="adjustment")
    # Block 1500 units: 1000 + 500 x 0.90 = 1450.00, split 870.00 / 580.00;
    # billed 874.29 / 485.71, so A gets -4.29 and B +94.29 (sum +90.00).
    assert sorted((a["serviced_customer"], a["amount"]) for a in adjustments) == [
        ("account-a", "-4.29"),
        ("account-b", "94.29"),
    ]
    assert all(
        a["period_start"] == "2026-01-01" and a["period_end"] == "2026-01-31" for a in adjustments
    )


def test_usage_behind_a_draft_an_earlier_close_left_alone_is_not_lost(store):
    """A close through March builds February's usage into the March draft; usage for
    February arrives; a close through February (a backfill) does not re-rate that draft.
    Issued as it is, the draft lacks the usage: the next close bills it as an adjustment,
    so the backfill must not have cleared the sign of its arrival."""
    import_yaml(POOLED)
    ingest_csv(USAGE)
    close("2026-03-01")
    ingest_csv(
        """
    event_id,customer,metric,timestamp,quantity
    feb-1,account-a,units,2026-02-10T10:00:00Z,50
    """,
        name="february.csv",
    )
    close("2026-02-01")
    steps.issue(through=date(2026, 3, 1))
    march = one(billed_customer="hq", billing_date="2026-03-01")
    assert not lines(march, kind="usage", period_start="2026-02-01")  # no February usage yet
    close("2026-04-01")
    april = one(billed_customer="hq", billing_date="2026-04-01")
    assert [
        (a["serviced_customer"], a["quantity"], a["amount"], a["period_start"])
        for a in lines(april, kind="adjustment")
    ] == [("account-a", "50", "50.00", "2026-02-01")]
    assert store.scalar("SELECT count(*) FROM usage_touches") == 0


def test_touches_of_rated_usage_are_cleared_in_one_pass(store):
    import_yaml(POOLED)
    ingest_csv(USAGE)
    assert store.scalar("SELECT count(*) FROM usage_touches") == 2
    close("2026-02-01", issue=True)
    assert store.scalar("SELECT count(*) FROM usage_touches") == 0
    # Usage after every issued window: cleared without being checked as late.
    ingest_csv(
        """
    event_id,customer,metric,timestamp,quantity
    feb-1,account-a,units,2026-02-10T10:00:00Z,50
    """,
        name="february.csv",
    )
    close("2026-03-01")
    assert store.scalar("SELECT count(*) FROM usage_touches") == 0
    march = one(billed_customer="hq", billing_date="2026-03-01")
    assert not lines(march, kind="adjustment")


TWO_FAMILIES = POOLED.replace(
    "metrics:", "  - {id: solo, name: Solo Ltd, currency: USD}\nmetrics:"
).replace(
    "credits:",
    """  - id: sub-solo
    customer: solo
    start: 2026-01-01
    cadence: monthly
    billing_day: 1
    items: [{price: units-tiered, timing: in_arrears}]
credits:""",
)


def test_a_shard_clears_only_its_own_families_touches(store):
    import_yaml(TWO_FAMILIES)
    ingest_csv(USAGE + "s-1,solo,units,2026-01-05T10:00:00Z,70\n")
    touched = "SELECT customer_id FROM usage_touches ORDER BY customer_id"
    assert [r[0] for r in store.rows(touched)] == ["account-a", "account-b", "solo"]
    steps.recalculate(date(2026, 2, 1))
    steps.rate(date(2026, 2, 1), families=["solo"])
    assert [r[0] for r in store.rows(touched)] == ["account-a", "account-b"]
    steps.rate(date(2026, 2, 1))  # the whole store
    assert store.rows(touched) == []


def test_the_store_refuses_changes_to_an_issued_invoice(store):
    import_yaml(POOLED)
    ingest_csv(USAGE)
    close("2026-02-01", issue=True)
    engine = get_engine(store.url)
    invoice_id = one(billed_customer="hq", billing_date="2026-02-01")["id"]
    for statement in (
        "UPDATE invoices SET total = 1 WHERE id = :id",
        "UPDATE invoice_lines SET amount = 1 WHERE invoice_id = :id",
        "DELETE FROM invoice_lines WHERE invoice_id = :id",
        "DELETE FROM invoices WHERE id = :id",
        "UPDATE charges SET amount = 1 WHERE id IN "
        "(SELECT charge_id FROM invoice_charges WHERE invoice_id = :id)",
        "UPDATE invoices SET status = 'draft' WHERE id = :id",
        # A line copied into the issued invoice, and a charge moved onto it.
        "INSERT INTO invoice_lines (invoice_id, position, serviced_customer_id, product, "
        "kind, amount) SELECT invoice_id, 99, serviced_customer_id, product, kind, amount "
        "FROM invoice_lines WHERE invoice_id = :id",
    ):
        with pytest.raises(sa.exc.DBAPIError, match="frozen"), engine.begin() as connection:
            connection.execute(sa.text(statement), {"id": invoice_id})
    columns = (
        "kind, subscription_id, product, serviced_customer_id, billed_customer_id, family_id, "
        "period_start, period_end, full_start, full_end, due_date, billing_date, currency, "
        "quantity, amount, rated_at"
    )
    with pytest.raises(sa.exc.DBAPIError, match="frozen"), engine.begin() as connection:
        # A charge of its own copied, then linked to it: the link is refused.
        connection.execute(
            sa.text(
                f"INSERT INTO charges (charge_key, {columns}) SELECT charge_key || '|copy', "
                f"{columns} FROM charges WHERE id = (SELECT min(charge_id) FROM "
                "invoice_charges WHERE invoice_id = :id)"
            ),
            {"id": invoice_id},
        )
        connection.execute(
            sa.text(
                "INSERT INTO invoice_charges (charge_id, invoice_id) SELECT id, :id FROM "
                "charges WHERE charge_key LIKE '%|copy'"
            ),
            {"id": invoice_id},
        )
    # Paying is a status change the store allows.
    with engine.begin() as connection:
        connection.execute(
            sa.text("UPDATE invoices SET status = 'paid' WHERE id = :id"), {"id": invoice_id}
        )
    assert store.scalar("SELECT status FROM invoices WHERE id = :id", id=invoice_id) == "paid"


def test_steps_can_run_one_by_one_and_again(store):
    import_yaml(POOLED)
    ingest_csv(USAGE)
    through = date(2026, 2, 1)
    steps.recalculate(through)
    steps.rate(through)
    steps.rate(through)  # a retried step: the same charges
    steps.consolidate(through)
    steps.apply_credits(through)
    steps.apply_credits(through)
    total = Decimal(one(billed_customer="hq", billing_date="2026-02-01")["total"])
    assert total == Decimal("1410.00")


def test_copy_writes_what_row_inserts_write_through_whole_closes(
    tmp_path, monkeypatch, postgres_template, pg_databases
):
    """On PostgreSQL every insert of a close (slots, charges, windows, invoices, lines,
    links) goes through a binary COPY from COPY_FROM rows: with every one copied, the
    store ends as it does with none copied."""
    import billing_core.store.rows
    from billing_core.store.engine import dispose_engines
    from tests.conftest import need_postgres
    from tests.scenarios.test_scenarios import HERE

    need_postgres()
    # Each run has a database of its own, and an issued invoice keeps the name of its
    # default issuer, the store's: give both stores one name.
    monkeypatch.setattr(steps, "store_name", lambda url=None: "billing")
    catalogs = [POOLED] + [
        (HERE / name / "catalog.yaml").read_text(encoding="utf-8")
        for name in ("alguna-global-industries", "sequence-proration")
    ]
    for i, catalog in enumerate(catalogs):
        got = []
        for copy_from in (10**9, 1):
            url = pg_databases.create(template=postgres_template)
            monkeypatch.setenv("BILLING_DATABASE_URL", url)
            monkeypatch.setenv("BILLING_OUTPUT_DIR", str(tmp_path / f"documents-{i}-{copy_from}"))
            monkeypatch.setattr(billing_core.store.rows, "COPY_FROM", copy_from)
            monkeypatch.chdir(tmp_path)
            import_yaml(catalog, name=f"catalog-{i}.yaml")
            if i == 0:
                ingest_csv(USAGE)
            close("2026-02-01", issue=True)
            close("2026-04-01")
            rows = snapshot(url)
            del rows["invoice_documents"]  # where each run wrote its files, and PDF bytes
            got.append(rows)
            dispose_engines()
        assert got[0]["invoice_lines"] and got[0]["invoice_charges"]
        assert got[0] == got[1]
