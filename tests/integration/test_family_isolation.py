"""A bad family never stops the others: the close finishes every family it can, names
each one that failed with the step and the reason, and ends failed; after the fix the
next close (or a Retry) completes it, changing nothing already right."""

from __future__ import annotations

import os
from datetime import date

import pytest
import yaml

from billing_core.steps import close as steps
from billing_core.steps.failures import CloseFailed
from billing_core.store.engine import dispose_engines
from tests.helpers import close, import_yaml, ingest_csv, invoices
from tests.integration.test_close import POOLED, USAGE


def _with_two_solo_families(catalog: str) -> str:
    """The pooled family of test_close, and two single-customer families (USD and EUR)."""
    data = yaml.safe_load(catalog)
    data["customers"] += [
        {"id": "solo-a", "name": "Solo A", "currency": "USD"},
        {"id": "solo-b", "name": "Solo B", "currency": "EUR"},
    ]
    data["prices"] += [
        {
            "code": "fee-a",
            "product": "Fee A",
            "currency": "USD",
            "model": "flat",
            "amount": "10.00",
        },
        {
            "code": "fee-b",
            "product": "Fee B",
            "currency": "EUR",
            "model": "flat",
            "amount": "20.00",
        },
    ]
    for solo, fee in (("a", "fee-a"), ("b", "fee-b")):
        data["subscriptions"].append(
            {
                "id": f"sub-{solo}",
                "customer": f"solo-{solo}",
                "start": "2026-01-01",
                "cadence": "monthly",
                "billing_day": 1,
                "items": [{"price": fee, "timing": "in_advance"}],
            }
        )
    return yaml.safe_dump(data, sort_keys=False)


FAMILIES = _with_two_solo_families(POOLED)


def execute(store, sql: str) -> None:
    import sqlalchemy as sa

    from billing_core.store.engine import get_engine

    with get_engine(store.url).begin() as connection:
        connection.execute(sa.text(sql))


def _break(store) -> None:
    """What a store written before the import refused such amounts may hold."""
    execute(store, """UPDATE prices SET terms = '{"amount": "1e400"}' WHERE code = 'fee-b'""")


def _mend(store) -> None:
    execute(store, """UPDATE prices SET terms = '{"amount": "20.00"}' WHERE code = 'fee-b'""")


def _by_family(exported: list[dict], family: set[str], keep: bool) -> list[dict]:
    """Invoices of (or outside) some families, without what a later issuing run changes:
    ids, the issuing time and the number (checked apart: gapless, in order)."""
    return [
        {k: v for k, v in i.items() if k not in ("id", "issued_at", "number")}
        for i in exported
        if (i["billed_customer"] in family) == keep
    ]


def _clean_close(another_store, tmp_path, through: str, issue: bool = False) -> list[dict]:
    clean = another_store("clean")
    before = os.environ["BILLING_DATABASE_URL"]
    os.environ["BILLING_DATABASE_URL"] = clean.url
    try:
        import_yaml(FAMILIES, folder=tmp_path / "clean")
        ingest_csv(USAGE, folder=tmp_path / "clean")
        close(through, issue=issue)
        return invoices()
    finally:
        os.environ["BILLING_DATABASE_URL"] = before
        dispose_engines()


def test_the_catalog_has_three_families(store):
    import_yaml(FAMILIES)
    assert sorted(steps.all_families()) == ["hq", "solo-a", "solo-b"]


@pytest.mark.parametrize("issue", [False, True])
def test_a_family_that_fails_rating_leaves_the_others_closed(store, another_store, tmp_path, issue):
    import_yaml(FAMILIES)
    ingest_csv(USAGE)
    close("2026-01-01")  # January's drafts of every family
    _break(store)
    solo_b_before = _by_family(invoices(), {"solo-b"}, keep=True)

    with pytest.raises(CloseFailed) as failed:
        close("2026-02-01", issue=issue)
    assert set(failed.value.failures) == {"solo-b"}
    failure = failed.value.failures["solo-b"]
    assert failure["step"] == "rate"
    assert "InvalidOperation" in failure["reason"]
    assert "solo-b" in str(failed.value) and "rate" in str(failed.value)

    expected = _clean_close(another_store, tmp_path, "2026-02-01", issue=issue)
    # Every other family is exactly as a close without the fault leaves it ...
    assert _by_family(invoices(), {"solo-b"}, keep=False) == _by_family(
        expected, {"solo-b"}, keep=False
    )
    # ... and the failed one as it was: its drafts neither rebuilt nor issued.
    assert _by_family(invoices(), {"solo-b"}, keep=True) == solo_b_before
    assert all(i["status"] == "draft" for i in invoices() if i["billed_customer"] == "solo-b")

    _mend(store)
    close("2026-02-01", issue=issue)
    assert _by_family(invoices(), set(), keep=False) == _by_family(expected, set(), keep=False)
    numbers = sorted(i["number"] for i in invoices() if i["number"])
    if issue:  # gapless; solo-b's, issued by the later run, come after the others'
        assert numbers == [f"INV-2026-{n:06d}" for n in range(1, 7)]
        by_number = {i["number"]: i["billed_customer"] for i in invoices()}
        assert [by_number[n] for n in numbers[-2:]] == ["solo-b", "solo-b"]
    else:
        assert numbers == []


def test_a_failure_in_every_family_fails_the_step_with_each_family_named(store):
    import_yaml(FAMILIES)
    ingest_csv(USAGE)
    execute(store, """UPDATE prices SET terms = '{"amount": "1e400"}' WHERE model = 'flat'""")
    with pytest.raises(CloseFailed) as failed:
        close("2026-02-01")
    assert set(failed.value.failures) == {"hq", "solo-a", "solo-b"}
    assert invoices() == []


def test_a_database_hiccup_is_not_taken_for_a_family_fault(store, monkeypatch):
    """Errors of the store or the machine stop the step (it is retried); they are not
    bisected into family failures."""
    import sqlalchemy as sa

    from billing_core.steps import rate as rating

    import_yaml(FAMILIES)
    calls = []

    def hiccup(session, *args, **kwargs):
        calls.append(args)
        raise sa.exc.OperationalError("SELECT 1", {}, Exception("server closed the connection"))

    monkeypatch.setattr(rating, "rate", hiccup)
    with pytest.raises(sa.exc.OperationalError):
        steps.rate(date(2026, 2, 1))
    assert len(calls) == 1
