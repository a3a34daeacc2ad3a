"""`billing demo`: the main job on a fresh SQLite store, start to finish."""

from __future__ import annotations

import csv
import os
import random
import shutil
from datetime import UTC, date, datetime, timedelta
from importlib import resources
from pathlib import Path

import sqlalchemy as sa
from rich.console import Console
from rich.table import Table
from rich.text import Text

DEMO_CLOSES = (date(2026, 2, 1), date(2026, 3, 1), date(2026, 4, 1))
DEMO_DRAFT_CLOSE = date(2026, 5, 1)


def sample_catalog() -> Path:
    return Path(str(resources.files("billing_core.sample") / "catalog.yaml"))


def generate_usage(path: Path, start: date, end: date, seed: int = 7) -> int:
    """Deterministic sample usage for the sample catalog's metered customers.

    Van Dijk's events draw from a generator of their own, so the other customers' usage
    (and their invoices' numbers) is what it was before Van Dijk joined the catalog.
    """
    rng = random.Random(seed)
    van_dijk = random.Random(f"{seed}-van-dijk")
    count = 0
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["event_id", "customer", "metric", "timestamp", "quantity", "region"])
        day = start
        while day < end:
            stamp = datetime(day.year, day.month, day.day, tzinfo=UTC)
            for customer, scale in (
                ("northwind", 900),
                ("northwind-retail", 6000),
                ("northwind-logistics", 3500),
                ("northwind-labs", 1200),
            ):
                for n in range(3):
                    count += 1
                    at = stamp + timedelta(hours=rng.randrange(24), minutes=rng.randrange(60))
                    writer.writerow(
                        [
                            f"{customer}-{day:%Y%m%d}-{n}",
                            customer,
                            "api_calls",
                            at.isoformat().replace("+00:00", "Z"),
                            rng.randrange(scale // 2, scale),
                            rng.choice(("us", "eu")),
                        ]
                    )
            count += 1
            writer.writerow(
                [
                    f"brightside-seats-{day:%Y%m%d}",
                    "brightside",
                    "seats",
                    (stamp + timedelta(hours=12)).isoformat().replace("+00:00", "Z"),
                    rng.randrange(28, 46),
                    "",
                ]
            )
            count += 1
            writer.writerow(
                [
                    f"kessler-storage-{day:%Y%m%d}",
                    "kessler",
                    "storage_gb",
                    (stamp + timedelta(hours=9)).isoformat().replace("+00:00", "Z"),
                    320 + (day - start).days * 3,
                    "",
                ]
            )
            for n in range(2):
                count += 1
                at = stamp + timedelta(hours=van_dijk.randrange(24), minutes=van_dijk.randrange(60))
                writer.writerow(
                    [
                        f"van-dijk-{day:%Y%m%d}-{n}",
                        "van-dijk",
                        "api_calls",
                        at.isoformat().replace("+00:00", "Z"),
                        van_dijk.randrange(15000, 30000),
                        "eu",
                    ]
                )
            day += timedelta(days=1)
    return count


def run_demo(folder: Path, console: Console) -> None:
    """Build the store, import, ingest, close and issue three months, draft a fourth."""
    folder = folder.resolve()
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    # Every step below reads its settings from the environment: the demo store and folder.
    os.environ["BILLING_DATABASE_URL"] = f"sqlite:///{folder / 'billing.db'}"
    os.environ["BILLING_OUTPUT_DIR"] = str(folder / "documents")
    _load_sample(folder, console)
    _close_months(console)
    _print_summary(folder, console)


def _load_sample(folder: Path, console: Console) -> None:
    """A migrated store with the sample catalog and four months of generated usage."""
    from billing_core.inputs.catalog import import_catalog, load_file, parse
    from billing_core.inputs.usage import ingest_files
    from billing_core.store.engine import unit_of_work, upgrade

    upgrade()
    console.print(Text("Demo store", "bold") + f" {folder / 'billing.db'}")
    with unit_of_work() as session:
        import_catalog(session, parse(load_file(sample_catalog())))
        session.commit()
    usage_file = folder / "usage.csv"
    events = generate_usage(usage_file, date(2026, 1, 1), date(2026, 4, 30))
    with unit_of_work() as session:
        result = ingest_files(session, [usage_file])
        session.commit()
    console.print(f"imported the sample catalog; ingested {result.loaded} of {events} events")


def _close_months(console: Console) -> None:
    from billing_core.cli.common import err
    from billing_core.cli.prefect_server import flow_api

    with flow_api(announce=err.print):
        from flows.period_close import period_close

        for through in DEMO_CLOSES:
            period_close(through=through, issue=True)
            console.print(f"closed and issued through {through}")
        period_close(through=DEMO_DRAFT_CLOSE, issue=False)
        console.print(f"closed through {DEMO_DRAFT_CLOSE} (drafts for review)")


def _print_summary(folder: Path, console: Console) -> None:
    """Every invoice with its total and its document (relative to the demo folder)."""
    from billing_core.domain.money import money_str
    from billing_core.steps.documents import summary_rows

    rows = summary_rows()
    docs = _documents(folder)
    table = Table(title=f"Demo invoices (documents under {folder})")
    for col in ("number", "status", "billed customer", "billing date", "total", "document"):
        table.add_column(col, justify="right" if col == "total" else "left", no_wrap=True)
    for r in rows:
        found = docs.get(r.id, {})
        shown = found.get("html", "")
        if "pdf" in found:
            shown += "  (+ .pdf)"
        table.add_row(
            r.number or f"draft {r.id}",
            r.status,
            r.billed_customer_id,
            r.billing_date.isoformat(),
            f"{money_str(r.total, r.currency)} {r.currency}",
            shown,
        )
    console.print(table)
    issued = sum(1 for r in rows if r.status == "issued")
    console.print(
        f"{issued} invoices issued, {len(rows) - issued} drafts; open "
        f"{folder / 'documents'} to read them"
    )


def _documents(folder: Path) -> dict[int, dict[str, str]]:
    """Each invoice's document paths by format, relative to the demo folder."""
    from billing_core.store.engine import unit_of_work
    from billing_core.store.models import InvoiceDocument

    with unit_of_work() as session:
        d = InvoiceDocument.__table__.c
        docs: dict[int, dict[str, str]] = {}
        for invoice_id, fmt, path in session.execute(sa.select(d.invoice_id, d.format, d.path)):
            docs.setdefault(invoice_id, {})[fmt] = str(Path(path).relative_to(folder))
    return docs
