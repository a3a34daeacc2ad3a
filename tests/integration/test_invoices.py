"""The invoice lifecycle on each store: transitions, gapless numbers per issuer and year,
issuing from several connections at once, and the store refusing to change an issued
invoice whatever the code path."""

from __future__ import annotations

import threading
from datetime import UTC, date, datetime

import pytest
import sqlalchemy as sa

from billing_core.invoices import lifecycle as invoice_ops
from billing_core.invoices.lifecycle import InvoiceError, discard_draft, issue, transition
from billing_core.store.engine import get_engine, unit_of_work
from tests.helpers import close, import_yaml, invoices, one

MONTHLY = """
issuer: {name: Northwind Billing, invoice_prefix: NWB, address: [1 Pier Road]}
customers:
%s
prices:
  - {code: fee, product: Fee, currency: USD, model: flat, amount: "10.00"}
subscriptions:
%s
credits:
  - {id: promo, customer: c01, amount: "5.00", currency: USD, effective: 2025-01-01}
"""


def family_of(count: int, start: str = "2025-12-01") -> str:
    """`count` self-paying customers with a monthly in-advance fee each."""
    ids = [f"c{n:02d}" for n in range(1, count + 1)]
    customers = "\n".join(f"  - {{id: {c}, name: Customer {c}, currency: USD}}" for c in ids)
    subs = "\n".join(
        f"  - {{id: s-{c}, customer: {c}, start: {start}, cadence: monthly, billing_day: 1, "
        "items: [{price: fee, timing: in_advance}]}"
        for c in ids
    )
    return MONTHLY % (customers, subs)


def test_transitions(store):
    import_yaml(family_of(1))
    close("2026-02-01")
    dec, jan, feb = (i["id"] for i in invoices())
    with unit_of_work() as session:
        with pytest.raises(InvoiceError, match="only an issued invoice"):
            transition(session, dec, "paid")
        with pytest.raises(InvoiceError, match="only an issued invoice"):
            transition(session, dec, "void")
        issue(session, ids=[dec, jan])
        transition(session, dec, "paid")
        transition(session, jan, "void")
        transition(session, feb, "canceled")
        with pytest.raises(InvoiceError, match="is paid"):
            transition(session, dec, "void")
        with pytest.raises(InvoiceError, match="is void"):
            transition(session, jan, "paid")
        with pytest.raises(InvoiceError, match="only a draft"):
            transition(session, jan, "canceled")
        with pytest.raises(InvoiceError, match="only drafts can be issued"):
            issue(session, ids=[feb])
        with pytest.raises(InvoiceError, match="no invoice 999"):
            issue(session, ids=[999])
        session.commit()
    assert [(i["status"], i["number"]) for i in invoices()] == [
        ("paid", "NWB-2025-000001"),
        ("void", "NWB-2026-000001"),  # a new year starts a new sequence
        ("canceled", None),
    ]


def test_numbers_follow_billing_date_then_customer_and_never_repeat(store):
    import_yaml(family_of(3))
    close("2026-01-01", issue=True)
    close("2026-02-01", issue=True)
    assert [(i["billing_date"], i["billed_customer"], i["number"]) for i in invoices()] == [
        ("2025-12-01", "c01", "NWB-2025-000001"),
        ("2025-12-01", "c02", "NWB-2025-000002"),
        ("2025-12-01", "c03", "NWB-2025-000003"),
        ("2026-01-01", "c01", "NWB-2026-000001"),
        ("2026-01-01", "c02", "NWB-2026-000002"),
        ("2026-01-01", "c03", "NWB-2026-000003"),
        ("2026-02-01", "c01", "NWB-2026-000004"),
        ("2026-02-01", "c02", "NWB-2026-000005"),
        ("2026-02-01", "c03", "NWB-2026-000006"),
    ]


def _issue_at_once(workers: list, monkeypatch) -> list:
    """Run issuing functions in threads, each on its own connection, all released together;
    numbering is slowed so their transactions overlap."""
    original = invoice_ops.next_number

    def slow_next_number(*args, **kwargs):
        threading.Event().wait(0.01)
        return original(*args, **kwargs)

    monkeypatch.setattr(invoice_ops, "next_number", slow_next_number)
    start = threading.Barrier(len(workers))
    results: list = [None] * len(workers)

    def run(index: int, work) -> None:
        try:
            with unit_of_work() as session:
                start.wait()
                issued = work(session)
                session.commit()
            results[index] = [(i.id, i.number) for i in issued]
        except Exception as error:  # noqa: BLE001 - reported by the assertion below
            results[index] = error

    threads = [threading.Thread(target=run, args=(i, w)) for i, w in enumerate(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    return results


def test_issuing_everything_from_four_connections_at_once(store, monkeypatch):
    import_yaml(family_of(12))
    close("2026-01-01")  # 12 customers x 2 billing dates = 24 drafts
    results = _issue_at_once(
        [lambda s: issue(s, through=date(2026, 1, 1)) for _ in range(4)], monkeypatch
    )
    assert not [r for r in results if isinstance(r, Exception)], results
    taken = [pair for r in results for pair in r]
    # every draft issued exactly once, by exactly one of the runs
    assert sorted(i for i, _ in taken) == sorted(i["id"] for i in invoices())
    assert len(taken) == 24
    numbers = sorted(n for _, n in taken)
    # gapless and unique per year: 12 in 2025 and 12 in 2026
    assert numbers == sorted(
        [f"NWB-2025-{n:06d}" for n in range(1, 13)] + [f"NWB-2026-{n:06d}" for n in range(1, 13)]
    )
    assert store.scalar("SELECT count(*) FROM invoices WHERE status = 'issued'") == 24


def test_two_runs_issuing_different_drafts_at_once_share_one_gapless_sequence(store, monkeypatch):
    import_yaml(family_of(11, start="2026-01-01"))
    close("2026-01-01")
    first, *ids = sorted(i["id"] for i in invoices())
    with unit_of_work() as session:  # the year's counter row exists before the race
        issue(session, ids=[first])
        session.commit()
    odd, even = ids[0::2], ids[1::2]
    results = _issue_at_once(
        [lambda s: issue(s, ids=odd), lambda s: issue(s, ids=even)], monkeypatch
    )
    assert not [r for r in results if isinstance(r, Exception)], results
    assert sorted(i for r in results for i, _ in r) == ids
    numbers = sorted(n for r in results for _, n in r)
    assert numbers == [f"NWB-2026-{n:06d}" for n in range(2, 12)]
    assert store.scalar("SELECT last_number FROM invoice_sequences WHERE year = 2026") == 11


def _refused(store, statement: str, **params) -> None:
    engine = get_engine(store.url)
    with pytest.raises(sa.exc.DBAPIError, match="frozen"), engine.begin() as connection:
        connection.execute(sa.text(statement), params)


def test_the_store_refuses_any_write_to_an_issued_invoice(store):
    import_yaml(family_of(1, start="2026-01-01"))
    close("2026-01-01", issue=True)
    invoice = one(status="issued")
    iid = invoice["id"]
    assert invoice["credit_total"] == "-5.00"  # promo: a ledger entry is linked to it
    line_id = store.scalar("SELECT min(id) FROM invoice_lines WHERE invoice_id = :i", i=iid)
    for statement in (
        "UPDATE invoices SET number = 'NWB-2026-999999' WHERE id = :i",
        "UPDATE invoices SET billing_date = '2026-02-01' WHERE id = :i",
        "UPDATE invoices SET status = 'draft' WHERE id = :i",
        "UPDATE invoices SET status = 'canceled' WHERE id = :i",
        "DELETE FROM invoices WHERE id = :i",
        "UPDATE invoice_lines SET product = 'Other' WHERE invoice_id = :i",
        "DELETE FROM invoice_lines WHERE invoice_id = :i",
        "UPDATE charges SET amount = 0 WHERE id IN "
        "(SELECT charge_id FROM invoice_charges WHERE invoice_id = :i)",
        "DELETE FROM charges WHERE id IN "
        "(SELECT charge_id FROM invoice_charges WHERE invoice_id = :i)",
        "DELETE FROM invoice_charges WHERE invoice_id = :i",
        "UPDATE invoice_charges SET invoice_id = invoice_id WHERE invoice_id = :i",
        "UPDATE credit_ledger SET amount = 0 WHERE invoice_id = :i",
        "DELETE FROM credit_ledger WHERE invoice_id = :i",
        "UPDATE invoice_documents SET sha256 = 'x' WHERE invoice_id = :i",
        "DELETE FROM invoice_documents WHERE invoice_id = :i",
    ):
        _refused(store, statement, i=iid)
    # Nothing new can be attached to it either.
    _refused(
        store,
        "INSERT INTO invoice_lines (invoice_id, position, serviced_customer_id, kind, amount) "
        "VALUES (:i, 99, 'c01', 'fixed', '1.00')",
        i=iid,
    )
    _refused(
        store,
        "INSERT INTO credit_ledger (grant_id, amount, kind, invoice_id, billing_date, "
        "created_at) VALUES ('promo', '5.00', 'rollback', :i, '2026-01-01', :now)",
        i=iid,
        now=datetime.now(UTC),
    )
    _refused(
        store, "UPDATE invoice_lines SET invoice_id = :i WHERE id = :line", i=iid, line=line_id
    )
    # The product's own code paths meet the same wall.
    with unit_of_work() as session:
        row = session.execute(
            sa.select(invoice_ops.Invoice.__table__).where(
                invoice_ops.Invoice.__table__.c.id == iid
            )
        ).one()
        with pytest.raises(sa.exc.DBAPIError, match="frozen"):
            discard_draft(session, row, "test", datetime.now(UTC))
    assert one(status="issued") == invoice
    # Paying and voiding are the status changes an issued invoice allows; then it is final.
    engine = get_engine(store.url)
    with engine.begin() as connection:
        connection.execute(sa.text("UPDATE invoices SET status = 'void' WHERE id = :i"), {"i": iid})
    _refused(store, "UPDATE invoices SET status = 'paid' WHERE id = :i", i=iid)
    _refused(store, "UPDATE invoices SET status = 'issued' WHERE id = :i", i=iid)


def test_a_draft_can_still_be_changed(store):
    import_yaml(family_of(1, start="2026-01-01"))
    close("2026-01-01")
    iid = one()["id"]
    engine = get_engine(store.url)
    with engine.begin() as connection:
        connection.execute(
            sa.text("UPDATE invoice_lines SET product = 'Renamed' WHERE invoice_id = :i"),
            {"i": iid},
        )
    assert {x["product"] for x in one()["lines"]} >= {"Renamed"}


@pytest.mark.parametrize(
    "command, said",
    [
        (["issue", "--through", "2026-01-01"], "nothing issued"),
        (["cancel", "{id}"], "nothing canceled"),
    ],
    ids=["issue", "cancel"],
)
def test_issuing_or_canceling_drafts_waits_for_no_close_and_changes_nothing_during_one(
    store, command, said
):
    """A close builds, credits and renders drafts step by step: a draft issued or canceled
    between two of its steps would leave the close half applied. While a close holds the
    store, `billing invoices issue` and `cancel` change nothing and say so in one line
    naming the close; once it has finished they go ahead."""
    from typer.testing import CliRunner

    from billing_core.cli.app import app
    from billing_core.store.locks import close_lock

    import_yaml(family_of(2))
    close("2026-01-01")
    before = sorted((i["id"], i["status"], i["number"]) for i in invoices())
    args = [a.format(id=before[0][0]) for a in command]
    with close_lock("a close started from the UI"):
        result = CliRunner().invoke(app, ["invoices", *args])
    assert result.exit_code == 1
    assert result.exception is None or isinstance(result.exception, SystemExit)
    [line] = result.stderr.splitlines()
    assert line.startswith(f"{said}: another close is running on store ")
    assert "a close started from the UI" in line
    assert sorted((i["id"], i["status"], i["number"]) for i in invoices()) == before
    result = CliRunner().invoke(app, ["invoices", *args])
    assert result.exit_code == 0, result.stderr
    assert sorted((i["id"], i["status"]) for i in invoices()) != [(i, s) for i, s, _ in before]
