"""Benchmark: the whole period close on PostgreSQL under a real Prefect server.

Generates the same catalog and usage as `usage_rating.py` (customers in families, every
aggregation, every price model, pools), loads them into a throwaway database, and runs
`billing close` in a child process against a `prefect server` it starts. It reports:

- each step's own time (measured inside the step) and the flow run's duration, whose
  difference is Prefect's overhead;
- the close without documents next to a bare `SELECT … GROUP BY` over the same events;
- the close process's peak memory (RSS, from wait4);
- HTML rendering rate (the draft previews the close wrote), and the rendering thread's
  CPU time per document;
- PDF rate: a second, smaller store closed with `--issue` on the Dask task runner
  (2 worker processes, 4 shards), issued invoices getting HTML and PDF; with the render
  shards' CPU time (their threads', summed), per invoice and as the rate two idle cores
  would give (the machine may be shared: its load average is reported too).

The templates are the installed package's, or BILLING_TEMPLATES_DIR's when it is set
(the only BILLING_ variable passed on to the close).

    .venv/bin/python benchmarks/close_benchmark.py --customers 10000 --families 2000 \
        --events 5000000 --postgres postgresql://postgres@localhost:5432/postgres

The store is vacuumed and analysed after the loads (see `usage_rating.settle`).

Prints a table and writes the numbers as JSON (--json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import httpx
import sqlalchemy as sa
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from usage_rating import (  # noqa: E402
    bare_group_by,
    catalog,
    database,
    run_measured,
    settle,
    write_usage,
)

BIN = Path(sys.executable).parent
THROUGH = "2026-02-01"


@contextmanager
def prefect_server(home: Path):
    """A `prefect server start` of its own; yields its API URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_UI_ENABLED="false"
    )
    log = (home / "server.log").open("w")
    server = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/api"
    try:
        for _ in range(240):
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def load(
    url: str, env: dict, workdir: Path, customers: int, families: int, events: int, rng
) -> dict:
    """Migrate, import the generated catalog, ingest the generated usage."""
    data, ids = catalog(customers, families)
    path = workdir / "catalog.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    billing = str(BIN / "billing")
    run_measured([billing, "db", "upgrade"], env)
    run_measured([billing, "import", str(path)], env)
    loaded, written, started = [], 0, time.perf_counter()
    while written < events:
        n = min(1_000_000, events - written)
        usage = workdir / f"usage-{len(loaded) + 1:03d}.csv"
        write_usage(usage, ids, n, written, rng)
        run_measured([billing, "usage", "ingest", str(usage)], env)
        usage.unlink()
        loaded.append(n)
        written += n
    ingested = time.perf_counter() - started
    return {
        "events": written,
        "files": len(loaded),
        "generate_and_ingest_seconds": round(ingested, 1),
        "vacuum_analyze_seconds": round(settle(url), 1),
    }


def close_run(url: str) -> dict:
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        row = connection.execute(
            sa.text("SELECT flow_run_id, steps FROM close_runs ORDER BY id DESC LIMIT 1")
        ).one()
        invoices = connection.execute(
            sa.text("SELECT status, count(*) FROM invoices GROUP BY status")
        ).all()
    engine.dispose()
    steps = row.steps if isinstance(row.steps, dict) else json.loads(row.steps)
    return {
        "flow_run_id": row.flow_run_id,
        "steps": steps,
        "invoices": {status: count for status, count in invoices},
    }


def task_runs(api: str, flow_run_id: str) -> list[dict]:
    return httpx.post(
        f"{api}/task_runs/filter", timeout=30, json={"flow_runs": {"id": {"any_": [flow_run_id]}}}
    ).json()


def shard_seconds(api: str, flow_run_id: str, step: str) -> list[float]:
    """Each shard's task run of a step, in seconds, longest first."""
    return sorted(
        (
            round(t["total_run_time"], 2)
            for t in task_runs(api, flow_run_id)
            if t["name"].rsplit("-", 1)[0] == step
        ),
        reverse=True,
    )


def flow_and_tasks(api: str, flow_run_id: str) -> tuple[float, dict[str, float]]:
    """The flow run's duration and each step's wall time (first start to last end)."""
    run = httpx.get(f"{api}/flow_runs/{flow_run_id}", timeout=30).json()
    tasks = task_runs(api, flow_run_id)
    spans: dict[str, list[datetime]] = {}
    for task in tasks:
        if not task["start_time"] or not task["end_time"]:
            continue
        name = task["name"].rsplit("-", 1)[0]
        start = datetime.fromisoformat(task["start_time"])
        end = datetime.fromisoformat(task["end_time"])
        span = spans.setdefault(name, [start, end])
        span[0], span[1] = min(span[0], start), max(span[1], end)
    flow_seconds = (
        datetime.fromisoformat(run["end_time"]) - datetime.fromisoformat(run["start_time"])
    ).total_seconds()
    return flow_seconds, {k: (e - s).total_seconds() for k, (s, e) in spans.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--families", type=int, default=2_000)
    parser.add_argument("--events", type=int, default=5_000_000)
    parser.add_argument("--pdf-customers", type=int, default=1_000)
    parser.add_argument("--pdf-families", type=int, default=200)
    parser.add_argument("--postgres", default="postgresql://postgres@localhost:5432/postgres")
    parser.add_argument("--json", type=Path, default=Path("benchmark-close.json"))
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--pdf-only", action="store_true", help="only the PDF rate (the smaller store)"
    )
    args = parser.parse_args()

    from billing_core.config import normalize_database_url

    admin_url = normalize_database_url(args.postgres)
    workdir = Path(tempfile.mkdtemp(prefix="billing-close-bench-"))
    rng = random.Random(args.seed)
    results: dict = {
        "parameters": {
            k: getattr(args, k)
            for k in ("customers", "families", "events", "pdf_customers", "pdf_families")
        },
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "load_average_at_start": list(os.getloadavg()),
        },
    }
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("BILLING_", "PREFECT_"))}
    if os.environ.get("BILLING_TEMPLATES_DIR"):
        base_env["BILLING_TEMPLATES_DIR"] = os.environ["BILLING_TEMPLATES_DIR"]
    home = workdir / "prefect"
    home.mkdir()
    with prefect_server(home) as api:
        prefect_env = {
            "PREFECT_API_URL": api,
            "PREFECT_HOME": str(home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_LOGGING_LEVEL": "WARNING",
        }
        if not args.pdf_only:
            with database(admin_url) as url:
                env = {
                    **base_env,
                    **prefect_env,
                    "BILLING_DATABASE_URL": url,
                    "BILLING_OUTPUT_DIR": str(workdir / "documents"),
                }
                os.environ["BILLING_DATABASE_URL"] = url
                results["load"] = load(
                    url, env, workdir, args.customers, args.families, args.events, rng
                )
                bare = [bare_group_by(url)]
                wall, rss, _ = run_measured(
                    [str(BIN / "billing"), "close", "--through", THROUGH], env
                )
                bare.append(bare_group_by(url))
                run = close_run(url)
                flow_seconds, task_walls = flow_and_tasks(api, run["flow_run_id"])
                step_seconds = {
                    name: report["details"].get("seconds", 0.0)
                    for name, report in run["steps"].items()
                }
                render = step_seconds.get("render invoices", 0.0)
                inside = sum(step_seconds.values())
                drafts = run["steps"]["render invoices"]["written"]
                results["close"] = {
                    "process_wall_seconds": round(wall, 2),
                    "peak_rss_mb": rss,
                    "flow_run_seconds": round(flow_seconds, 2),
                    "step_seconds": step_seconds,
                    "task_run_wall_seconds": {k: round(v, 2) for k, v in task_walls.items()},
                    "prefect_overhead_seconds": round(flow_seconds - inside, 2),
                    "prefect_overhead_share": round((flow_seconds - inside) / flow_seconds, 3),
                    "without_documents_seconds": round(flow_seconds - render, 2),
                    "invoices": run["invoices"],
                }
                results["bare_group_by_seconds"] = round(min(bare), 2)
                results["bare_group_by_runs"] = [round(b, 2) for b in bare]
                results["close_to_group_by_ratio"] = round((flow_seconds - render) / min(bare), 2)
                results["html_per_second"] = round(drafts / render, 1) if render else None
                html_cpu = run["steps"]["render invoices"]["details"].get("cpu_seconds")
                results["html_cpu_ms_per_document"] = (
                    round(1000 * html_cpu / drafts, 3) if html_cpu and drafts else None
                )

        # PDFs: a smaller store, closed and issued on the Dask task runner.
        with database(admin_url) as url:
            env = {
                **base_env,
                **prefect_env,
                "BILLING_DATABASE_URL": url,
                "BILLING_OUTPUT_DIR": str(workdir / "pdf-documents"),
                "BILLING_TASK_RUNNER": "dask",
                "BILLING_DASK_WORKERS": "2",
                "BILLING_SHARDS": "4",
            }
            os.environ["BILLING_DATABASE_URL"] = url
            load(
                url,
                env,
                workdir,
                args.pdf_customers,
                args.pdf_families,
                args.pdf_customers * 50,
                rng,
            )
            run_measured([str(BIN / "billing"), "close", "--through", THROUGH, "--issue"], env)
            run = close_run(url)
            _, task_walls = flow_and_tasks(api, run["flow_run_id"])
            issued = run["invoices"].get("issued", 0)
            render_wall = task_walls.get("render-invoices", 0.0)
            render_cpu = run["steps"]["render invoices"]["details"].get("cpu_seconds") or 0.0
            results["pdf"] = {
                "issued_invoices": issued,
                "render_wall_seconds": round(render_wall, 2),
                "render_shard_seconds": shard_seconds(api, run["flow_run_id"], "render-invoices"),
                "documents_per_invoice": "html + pdf",
                "pdf_per_second": round(issued / render_wall, 1) if render_wall else None,
                "render_cpu_seconds": round(render_cpu, 2),
                "cpu_ms_per_invoice": round(1000 * render_cpu / issued, 1) if issued else None,
                # What two cores given to nothing else would write a second.
                "pdf_per_second_two_idle_cores": (
                    round(2 * issued / render_cpu, 1) if render_cpu else None
                ),
            }
    results["machine"]["load_average_at_end"] = list(os.getloadavg())
    args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    _print(results)
    print(f"\nwritten to {args.json}")


def _print(results: dict) -> None:
    if "close" in results:
        _print_close(results)
    pdf = results["pdf"]
    print(
        f"{'PDF documents per second':<28}{pdf['pdf_per_second']:>10}"
        f"   ({pdf['issued_invoices']} issued invoices, Dask, 2 processes)"
    )
    print(
        f"{'PDF render CPU per invoice':<28}{pdf['cpu_ms_per_invoice']!s:>10} ms"
        f"   (two idle cores: {pdf['pdf_per_second_two_idle_cores']}/s; shards "
        f"{pdf['render_shard_seconds']} s)"
    )
    load = results["machine"]
    print(
        f"{'load average':<28}{load['load_average_at_start'][0]:>10.2f} at start, "
        f"{load['load_average_at_end'][0]:.2f} at the end"
    )


def _print_close(results: dict) -> None:
    p, c = results["parameters"], results["close"]
    print(
        f"\n{p['customers']} customers in {p['families']} families, {p['events']} events; "
        f"load average at start {results['machine']['load_average_at_start'][0]:.2f}"
    )
    print(f"\n{'step':<28}{'seconds':>10}")
    for name, seconds in c["step_seconds"].items():
        print(f"{name:<28}{seconds:>10.2f}")
    print(
        f"{'Prefect overhead':<28}{c['prefect_overhead_seconds']:>10.2f}"
        f"   ({100 * c['prefect_overhead_share']:.1f}% of the flow run)"
    )
    print(f"{'flow run':<28}{c['flow_run_seconds']:>10.2f}")
    print(f"\n{'close without documents':<28}{c['without_documents_seconds']:>10.2f} s")
    print(f"{'bare GROUP BY':<28}{results['bare_group_by_seconds']:>10.2f} s")
    print(f"{'ratio':<28}{results['close_to_group_by_ratio']:>10.2f} x")
    print(f"{'peak memory of the close':<28}{c['peak_rss_mb']:>10} MB")
    print(f"{'HTML documents per second':<28}{results['html_per_second']:>10}")
    print(f"{'HTML render CPU per document':<28}{results['html_cpu_ms_per_document']!s:>10} ms")


if __name__ == "__main__":
    main()
