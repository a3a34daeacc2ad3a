"""`billing invoices preview` on each store: the invoices a close would build, and not one
row or file written."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import sqlalchemy as sa
from typer.testing import CliRunner

from billing_core.cli.app import app
from billing_core.store.engine import get_engine
from tests.helpers import close, import_yaml, ingest_csv, invoices, one

CATALOG = """
tax_rates: [{jurisdiction: US-NY, rate: "0.10"}]
customers:
  - {id: gi, name: Global Industries, currency: USD, jurisdiction: US-NY}
  - {id: gi-eu, name: GI Europe, currency: USD, parent: gi}
  - {id: solo, name: Solo Ltd, currency: USD}
metrics:
  - {code: calls, name: API calls, aggregation: sum, field: quantity}
prices:
  - {code: license, product: Platform License, currency: USD, model: flat, amount: "5000.00"}
  - {code: calls, product: API usage, currency: USD, model: per_unit, metric: calls,
     unit_price: "0.50"}
subscriptions:
  - {id: s-gi, customer: gi, start: 2026-01-01, cadence: monthly, billing_day: 1,
     items: [{price: license, timing: in_arrears}]}
  - {id: s-eu, customer: gi-eu, start: 2026-01-01, cadence: monthly, billing_day: 1,
     items: [{price: calls, timing: in_arrears}]}
  - {id: s-solo, customer: solo, start: 2026-01-01, cadence: monthly, billing_day: 1,
     items: [{price: license, timing: in_arrears}]}
credits:
  - {id: eu-welcome, customer: gi-eu, amount: "100.00", currency: USD, effective: 2026-01-01}
"""


def everything(url: str) -> dict[str, list[tuple]]:
    """Every row of every table, every column (row counts included by construction)."""
    engine = get_engine(url)
    meta = sa.MetaData()
    meta.reflect(engine)
    with engine.connect() as connection:
        return {
            name: sorted(tuple(map(str, row)) for row in connection.execute(sa.select(table)))
            for name, table in sorted(meta.tables.items())
        }


def files() -> dict[str, str]:
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(Path("documents").rglob("*"))
        if p.is_file()
    }


def preview(customer: str, through: str) -> str:
    done = CliRunner().invoke(app, ["invoices", "preview", customer, "--through", through])
    assert done.exit_code == 0, done.output
    return done.output


def totals_due(output: str) -> list[str]:
    return re.findall(r"Total due \(USD\)\s+(\$[\d,.]+)", output)


def test_preview_writes_nothing_and_shows_what_a_close_builds(store):
    import_yaml(CATALOG)
    ingest_csv(
        "event_id,customer,metric,timestamp,quantity\n"
        "e1,gi-eu,calls,2026-01-05T00:00:00Z,100\n"
        "e2,gi-eu,calls,2026-02-05T00:00:00Z,300\n"
    )
    close("2026-02-01")  # a draft for 1 Feb and its HTML preview on disk
    # Late-arriving January usage: a close would discard the 1 Feb draft and rebuild it.
    ingest_csv(
        "event_id,customer,metric,timestamp,quantity\ne3,gi-eu,calls,2026-01-20T00:00:00Z,20\n",
        name="more.csv",
    )
    rows, documents = everything(store.url), files()
    assert rows["invoices"] and documents  # there is something a careless preview could lose

    output = preview("gi", "2026-03-01")

    assert everything(store.url) == rows
    assert files() == documents
    assert "nothing was written" in output
    # 1 Feb: 5000.00 + tax 500.00; GI Europe's 120 calls x 0.50 = 60.00 + tax 6.00, less
    # its 100.00 credit up to 66.00 -> total 5500.00.
    # 1 Mar: 5000.00 + 500.00; 300 calls = 150.00 + 15.00, less the credit's last 34.00
    # -> 5631.00.
    assert totals_due(output) == ["$5,500.00", "$5,631.00"]
    assert output.index("GI Europe (gi-eu)") > output.index("Global Industries (gi)")
    assert "Credit eu-welcome" in output and "Usage breakdown" in output

    close("2026-03-01")  # the real close builds exactly what the preview showed
    assert [i["total"] for i in invoices() if i["billed_customer"] == "gi"] == [
        "5500.00",
        "5631.00",
    ]


def test_preview_of_a_customer_billed_by_its_parent(store):
    import_yaml(CATALOG)
    output = preview("gi-eu", "2026-02-01")
    assert "billed to another customer" in output
    assert "Global Industries (gi) · billed customer" in output
    assert totals_due(output) == ["$5,500.00"]  # 5000.00 + 500.00 tax, no usage yet
    assert invoices() == []


def test_preview_leaves_issued_invoices_and_says_when_nothing_is_due(store):
    import_yaml(CATALOG)
    close("2026-02-01", issue=True)
    before = one(billed_customer="solo")
    output = preview("solo", "2026-02-01")
    assert "no invoice: nothing would be billed to solo" in output
    assert one(billed_customer="solo") == before


def test_preview_of_an_unknown_customer_is_refused(store):
    done = CliRunner().invoke(app, ["invoices", "preview", "nobody", "--through", "2026-02-01"])
    assert done.exit_code == 1
    assert "no customer 'nobody'" in done.output
