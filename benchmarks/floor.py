"""Benchmark: every measure of the close against its floor, in one run, repeated.

Each run builds a fresh PostgreSQL store of `--customers` customers in `--families`
families (the catalog and usage of `usage_rating.py`) and measures, in this order:

- `billing usage ingest` of the first file of 1,000,000 events, whole process (wall time,
  peak RSS), against its floor: the same CSV file COPied by PostgreSQL into a table keyed
  on the event id (`COPY … FROM STDIN (FORMAT csv)`, sent from this process);
- the store copied as it is after that file (`CREATE DATABASE … TEMPLATE`), then the
  other files ingested: a store of 1 M events and one of `--events` for the same
  customers;
- on each, after VACUUM (ANALYZE) and CHECKPOINT: `billing close` as a user runs it, a
  whole process with no PREFECT_API_URL (the kept Prefect server, started before the
  first run, answering; `BILLING_PREFECT_SERVER=reuse`, the default), its peak RSS, its
  flow run's duration less the render step (the close's steps without documents, Prefect
  between them included), and the render step's drafts per second (HTML);
- the two floors on each store, before and after its close, the faster counted: a bare
  `SELECT customer_id, metric_code, count(*), sum(value), max(value) … GROUP BY` over the
  month's events (the close steps' floor) and `GROUP BY customer, metric` with sum and max
  only (the whole process's);
- PDFs: a store of `--pdf-customers` closed with `--issue` on the Dask task runner (2
  worker processes), each issued invoice written as HTML and PDF: invoices per second of
  the render step's wall time.

    .venv/bin/python benchmarks/floor.py --runs 3 [--quiet-below 1.0]

With `--quiet-below`, each run, its closes and its PDFs wait (up to 5 minutes) for the
machine's one-minute load average to fall below the value; the loads are recorded.

Prints each run and the medians; writes every number as JSON (--json). Generated files
are written once and reused by every run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from close_benchmark import close_run, flow_and_tasks, load  # noqa: E402
from usage_rating import (  # noqa: E402
    BIN,
    THROUGH,
    bare_group_by,
    catalog,
    database,
    run_measured,
    settle,
    write_usage,
)


def sum_max_group_by(url: str) -> float:
    """Seconds for `GROUP BY customer, metric` with sum and max over the month's events."""
    return bare_group_by(url, "sum(value), max(value)")


def copy_floor(url: str, path: Path) -> float:
    """Seconds to COPY a usage CSV into a new table keyed on the event id."""
    import psycopg

    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute(
            "CREATE TABLE copy_floor (event_id text PRIMARY KEY, customer_id text, "
            "metric_code text, timestamp timestamptz, quantity numeric, user_id text)"
        )
        started = time.perf_counter()
        with (
            connection.cursor() as cursor,
            cursor.copy("COPY copy_floor FROM STDIN (FORMAT csv, HEADER true)") as copy,
            path.open("rb") as handle,
        ):
            while chunk := handle.read(1 << 20):
                copy.write(chunk)
        seconds = time.perf_counter() - started
        connection.execute("DROP TABLE copy_floor")
    return seconds


# Every folder a run writes (generated files, documents, Prefect's home) is under one, removed
# at the end unless --keep: the documents alone are 6,000 files a close.
WORK: list[Path] = []


def scratch(prefix: str) -> str:
    """A new folder under the run's work folder."""
    return tempfile.mkdtemp(prefix=prefix, dir=WORK[0])


def quiet(below: float | None, longest: float = 300.0) -> float:
    """Wait until the one-minute load average is under `below` (at most `longest`
    seconds; None: no wait); returns the load average then. Every other process on a
    2-core machine takes its share of the measured seconds."""
    started = time.monotonic()
    while below is not None and os.getloadavg()[0] >= below:
        if time.monotonic() - started > longest:
            print(f"load average still {os.getloadavg()[0]:.2f} after {longest:.0f} s: measuring")
            break
        time.sleep(5)
    return os.getloadavg()[0]


def clone(admin_url: str, url: str, suffix: str = "_1m") -> str:
    """A copy of the store at `url` (which no one may be connected to); its URL."""
    name = url.rsplit("/", 1)[1]
    copy = f"{name}{suffix}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{copy}" TEMPLATE "{name}"'))
    admin.dispose()
    return url.rsplit("/", 1)[0] + "/" + copy


def drop(admin_url: str, url: str) -> None:
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        name = url.rsplit("/", 1)[1]
        connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@contextmanager
def dask_cluster(env: dict, workers: int) -> Iterator[str]:
    """A running Dask cluster (a scheduler and `workers` worker processes of one thread
    each) whose workers see `env` (the store, the Prefect API): its address. Started and
    waited for before a close, as an operator's cluster is already running."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as log:
        yield from _cluster(env, workers, port, address, log)


def _cluster(env: dict, workers: int, port: int, address: str, log: Any) -> Iterator[str]:
    from distributed import Client

    processes = [
        subprocess.Popen(
            [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port)]
            + ["--dashboard-address", ":0"],
            env=env,
            stdout=log,
            stderr=log,
        )
    ]
    try:
        processes.append(
            subprocess.Popen(
                [str(BIN / "dask"), "worker", address, "--nworkers", str(workers)]
                + ["--nthreads", "1", "--dashboard-address", ":0"],
                env=env,
                stdout=log,
                stderr=log,
            )
        )
        with Client(address, timeout=60) as client:
            client.wait_for_workers(workers, timeout=120)
        yield address
    finally:
        for process in reversed(processes):
            process.terminate()
            process.wait(timeout=60)


def close_measured(url: str, env: dict, api: str, dask_workers: int = 0) -> dict:
    """`billing close` of the store, whole process, and its floors around it; with
    `dask_workers`, on a running Dask cluster of that many workers, one shard each."""
    if dask_workers:
        env = {**env, "PREFECT_API_URL": api, "BILLING_SHARDS": str(dask_workers)}
        env["BILLING_OUTPUT_DIR"] = scratch("documents-")
        with dask_cluster(env, dask_workers) as address:
            out = close_measured(
                url, {**env, "BILLING_TASK_RUNNER": "dask", "BILLING_DASK_ADDRESS": address}, api
            )
        return {**out, "dask_workers": dask_workers}
    floors = [bare_group_by(url)], [sum_max_group_by(url)]
    env = {"BILLING_OUTPUT_DIR": scratch("documents-"), **env}
    wall, rss, _ = run_measured([str(BIN / "billing"), "close", "--through", THROUGH], env)
    floors[0].append(bare_group_by(url))
    floors[1].append(sum_max_group_by(url))
    run = close_run(url)
    flow_seconds, walls = flow_and_tasks(api, run["flow_run_id"])
    steps = {n: r["details"].get("seconds", 0.0) for n, r in run["steps"].items()}
    render = steps.get("render invoices", 0.0)
    if "shards" in run["steps"].get("render invoices", {}).get("details", {}):
        render = walls.get("render-invoices", render)
    drafts = run["steps"]["render invoices"]["written"]
    steps_seconds = flow_seconds - render
    # The forked processes' own peaks (steps.processes), beside the command's: their sum
    # bounds the close's memory from above (the pages they share are counted twice).
    forked = max(
        (r["details"].get("forked_peak_rss_mb", 0) for r in run["steps"].values()), default=0
    )
    return {
        "process_wall_seconds": round(wall, 2),
        "peak_rss_mb": rss,
        "forked_peak_rss_mb": forked,
        "peak_rss_mb_with_forks": rss + forked,
        "flow_run_seconds": round(flow_seconds, 2),
        "steps_without_documents_seconds": round(steps_seconds, 2),
        "step_seconds": steps,
        "html_per_second": round(drafts / render, 1) if render else None,
        "bare_group_by_seconds": [round(f, 2) for f in floors[0]],
        "sum_max_group_by_seconds": [round(f, 2) for f in floors[1]],
        "steps_to_group_by": round(steps_seconds / min(floors[0]), 2),
        "process_to_group_by": round(wall / min(floors[1]), 2),
    }


def one_run(args, admin_url: str, env: dict, api: str, files: list[Path], path: Path) -> dict:
    quiet(args.quiet_below)
    out: dict = {"load_average_at_start": list(os.getloadavg())}
    with database(admin_url) as url:
        store_env = {**env, "BILLING_DATABASE_URL": url}
        billing = str(BIN / "billing")
        run_measured([billing, "db", "upgrade"], store_env)
        run_measured([billing, "import", str(path)], store_env)
        wall, rss, _ = run_measured([billing, "usage", "ingest", str(files[0])], store_env)
        floor = copy_floor(url, files[0])
        out["ingest"] = {
            "events": args.file_events,
            "process_wall_seconds": round(wall, 2),
            "peak_rss_mb": rss,
            "copy_floor_seconds": round(floor, 2),
            "ratio": round(wall / floor, 2),
        }
        small = clone(admin_url, url)
        on_dask = clone(admin_url, url, "_dask") if args.dask_workers else None
        try:
            for more in files[1:]:
                run_measured([billing, "usage", "ingest", str(more)], store_env)
            settle(small)
            settle(url)
            out["load_average_before_closes"] = quiet(args.quiet_below)
            out["close_1m"] = close_measured(small, {**env, "BILLING_DATABASE_URL": small}, api)
            out["close_large"] = close_measured(url, store_env, api)
            if on_dask is not None:
                settle(on_dask)
                quiet(args.quiet_below)
                out["close_large_dask"] = close_measured(
                    on_dask, {**env, "BILLING_DATABASE_URL": on_dask}, api, args.dask_workers
                )
        finally:
            drop(admin_url, small)
            if on_dask is not None:
                drop(admin_url, on_dask)
    out["close_large_to_1m"] = round(
        out["close_large"]["steps_without_documents_seconds"]
        / out["close_1m"]["steps_without_documents_seconds"],
        2,
    )
    out["load_average_before_pdf"] = quiet(args.quiet_below)
    out["pdf"] = pdf_rate(args, admin_url, env, api)
    out["load_average_at_end"] = list(os.getloadavg())
    return out


def pdf_rate(args, admin_url: str, env: dict, api: str) -> dict:
    with database(admin_url) as url:
        pdf_env = {
            **env,
            "BILLING_DATABASE_URL": url,
            "BILLING_OUTPUT_DIR": scratch("pdf-"),
            "BILLING_TASK_RUNNER": "dask",
            "BILLING_DASK_WORKERS": "2",
            "BILLING_SHARDS": "4",
        }
        work = Path(scratch("pdf-store-"))
        load(
            url,
            pdf_env,
            work,
            args.pdf_customers,
            args.pdf_customers // 5,
            args.pdf_customers * 50,
            random.Random(args.seed + 1),
        )
        run_measured([str(BIN / "billing"), "close", "--through", THROUGH, "--issue"], pdf_env)
        run = close_run(url)
        _, walls = flow_and_tasks(api, run["flow_run_id"])
        issued = run["invoices"].get("issued", 0)
        render = walls.get("render-invoices", 0.0)
        return {
            "issued_invoices": issued,
            "render_wall_seconds": round(render, 2),
            "pdf_per_second": round(issued / render, 1) if render else None,
        }


def kept_server(env: dict) -> str:
    """Start the kept Prefect server of `env`'s PREFECT_HOME; its API URL."""
    subprocess.run([str(BIN / "billing"), "server", "start"], env=env, check=True)
    status = subprocess.run(
        [str(BIN / "billing"), "server", "status"], env=env, check=True, capture_output=True
    ).stdout.decode()
    found = re.search(r"\(API (\S+)\)", status)
    if found is None:
        raise SystemExit(f"no kept Prefect server: {status}")
    return found.group(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--families", type=int, default=2_000)
    parser.add_argument("--events", type=int, default=5_000_000)
    parser.add_argument("--file-events", type=int, default=1_000_000, help="events per file")
    parser.add_argument("--pdf-customers", type=int, default=1_000)
    parser.add_argument("--postgres", default="postgresql://postgres@localhost:5432/postgres")
    parser.add_argument("--json", type=Path, default=Path("benchmark-floor.json"))
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--dask-workers",
        type=int,
        default=0,
        help="also close a copy of the large store on a running Dask cluster of this many "
        "worker processes (one shard each)",
    )
    parser.add_argument(
        "--quiet-below",
        type=float,
        default=None,
        help="before each run, its closes and its PDFs, wait (up to 5 min) for the "
        "one-minute load average to fall below this",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the generated files and the documents"
    )
    args = parser.parse_args()

    from billing_core.config import normalize_database_url

    admin_url = normalize_database_url(args.postgres)
    work = Path(tempfile.mkdtemp(prefix="billing-floor-"))
    WORK.append(work)
    rng = random.Random(args.seed)
    data, ids = catalog(args.customers, args.families)
    path = work / "catalog.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    files = []
    for n, offset in enumerate(range(0, args.events, args.file_events)):
        files.append(work / f"usage-{n + 1:03d}.csv")
        write_usage(files[-1], ids, min(args.file_events, args.events - offset), offset, rng)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BILLING_", "PREFECT_"))}
    if os.environ.get("BILLING_TEMPLATES_DIR"):
        env["BILLING_TEMPLATES_DIR"] = os.environ["BILLING_TEMPLATES_DIR"]
    env.update(
        PREFECT_HOME=str(work / "prefect"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_LOGGING_LEVEL="WARNING",
    )
    api = kept_server(env)
    results: dict = {
        "parameters": {
            k: getattr(args, k) for k in ("customers", "families", "events", "pdf_customers")
        },
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "runs": [],
    }
    try:
        for n in range(args.runs):
            results["runs"].append(one_run(args, admin_url, env, api, files, path))
            _print_run(n + 1, results["runs"][-1])
            args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    finally:
        subprocess.run([str(BIN / "billing"), "server", "stop"], env=env, check=False)
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    _print_medians(results["runs"])
    print(f"\nwritten to {args.json}")


def _rows(run: dict) -> list[tuple[str, str]]:
    i, small, large = run["ingest"], run["close_1m"], run["close_large"]
    return [
        ("ingest of a file", f"{i['process_wall_seconds']} s, {i['peak_rss_mb']} MB"),
        ("  COPY keyed on event id", f"{i['copy_floor_seconds']} s  ratio {i['ratio']}"),
        (
            "close steps, 1 M",
            f"{small['steps_without_documents_seconds']} s, GROUP BY "
            f"{min(small['bare_group_by_seconds'])} s  ratio {small['steps_to_group_by']}",
        ),
        (
            "close steps, large",
            f"{large['steps_without_documents_seconds']} s, GROUP BY "
            f"{min(large['bare_group_by_seconds'])} s  ratio {large['steps_to_group_by']}",
        ),
        ("  large / 1 M", str(run["close_large_to_1m"])),
        (
            "billing close, large",
            f"{large['process_wall_seconds']} s, {large['peak_rss_mb']} MB "
            f"(+{large.get('forked_peak_rss_mb', 0)} MB forked); sum+max GROUP BY "
            f"{min(large['sum_max_group_by_seconds'])} s  ratio {large['process_to_group_by']}",
        ),
        ("HTML per second (large)", str(large["html_per_second"])),
        *_dask_rows(run),
        ("PDF per second", str(run["pdf"]["pdf_per_second"])),
    ]


def _dask_rows(run: dict) -> list[tuple[str, str]]:
    dask = run.get("close_large_dask")
    if dask is None:
        return []
    return [
        (
            f"on Dask, {dask['dask_workers']} workers: steps",
            f"{dask['steps_without_documents_seconds']} s  ratio {dask['steps_to_group_by']}",
        ),
        (
            "  billing close",
            f"{dask['process_wall_seconds']} s  ratio {dask['process_to_group_by']}",
        ),
        ("  HTML per second", str(dask["html_per_second"])),
    ]


def _print_run(n: int, run: dict) -> None:
    print(
        f"\nrun {n} (load average {run['load_average_at_start'][0]:.2f} at start, "
        f"{run.get('load_average_before_closes', 0):.2f} before the closes, "
        f"{run.get('load_average_before_pdf', 0):.2f} before the PDFs)"
    )
    for name, value in _rows(run):
        print(f"  {name:<28}{value}")


def _print_medians(runs: list[dict]) -> None:
    def median(get) -> float:
        return round(statistics.median(get(r) for r in runs), 2)

    print("\nmedians")
    for name, get in (
        ("ingest / COPY", lambda r: r["ingest"]["ratio"]),
        ("close steps 1 M / GROUP BY", lambda r: r["close_1m"]["steps_to_group_by"]),
        ("close steps large / GROUP BY", lambda r: r["close_large"]["steps_to_group_by"]),
        ("close large / close 1 M", lambda r: r["close_large_to_1m"]),
        ("billing close / GROUP BY", lambda r: r["close_large"]["process_to_group_by"]),
        ("HTML per second", lambda r: r["close_large"]["html_per_second"]),
        ("PDF per second", lambda r: r["pdf"]["pdf_per_second"]),
    ):
        print(f"  {name:<30}{median(get)}")


if __name__ == "__main__":
    main()
