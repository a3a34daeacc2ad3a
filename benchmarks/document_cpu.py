"""Benchmark: the CPU one invoice document costs, per PDF and per HTML preview, in
instructions (callgrind, whatever else the machine runs) and in this thread's CPU time.

`build` makes `close_benchmark.py --pdf-only`'s store in a PostgreSQL database of its
own (1,000 customers in 200 families, 50,000 events: roll-ups of five customers with a
breakdown page, one-line invoices with and without one), closes it in this process
without Prefect (HTML only), keeps a copy of the closed store with its 600 drafts
(`NAME_drafts`), issues the invoices and writes the frozen contexts of the issued ones to
a pickle file, by kind.

`--drafts-only` stops after the copy (the render step's store: `--customers 10000
--families 2000 --events 1000000` makes the main store's 6,000 drafts).

`pdf` renders `--per-kind` issued invoices of each kind (HTML, then its PDF, as the render
step does: the collector paused, each PDF's garbage collected after it) after one of
each to warm up (the template compiled, fonts and shared subsets loaded), and prints the
thread's CPU per document. `html` runs the render step over the
drafts of the copy (the first `--drafts` by id; their documents forgotten in the session,
which is rolled back; the collector paused as in a close; a fresh output folder) and
prints its CPU per preview.

`--callgrind` runs the same measure under `valgrind --tool=callgrind`, collecting only
while the documents are rendered (a three-line C helper compiled with `cc` against
valgrind's `callgrind.h` toggles collection), and prints the instructions per document:
per PDF of the sample, and per preview as the difference between the render step over
`--drafts` drafts and over `--drafts-base` (its queries and fixed cost left out).

    export PYTHONPATH=$PWD/src:$PWD BILLING_TEMPLATES_DIR=$PWD/templates
    .venv/bin/python benchmarks/document_cpu.py build --name h1_docs --out /tmp/docs
    .venv/bin/python benchmarks/document_cpu.py pdf --contexts /tmp/docs/issued.pickle --callgrind
    .venv/bin/python benchmarks/document_cpu.py html --database \\
        postgresql://postgres@localhost:5432/h1_docs_drafts --callgrind
    .venv/bin/python benchmarks/document_cpu.py drop --name h1_docs

`pdf --write DIR` also writes the sample's PDFs there (to look at them: `pdftoppm -r 60`);
`html --keep DIR` writes the previews there instead of a temporary folder (to compare
the HTML of two versions byte for byte: `diff -r`).
"""

from __future__ import annotations

import argparse
import gc
import os
import pickle
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent))

THROUGH = date(2026, 2, 1)
KINDS = ("rollup", "breakdown", "plain")
ADMIN = "postgresql://postgres@localhost:5432/postgres"


def kind(data: dict) -> str:
    """An issued invoice's kind in the store's mix."""
    if data.get("summary"):
        return "rollup"
    return "breakdown" if data.get("breakdown") else "plain"


def build(args: argparse.Namespace) -> None:
    from close_benchmark import load

    admin = sa.create_engine(args.admin, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        for name in (args.name, f"{args.name}_drafts"):
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
        connection.execute(sa.text(f'CREATE DATABASE "{args.name}"'))
    url = args.admin.rsplit("/", 1)[0] + "/" + args.name
    args.out.mkdir(parents=True, exist_ok=True)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("BILLING_")},
        "BILLING_DATABASE_URL": url,
        "BILLING_OUTPUT_DIR": str(args.out / "documents"),
        "BILLING_DOCUMENT_FORMATS": "html",
    }
    if "BILLING_TEMPLATES_DIR" in os.environ:
        env["BILLING_TEMPLATES_DIR"] = os.environ["BILLING_TEMPLATES_DIR"]
    os.environ.update(env)
    with tempfile.TemporaryDirectory() as workdir:
        events = args.events or args.customers * 50
        load(url, env, Path(workdir), args.customers, args.families, events, random.Random(7))

    from billing_core.invoices.contexts import contexts
    from billing_core.steps.close import close_locally
    from billing_core.store.engine import dispose_engines, unit_of_work
    from billing_core.store.models import Invoice

    close_locally(THROUGH)
    dispose_engines()
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{args.name}_drafts" TEMPLATE "{args.name}"'))
    if args.drafts_only:
        return
    close_locally(THROUGH, issue_invoices=True)
    with unit_of_work() as session:
        v = Invoice.__table__.c
        issued = list(session.execute(sa.select(Invoice.__table__).where(v.status == "issued")))
        data = contexts(session, issued)
    by_kind: dict[str, list[dict]] = {k: [] for k in KINDS}
    for invoice_id in sorted(data):
        by_kind[kind(data[invoice_id])].append(data[invoice_id])
    dispose_engines()
    (args.out / "issued.pickle").write_bytes(pickle.dumps(by_kind))
    print({k: len(v) for k, v in by_kind.items()}, "issued invoices written to", args.out)


def drop(args: argparse.Namespace) -> None:
    admin = sa.create_engine(args.admin, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        for name in (args.name, f"{args.name}_drafts"):
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))


HELPER = r"""
#include <valgrind/callgrind.h>
void toggle(void) { CALLGRIND_TOGGLE_COLLECT; }
"""


def toggler():
    """A function toggling callgrind's collection (a no-op outside valgrind), or one doing
    nothing when not asked to collect."""
    folder = os.environ.get("DOCUMENT_CPU_HELPER")
    if not folder:
        return lambda: None
    import ctypes

    return ctypes.CDLL(str(Path(folder) / "toggle.so")).toggle


def pdf(args: argparse.Namespace) -> None:
    from billing_core.invoices.documents import environment, pdf_document, render_html

    by_kind = pickle.loads(args.contexts.read_bytes())
    env = environment()

    def one(data: dict) -> bytes:
        # As `documents.render_pdfs` in a close: the collector paused, each PDF's
        # garbage collected after it.
        content = pdf_document(render_html(data, env, inline_css=False)).write_pdf()
        gc.collect(0)
        return content

    gc.collect()
    gc.disable()
    for k in KINDS:  # warm up: the template, the fonts, the shared subsets
        one(by_kind[k][-1])
    times: dict[str, list[float]] = {k: [] for k in KINDS}
    toggle = toggler()
    for i in range(args.per_kind):
        for k in KINDS:
            data = by_kind[k][i % (len(by_kind[k]) - 1)]
            toggle()
            cpu = time.thread_time()
            content = one(data)
            times[k].append(time.thread_time() - cpu)
            toggle()
            if args.write:
                args.write.mkdir(parents=True, exist_ok=True)
                (args.write / f"{k}-{i}.pdf").write_bytes(content)
    if args.per_kind:
        for k in KINDS:
            print(f"{k:10} median {1000 * statistics.median(times[k]):7.1f} ms")
        mix = [t for k in KINDS for t in times[k]]
        print(f"{'mix':10} mean   {1000 * statistics.fmean(mix):7.1f} ms CPU per PDF")


def html(args: argparse.Namespace) -> None:
    from billing_core.steps import collector
    from billing_core.steps.render import render
    from billing_core.store.engine import unit_of_work
    from billing_core.store.models import Invoice, InvoiceDocument

    os.environ["BILLING_DATABASE_URL"] = args.database
    os.environ["BILLING_DOCUMENT_FORMATS"] = "html"
    with tempfile.TemporaryDirectory() as out:
        os.environ["BILLING_OUTPUT_DIR"] = str(args.keep or out)
        with collector.paused(), unit_of_work() as session:
            v = Invoice.__table__.c
            ids = list(
                session.execute(
                    sa.select(v.id).where(v.status == "draft").order_by(v.id).limit(args.drafts)
                ).scalars()
            )
            session.execute(sa.delete(InvoiceDocument.__table__))
            toggle = toggler()
            toggle()
            cpu = time.thread_time()
            report = render(session, THROUGH, invoice_ids=ids)
            spent = time.thread_time() - cpu
            toggle()
            session.rollback()
    print(f"{report.written} previews, {1000 * spent / max(1, report.written):.3f} ms CPU each")


def collected(argv: list[str], helper: str) -> subprocess.Popen:
    """This script with `argv` under callgrind, collecting only what `toggler` brackets."""
    command = [
        "valgrind",
        "--tool=callgrind",
        "--collect-atstart=no",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        __file__,
        *argv,
    ]
    env = {**os.environ, "PYTHONHASHSEED": "0", "DOCUMENT_CPU_HELPER": helper}
    return subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)


def callgrind(runs: list[tuple[list[str], int]]) -> None:
    """Run this script with each argv under callgrind, side by side; print the instructions
    per document (of the first, less the second's when there are two)."""
    with tempfile.TemporaryDirectory() as helper:
        source = Path(helper) / "toggle.c"
        source.write_text(HELPER)
        subprocess.run(
            ["cc", "-O1", "-shared", "-fPIC", "-o", f"{helper}/toggle.so", str(source)], check=True
        )
        started = [collected(argv, helper) for argv, _ in runs]
        totals = []
        for run in started:
            _, err = run.communicate()
            found = re.search(r"Collected : (\d+)", err)
            if run.returncode or not found:
                raise SystemExit(err[-3000:])
            totals.append(int(found.group(1)))
    count = runs[0][1] - (runs[1][1] if len(runs) > 1 else 0)
    per = (totals[0] - (totals[1] if len(runs) > 1 else 0)) / count
    shown = " and ".join(f"{t:,}" for t in totals)
    print(f"callgrind: {shown} instructions; {per / 1e6:,.2f} M per document")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build")
    b.add_argument("--name", default="h1_docs")
    b.add_argument("--admin", default=ADMIN)
    b.add_argument("--out", type=Path, required=True)
    b.add_argument("--customers", type=int, default=1000)
    b.add_argument("--families", type=int, default=200)
    b.add_argument("--events", type=int, help="default: 50 a customer")
    b.add_argument("--drafts-only", action="store_true", help="no issue, no contexts file")
    d = sub.add_parser("drop")
    d.add_argument("--name", default="h1_docs")
    d.add_argument("--admin", default=ADMIN)
    p = sub.add_parser("pdf")
    p.add_argument("--contexts", type=Path, required=True)
    p.add_argument("--per-kind", type=int, default=2)
    p.add_argument("--write", type=Path)
    p.add_argument("--callgrind", action="store_true")
    h = sub.add_parser("html")
    h.add_argument("--database", required=True)
    h.add_argument("--drafts", type=int, default=600)
    h.add_argument("--drafts-base", type=int, default=100)
    h.add_argument("--callgrind", action="store_true")
    h.add_argument("--keep", type=Path, help="write the previews here")
    args = parser.parse_args()
    if args.command == "pdf" and args.callgrind:
        argv = ["pdf", "--contexts", str(args.contexts), "--per-kind", str(args.per_kind)]
        callgrind([(argv, args.per_kind * len(KINDS))])
    elif args.command == "html" and args.callgrind:
        argv = ["html", "--database", args.database, "--drafts"]
        callgrind(
            [
                ([*argv, str(args.drafts)], args.drafts),
                ([*argv, str(args.drafts_base)], args.drafts_base),
            ]
        )
    else:
        {"build": build, "drop": drop, "pdf": pdf, "html": html}[args.command](args)


if __name__ == "__main__":
    main()
