"""Benchmark: what a big close's flow result and invoice table cost `billing close` after
its steps, the way the command paid them before and the way it pays them now.

Loads close_benchmark.py's store into a throwaway PostgreSQL database (or takes --database,
a store already closed through 2026-02-01), closes it in this process without Prefect
(`close_locally`: the drafts and their previews), then times, --repeat times each, in
alternation:

- Prefect's walk of a flow's return value (`resolve_futures_to_states`, which the flow
  engine runs on whatever a flow returns) over the period close's result as it was (every
  step's report and the whole diff of the drafts the close made: what its first close
  returned) and as it is now (`flows.runtime.brief` reports, `flows.close_diff.counted`);
- the invoice table `billing close` printed (one row per invoice through the date) and
  what it prints now (`commands_close._print_invoices`: a summary beyond `LISTED`), on
  the console the command uses when piped (160 columns), writing to /dev/null.

Each is reported in wall seconds and in this thread's CPU seconds (steadier on a shared
machine: both pieces are pure Python in one thread).

    .venv/bin/python benchmarks/close_output_cost.py --events 1000000 --repeat 5
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from close_benchmark import load  # noqa: E402
from usage_rating import database  # noqa: E402

THROUGH = date(2026, 2, 1)


def results(through: date) -> tuple[dict, dict]:
    """The period close's result before and now, for a first close of the store: no drafts
    before it, every draft after it."""
    from billing_core.domain.close_diff import diff_invoices
    from billing_core.steps import close as steps
    from billing_core.steps.dry_run import picture
    from billing_core.store.engine import unit_of_work
    from flows.close_diff import counted
    from flows.runtime import brief

    reports = [r.as_dict() for r in steps.close_locally(through)]
    with unit_of_work() as session:
        after = picture(session)
    diff = {"through": through.isoformat(), "issue": False, "dry_run": False}
    diff |= diff_invoices({}, after)
    head = {"close_run_id": 1, "through": through.isoformat(), "issue": False}
    before = {**head, "steps": reports, "diff": diff}
    now = {**head, "steps": [brief(r) for r in reports], "diff": counted(diff)}
    return before, now


def timed(fn) -> tuple[float, float]:
    """Wall and CPU seconds of `fn()` (this thread's CPU: what it costs whatever else the
    machine runs)."""
    started, cpu = time.perf_counter(), time.thread_time()
    fn()
    return time.perf_counter() - started, time.thread_time() - cpu


def measure(through: date, repeat: int) -> dict:
    from prefect.futures import resolve_futures_to_states
    from rich.console import Console

    from billing_core.cli import commands_close
    from billing_core.steps.documents import summary_rows

    started = time.perf_counter()
    before, now = results(through)
    closed = time.perf_counter() - started
    sink = open(os.devnull, "w")  # noqa: SIM115 - closed below
    commands_close.out = Console(file=sink, width=160, highlight=False, markup=False, emoji=False)

    def every_row() -> None:  # what `billing close` printed before
        rows = summary_rows(None, through)
        table = commands_close._invoices_table(rows, f"Invoices through {through}")
        commands_close.out.print(table)

    pieces = {
        "walk_result_before": lambda: resolve_futures_to_states(before),
        "walk_result_now": lambda: resolve_futures_to_states(now),
        "invoices_table_before": every_row,
        "invoices_table_now": lambda: commands_close._print_invoices(through),
    }
    seconds: dict[str, list[float]] = {name: [] for name in pieces}
    cpu_seconds: dict[str, list[float]] = {name: [] for name in pieces}
    for _ in range(repeat):
        for name, piece in pieces.items():
            wall, cpu = timed(piece)
            seconds[name].append(round(wall, 4))
            cpu_seconds[name].append(round(cpu, 4))
    sink.close()
    invoices = len(before["diff"]["invoices"])
    lines = sum(len(i["lines"]) for i in before["diff"]["invoices"])
    return {
        "close_locally_seconds": round(closed, 1),
        "invoices": invoices,
        "lines": lines,
        "result_json_bytes": {
            "before": len(json.dumps(before, default=str)),
            "now": len(json.dumps(now, default=str)),
        },
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "median": {name: round(statistics.median(s), 3) for name, s in seconds.items()},
        "median_cpu": {name: round(statistics.median(s), 3) for name, s in cpu_seconds.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--families", type=int, default=2_000)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--postgres", default="postgresql://postgres@localhost:5432/postgres")
    parser.add_argument("--database", default=None, help="a store to use instead of loading one")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from billing_core.config import normalize_database_url

    work = Path(tempfile.mkdtemp(prefix="billing-close-output-"))
    os.environ["BILLING_OUTPUT_DIR"] = str(work / "documents")
    load_before = os.getloadavg()
    try:
        if args.database:
            os.environ["BILLING_DATABASE_URL"] = normalize_database_url(args.database)
            found = measure(THROUGH, args.repeat)
        else:
            with database(normalize_database_url(args.postgres)) as url:
                env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
                env["BILLING_DATABASE_URL"] = os.environ["BILLING_DATABASE_URL"] = url
                rng = random.Random(42)
                load(url, env, work, args.customers, args.families, args.events, rng)
                found = measure(THROUGH, args.repeat)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    found["load_average"] = {"before": load_before, "after": os.getloadavg()}
    print("median seconds, wall:", json.dumps(found["median"], indent=2))
    print("median seconds, CPU:", json.dumps(found["median_cpu"], indent=2))
    print(
        f"{found['invoices']:,} invoices, {found['lines']:,} lines; result as JSON "
        f"{found['result_json_bytes']['before']:,} bytes before, "
        f"{found['result_json_bytes']['now']:,} now; load average {found['load_average']}"
    )
    if args.json:
        args.json.write_text(json.dumps(found, indent=2) + "\n")


if __name__ == "__main__":
    main()
