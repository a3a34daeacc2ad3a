"""What each step's report says about money, for the operator's summaries: amounts rated,
invoices created, changed, unchanged and removed with their totals, credit applied, issued
totals, per currency; documents written and unchanged; rows refused."""

from __future__ import annotations

from decimal import Decimal

from billing_core.report import StepReport
from tests.helpers import close, import_yaml, ingest_csv
from tests.integration.test_close import POOLED, USAGE

MORE = """
event_id,customer,metric,timestamp,quantity
a-3,account-a,units,2026-01-20T10:00:00Z,100
"""


def by_step(reports: list[StepReport]) -> dict[str, dict]:
    return {r.step: r.as_dict() for r in reports}


def test_a_close_reports_money_per_currency(store):
    import_yaml(POOLED)
    ingest_csv(USAGE)
    first = by_step(close("2026-02-01"))
    rate = first["rate"]["details"]
    # Two platform fees (January and February, in advance) and the pooled usage.
    assert rate["money"]["rated"] == {"USD": "1560.00"}
    assert "adjustments" not in rate["money"] and rate["adjustments"] == 0
    consolidated = first["consolidate roll-ups"]["details"]
    assert {k: consolidated[f"invoices_{k}"] for k in ("created", "changed", "unchanged")} == {
        "created": 2,
        "changed": 0,
        "unchanged": 0,
    }
    assert consolidated["money"] == {"created": {"USD": "1560.00"}}  # before credits
    credits = first["apply credits"]["details"]
    assert credits["money"] == {"applied": {"USD": "150.00"}}
    assert credits["drafts_credited"] == 2
    render = first["render invoices"]["details"]
    assert (render["documents"], render["documents_unchanged"]) == (2, 0)

    # More usage in January: February's draft is rebuilt, January's stays.
    ingest_csv(MORE, name="more.csv")
    second = by_step(close("2026-02-01"))
    consolidated = second["consolidate roll-ups"]["details"]
    assert (consolidated["invoices_changed"], consolidated["invoices_unchanged"]) == (1, 1)
    assert consolidated["money"]["changed"] == {"USD": "1550.00"}
    assert consolidated["money"]["changed_from"] == {"USD": "1460.00"}
    assert consolidated["money"]["unchanged"] == {"USD": "100.00"}
    assert second["apply credits"]["details"]["money"] == {"applied": {"USD": "150.00"}}
    assert second["apply credits"]["details"]["drafts_credited"] == 1
    render = second["render invoices"]["details"]
    assert (render["documents"], render["documents_unchanged"]) == (1, 1)

    issued = by_step(close("2026-02-01", issue=True))["issue invoices"]["details"]
    assert issued["money"] == {"issued": {"USD": "1500.00"}}  # after credits: 0 + 1500


def test_shards_add_up_their_money_and_keep_the_latest_attempt():
    one = StepReport("rate", details={"money": {"rated": {"USD": "1.10"}}, "attempt": 1})
    two = StepReport(
        "rate",
        details={"money": {"rated": {"USD": "2.20", "EUR": "3"}, "late": {"EUR": "1"}}},
    )
    two.details["attempt"] = 2
    merged = one.merge(two).details
    assert merged["money"] == {"rated": {"USD": "3.30", "EUR": "3"}, "late": {"EUR": "1"}}
    assert merged["attempt"] == 2
    report = StepReport("rate")
    report.money("rated", {"USD": Decimal("1.5")})
    report.money("rated", {"USD": Decimal("2.5")})
    report.money("nothing", {})
    assert report.details["money"] == {"rated": {"USD": "4.0"}}
