#!/usr/bin/env python3
"""Run billing scenarios through the `billing` CLI and compare the exported invoices.

Each scenario is a folder holding `scenario.json` and the files its steps name:

    {"description": "...",
     "steps": [["import", "catalog.yaml"], ["usage", "ingest", "usage.csv"],
               ["close", "--through", "2026-02-01"],
               {"run": ["import", "bad.yaml"], "fails": true, "stderr_contains": "cycle"}],
     "expect": {"exact": true,
                "invoices": [{"billed_customer": "hq", "billing_date": "2026-02-01",
                              "total": "1360.00",
                              "lines": [{"serviced_customer": "a", "kind": "usage",
                                         "amount": "874.29"}]}]}}

Every scenario runs on a fresh store: a SQLite file by default, or a fresh PostgreSQL
database with --postgres ADMIN_URL. Steps run in the scenario folder. After the steps,
`billing invoices export --format json` is compared with `expect`: each expected invoice
must match one exported invoice on every field it gives (money compared as decimals),
each expected line must match a distinct line of that invoice, and with "exact" the
number of invoices must be equal too.

Usage: run.py [--billing CMD] [--postgres ADMIN_URL] [-k SUBSTRING] [SCENARIO_DIR ...]
Prints one line per scenario and closes with 'N passed, M failed'.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import uuid
from decimal import Decimal, InvalidOperation
from pathlib import Path

HERE = Path(__file__).resolve().parent
MONEY_FIELDS = {
    "subtotal",
    "discount_total",
    "tax_total",
    "credit_total",
    "total",
    "amount",
    "quantity",
    "unit_price",
}


def same(field: str, want, got) -> bool:
    if field in MONEY_FIELDS and want is not None and got is not None:
        try:
            return Decimal(str(want)) == Decimal(str(got))
        except InvalidOperation:
            return False
    return want == got


def matches(want: dict, got: dict) -> bool:
    return all(same(k, v, got.get(k)) for k, v in want.items() if k != "lines")


def check_invoice(want: dict, got: dict) -> str | None:
    if not matches(want, got):
        diff = {
            k: (v, got.get(k))
            for k, v in want.items()
            if k != "lines" and not same(k, v, got.get(k))
        }
        return f"fields differ (want, got): {diff}"
    free = list(got.get("lines") or [])
    for line in want.get("lines", []):
        hit = next((i for i, g in enumerate(free) if matches(line, g)), None)
        if hit is None:
            return f"no line matches {line}"
        free.pop(hit)
    return None


def key(inv: dict) -> tuple:
    return (inv.get("billed_customer"), inv.get("billing_date"))


def compare(expect: dict, invoices: list[dict]) -> str | None:
    wanted = expect.get("invoices", [])
    if expect.get("exact") and len(wanted) != len(invoices):
        return (
            f"{len(invoices)} invoices exported, {len(wanted)} expected: "
            f"{sorted(map(key, invoices), key=str)}"
        )
    pool = list(invoices)
    for want in wanted:
        candidates = [
            g
            for g in pool
            if all(
                same(k, want[k], g.get(k))
                for k in ("billed_customer", "billing_date", "status")
                if k in want
            )
        ]
        if not candidates:
            return f"no invoice for {key(want)}; exported: {sorted(map(key, invoices), key=str)}"
        reasons = []
        for got in candidates:
            reason = check_invoice(want, got)
            if reason is None:
                pool.remove(got)
                break
            reasons.append(reason)
        else:
            return f"invoice {key(want)}: {reasons[0]}"
    return None


class Store:
    """A fresh SQLite file or PostgreSQL database for one scenario."""

    def __init__(self, workdir: Path, admin_url: str | None):
        self.admin_url = admin_url
        if admin_url:
            self.name = "scenario_" + uuid.uuid4().hex[:12]
            base = admin_url.rsplit("/", 1)[0]
            self.url = f"{base}/{self.name}"
            subprocess.run(
                ["psql", libpq(admin_url), "-qc", f'CREATE DATABASE "{self.name}"'],
                check=True,
                capture_output=True,
            )
        else:
            self.url = f"sqlite:///{workdir / 'billing.db'}"

    def drop(self) -> None:
        if self.admin_url:
            subprocess.run(
                [
                    "psql",
                    libpq(self.admin_url),
                    "-qc",
                    f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)',
                ],
                capture_output=True,
            )


def libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def run_scenario(
    folder: Path, billing: list[str], admin_url: str | None, timeout: int
) -> str | None:
    spec = json.loads((folder / "scenario.json").read_text())
    work = Path(tempfile.mkdtemp(prefix="scenario-"))
    for item in folder.iterdir():
        if item.is_file():
            shutil.copy(item, work / item.name)
    store = Store(work, admin_url)
    env = dict(
        os.environ, BILLING_DATABASE_URL=store.url, BILLING_OUTPUT_DIR=str(work / "documents")
    )
    try:

        def call(args: list[str]) -> subprocess.CompletedProcess:
            return subprocess.run(
                billing + args, cwd=work, env=env, text=True, capture_output=True, timeout=timeout
            )

        done = call(["db", "upgrade"])
        if done.returncode:
            return f"`db upgrade` exited {done.returncode}: {tail(done)}"
        for step in spec["steps"]:
            step = step if isinstance(step, dict) else {"run": step}
            done = call(step["run"])
            shown = " ".join(step["run"])
            if step.get("fails"):
                if done.returncode == 0:
                    return f"`{shown}` should have been refused, but exited 0"
                needle = step.get("stderr_contains")
                if needle and needle.lower() not in (done.stderr + done.stdout).lower():
                    return f"`{shown}` refused without saying {needle!r}: {tail(done)}"
            elif done.returncode:
                return f"`{shown}` exited {done.returncode}: {tail(done)}"
        done = call(["invoices", "export", "--format", "json"])
        if done.returncode:
            return f"`invoices export` exited {done.returncode}: {tail(done)}"
        try:
            invoices = json.loads(done.stdout)
        except json.JSONDecodeError as err:
            return f"export is not JSON ({err}): {done.stdout[:200]!r}"
        return compare(spec["expect"], invoices)
    except subprocess.TimeoutExpired as err:
        return f"timed out after {timeout}s: {err.cmd}"
    finally:
        store.drop()
        shutil.rmtree(work, ignore_errors=True)


def tail(done: subprocess.CompletedProcess) -> str:
    text = (done.stderr or done.stdout or "").strip().splitlines()
    return text[-1][:300] if text else "(no output)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folders", nargs="*", type=Path)
    parser.add_argument(
        "--billing",
        default=os.environ.get("BILLING_CLI", "billing"),
        help="command that runs the CLI (default: billing on PATH)",
    )
    parser.add_argument(
        "--postgres",
        metavar="ADMIN_URL",
        help="run on fresh PostgreSQL databases made through this URL",
    )
    parser.add_argument("-k", dest="only", help="only scenarios whose name contains this")
    parser.add_argument("--timeout", type=int, default=300, help="seconds per command")
    args = parser.parse_args()
    folders = args.folders or sorted(p.parent for p in HERE.glob("*/scenario.json"))
    if args.only:
        folders = [f for f in folders if args.only in f.name]
    billing = shlex.split(args.billing)
    passed = failed = 0
    for folder in folders:
        reason = run_scenario(folder.resolve(), billing, args.postgres, args.timeout)
        if reason is None:
            passed += 1
            print(f"PASS {folder.name}")
        else:
            failed += 1
            print(f"FAIL {folder.name}: {reason}")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed or not folders else 0


if __name__ == "__main__":
    sys.exit(main())
