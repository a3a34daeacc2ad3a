"""Usage ingested while closes run is counted once (SPEC §4, §10).

Files of events, some event ids repeated across files and in another order, are ingested
by `billing usage ingest` processes while closes run in threads of the test, issuing
January on the way: every event is stored once, and everything billed for a period (its
usage line on the issued invoice, and the adjustments the late events gave) adds up to the
period's events exactly.
"""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import time
from collections import defaultdict
from decimal import Decimal
from pathlib import Path

import pytest

from tests.helpers import close, import_yaml, invoices

BILLING = Path(sys.executable).with_name("billing")
CUSTOMERS = [f"c{n}" for n in range(8)]

CATALOG = "\n".join(
    [
        "customers:",
        *(f"  - {{id: {c}, name: Customer {c}, currency: USD}}" for c in CUSTOMERS),
        "metrics:",
        "  - {code: units, name: Units, aggregation: sum, field: quantity}",
        "prices:",
        "  - {code: per-unit, product: Units, currency: USD, model: per_unit, metric: units,",
        '     unit_price: "1.00"}',
        "subscriptions:",
        *(
            f"  - {{id: sub-{c}, customer: {c}, start: 2026-01-01, cadence: monthly, "
            "billing_day: 1, items: [{price: per-unit, timing: in_arrears}]}"
            for c in CUSTOMERS
        ),
    ]
)

FILES = 6
ROWS = 6_000  # per file
STRIDE = 5_000  # file k holds ids k*STRIDE .. k*STRIDE+ROWS-1: 1,000 shared with the next


def _event(n: int) -> tuple[str, str, str, Decimal]:
    """Event n, the same whichever file carries it: (id, customer, timestamp, quantity)."""
    month, day = (1, 1 + n % 31) if n % 5 else (2, 1 + n % 28)
    stamp = f"2026-{month:02d}-{day:02d}T{n % 24:02d}:{n % 60:02d}:00Z"
    return f"ev-{n}", CUSTOMERS[n % len(CUSTOMERS)], stamp, Decimal(n % 7 + 1) / 4


def _write_files(folder: Path) -> list[Path]:
    shuffle = random.Random(20260201)
    paths = []
    for k in range(FILES):
        numbers = list(range(k * STRIDE, k * STRIDE + ROWS))
        if k % 2:
            shuffle.shuffle(numbers)  # the shared ids in another order than the neighbour's
        path = folder / f"usage-{k}.csv"
        rows = ["event_id,customer,metric,timestamp,quantity"]
        for n in numbers:
            event_id, customer, stamp, quantity = _event(n)
            rows.append(f"{event_id},{customer},units,{stamp},{quantity}")
        path.write_text("\n".join(rows) + "\n", encoding="utf-8")
        paths.append(path)
    return paths


@pytest.mark.slow
def test_usage_ingested_while_closes_run_is_counted_once(store, monkeypatch, tmp_path):
    monkeypatch.setenv("BILLING_CLOSE_LOCK_TIMEOUT", "300")
    monkeypatch.setenv("BILLING_DOCUMENT_FORMATS", "html")
    started = time.monotonic()
    import_yaml(CATALOG)
    paths = _write_files(tmp_path)
    distinct = {n for k in range(FILES) for n in range(k * STRIDE, k * STRIDE + ROWS)}
    expected: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    for n in distinct:
        _, customer, stamp, quantity = _event(n)
        expected[(customer, stamp[:7])] += quantity

    ingesting = threading.Event()
    ingesting.set()
    january_issued = threading.Event()
    closes: list[tuple[str, float, float]] = []
    failures: list[BaseException] = []

    def closing(name: str) -> None:
        turn = 0
        while ingesting.is_set():
            began = time.monotonic()
            try:
                if turn % 2 == 0:
                    close("2026-02-01", issue=True)
                    # Issued with usage for every customer (on a busy machine the first
                    # files may not have arrived yet at the first close).
                    if store.scalar("SELECT count(*) FROM invoices WHERE status = 'issued'") == len(
                        CUSTOMERS
                    ):
                        january_issued.set()
                else:
                    close("2026-03-01")
            except BaseException as error:  # noqa: BLE001 - the test reads it
                failures.append(error)
                return
            closes.append((name, began, time.monotonic()))
            turn += 1

    def ingest(path: Path) -> subprocess.Popen:
        return subprocess.Popen(
            [str(BILLING), "usage", "ingest", str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    closers = [threading.Thread(target=closing, args=(f"closer-{i}",)) for i in range(2)]
    processes = [ingest(paths[0]), ingest(paths[1])]
    for closer in closers:
        closer.start()
    # The rest arrive after January was issued: part of their January usage is late.
    assert january_issued.wait(120), failures
    processes += [ingest(path) for path in paths[2:]]
    outputs = [process.communicate(timeout=300) for process in processes]
    ingested = time.monotonic()
    ingesting.clear()
    for closer in closers:
        closer.join(300)

    assert not failures, failures
    for process, (out, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, (process.args, out, err)
    assert any(began < ingested for _, began, _ in closes[1:]), closes  # closes overlapped

    # Every event stored once.
    count, unique = store.rows("SELECT count(*), count(DISTINCT event_id) FROM usage_events")[0]
    assert (count, unique) == (len(distinct), len(distinct))

    close("2026-03-01")
    billed: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    quantities: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    for invoice in invoices():
        for line in invoice["lines"]:
            if line["kind"] in ("usage", "adjustment"):
                key = (line["serviced_customer"], line["period_start"][:7])
                billed[key] += Decimal(line["amount"])
                quantities[key] += Decimal(line["quantity"])
    # At 1.00 a unit, each period's amount is its quantity, rounded once per line.
    assert dict(quantities) == dict(expected)
    assert dict(billed) == dict(expected)
    assert store.scalar("SELECT count(*) FROM invoices WHERE status = 'issued'") == len(CUSTOMERS)
    late = [
        line for invoice in invoices() for line in invoice["lines"] if line["kind"] == "adjustment"
    ]
    assert late, "no January usage arrived after January was issued"
    assert all(line["period_start"] == "2026-01-01" for line in late)
    print(f"{len(closes)} closes beside the ingestion; {time.monotonic() - started:.1f} s")
