"""Benchmark: usage ingestion, then aggregation plus rating, on PostgreSQL.

Generates a catalog of `--customers` customers in `--families` families (every price
model, every aggregation, the three pool kinds and individually rated families) and
`--events` usage events in January 2026, loads them into a throwaway database and
measures:

- ingestion of the first file of (up to) 1,000,000 events through `billing usage ingest`:
  wall time, the process's CPU time (user + system) and peak memory (RSS, from wait4);
- with `--copy-floor`, the floor for that ingestion: `psql`'s `\\copy` of the same file
  into a table keyed on event id (event id, customer, metric, timestamptz, numeric, the
  property), a whole process too, in the same run;
- with `--repeat N`, the first file ingested N times into emptied events and day buckets
  (and N floors), alternating, each with the CPU time of the server processes serving
  it (read from /proc while it runs, when the server is on this machine); with
  `--before DIR` each round also ingests with the code of another checkout
  (`git archive COMMIT | tar -x -C DIR`), in a rotating order;
- the recalculation step, then the rating step (aggregation in SQL plus pricing) for the
  billing date 2026-02-01, in a child process, each timed inside the step;
- a bare `SELECT … GROUP BY customer, metric` over the same events, run before and after
  the rating step in the same run; the ratio uses the faster of the two.

`--ingest-only` stops after the ingestion of the first file.

Between the loads and the measurements the store is vacuumed, analysed and checkpointed
(as autovacuum and PostgreSQL's own checkpoints would have done by a month-end close), so
that neither runs meanwhile.

    .venv/bin/python benchmarks/usage_rating.py --customers 10000 --families 2000 \
        --events 5000000 --postgres postgresql://postgres@localhost:5432/postgres

Prints a table and writes the numbers as JSON (--json). `close_benchmark.py` reuses the
generators here.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
import yaml

BIN = Path(sys.executable).parent
MONTH_START = datetime(2026, 1, 1, tzinfo=UTC)
MONTH_SECONDS = 31 * 24 * 3600
THROUGH = "2026-02-01"
POOLS = ("breakdown", "summary", "child", None)  # None: every customer rated on its own
# (metric, share of events): sums dominate, as in real metered usage.
METRICS = (("api_calls", 60), ("requests", 15), ("users", 15), ("seats", 5), ("storage", 5))


def catalog(customers: int, families: int) -> tuple[dict, list[str]]:
    """A catalog of `customers` in `families` families; returns it and the customer ids.

    Each family is a root with children billed through it. Family kinds cycle through a
    `breakdown`, `summary` and `child` pool on the root's API-call price, and a family
    whose every customer has its own graduated API price (rolled up to the root).
    """
    families = max(1, min(families, customers))
    data: dict = {
        "issuer": {
            "name": "Benchmark Cloud Ltd",
            "invoice_prefix": "BENCH",
            "address": ["1 Main Street", "Springfield"],
        },
        "tax_rates": [{"jurisdiction": "US-CA", "rate": "0.0725"}],
        "customers": [],
        "metrics": [
            {"code": "api_calls", "name": "API calls", "aggregation": "sum", "field": "quantity"},
            {"code": "requests", "name": "Requests", "aggregation": "count"},
            {
                "code": "users",
                "name": "Active users",
                "aggregation": "unique_count",
                "field": "user_id",
            },
            {"code": "seats", "name": "Seats", "aggregation": "max", "field": "quantity"},
            {
                "code": "storage",
                "name": "Storage (GB)",
                "aggregation": "latest",
                "field": "quantity",
            },
        ],
        "prices": [
            {
                "code": "platform",
                "product": "Platform",
                "bundle": "Core",
                "currency": "USD",
                "model": "flat",
                "amount": "500.00",
            },
            {
                "code": "api",
                "product": "API calls",
                "currency": "USD",
                "model": "graduated",
                "metric": "api_calls",
                "tiers": [
                    {"up_to": 10000, "unit_price": "0.01", "flat_fee": "5.00"},
                    {"up_to": 100000, "unit_price": "0.008"},
                    {"up_to": None, "unit_price": "0.005"},
                ],
            },
            {
                "code": "requests",
                "product": "Requests",
                "currency": "USD",
                "model": "per_unit",
                "metric": "requests",
                "unit_price": "0.0004",
            },
            {
                "code": "users",
                "product": "Active users",
                "currency": "USD",
                "model": "volume",
                "metric": "users",
                "tiers": [
                    {"up_to": 10, "unit_price": "12.00"},
                    {"up_to": 50, "unit_price": "10.00", "flat_fee": "20.00"},
                    {"up_to": None, "unit_price": "8.00"},
                ],
            },
            {
                "code": "seats",
                "product": "Seats",
                "currency": "USD",
                "model": "per_unit",
                "metric": "seats",
                "unit_price": "35.00",
            },
            {
                "code": "storage",
                "product": "Storage",
                "currency": "USD",
                "model": "package",
                "metric": "storage",
                "package_size": 100,
                "package_price": "40.00",
            },
        ],
        "subscriptions": [],
    }
    ids: list[str] = []
    base, extra = divmod(customers, families)
    for f in range(families):
        size = base + (1 if f < extra else 0)
        pool = POOLS[f % len(POOLS)]
        root = f"f{f:05d}-0"
        members = [root] + [f"f{f:05d}-{m}" for m in range(1, size)]
        ids.extend(members)
        data["customers"].append(
            {
                "id": root,
                "name": f"Family {f:05d} Holdings",
                "currency": "USD",
                "jurisdiction": "US-CA",
            }
        )
        root_items = [
            {"price": "platform", "timing": "in_advance"},
            {"price": "seats", "timing": "in_arrears"},
            {"price": "storage", "timing": "in_arrears"},
            {"price": "api", "timing": "in_arrears"},
        ]
        if pool:
            root_items[-1]["pool"] = pool
        data["subscriptions"].append(
            {
                "id": f"sub-{root}",
                "customer": root,
                "start": "2026-01-01",
                "cadence": "monthly",
                "billing_day": 1,
                "items": root_items,
            }
        )
        for child in members[1:]:
            data["customers"].append(
                {"id": child, "name": f"Member {child}", "currency": "USD", "parent": root}
            )
            items = [
                {"price": "requests", "timing": "in_arrears"},
                {"price": "users", "timing": "in_arrears"},
            ]
            if pool is None:
                items.append({"price": "api", "timing": "in_arrears"})
            data["subscriptions"].append(
                {
                    "id": f"sub-{child}",
                    "customer": child,
                    "start": "2026-01-01",
                    "cadence": "monthly",
                    "billing_day": 1,
                    "rollup": True,
                    "items": items,
                }
            )
    return data, ids


def write_usage(path: Path, ids: list[str], count: int, offset: int, rng: random.Random) -> None:
    """`count` CSV events in January 2026, event ids numbered from `offset`."""
    names = [m for m, _ in METRICS]
    weights = [w for _, w in METRICS]
    metrics = rng.choices(names, weights, k=count)
    customers = rng.choices(ids, k=count)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["event_id", "customer", "metric", "timestamp", "quantity", "user_id"])
        randrange = rng.randrange
        for i in range(count):
            at = MONTH_START.timestamp() + randrange(MONTH_SECONDS)
            stamp = datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            metric = metrics[i]
            quantity = randrange(1, 500) if metric == "api_calls" else randrange(1, 60)
            writer.writerow(
                [f"e{offset + i:09d}", customers[i], metric, stamp, quantity, f"u{randrange(80)}"]
            )


def run_measured(command: list[str], env: dict) -> tuple[float, int, str]:
    """Run a command; its wall seconds, peak RSS in MB and standard output."""
    wall, rss, _, stdout = run_timed(command, env)
    return wall, rss, stdout


def run_timed(command: list[str], env: dict) -> tuple[float, int, float, str]:
    """Run a command; its wall seconds, peak RSS in MB, CPU seconds (user + system) and
    standard output."""
    started = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({process.returncode}):\n{stderr}{stdout}")
    return wall, usage.ru_maxrss // 1024, usage.ru_utime + usage.ru_stime, stdout


FLOOR_TABLE = (
    "CREATE TABLE copy_floor (event_id text PRIMARY KEY, customer text, metric text, "
    '"timestamp" timestamptz, quantity numeric, user_id text)'
)


def copy_floor(url: str, path: Path, env: dict) -> dict:
    """The floor of an ingestion: psql's \\copy of the file into a table keyed on event id
    (created empty for it, dropped after), as a whole process."""
    plain = url.replace("postgresql+psycopg://", "postgresql://")
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            connection.execute(sa.text("DROP TABLE IF EXISTS copy_floor"))
            connection.execute(sa.text(FLOOR_TABLE))
        command = [
            "psql",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            plain,
            "-c",
            f"\\copy copy_floor FROM '{path}' WITH (FORMAT csv, HEADER true)",
        ]
        with ServerCpu(url).measuring() as server:
            wall, _, cpu, _ = run_timed(command, env)
        with engine.connect() as connection:
            connection.execute(sa.text("DROP TABLE copy_floor"))
    finally:
        engine.dispose()
    return {
        "seconds": round(wall, 2),
        "cpu_seconds": round(cpu, 2),
        "server_cpu_seconds": server.seconds,
    }


def empty_events(url: str) -> None:
    """Forget what an ingestion wrote, so that the next one loads every event again, into
    new day buckets as the first did."""
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            connection.execute(
                sa.text(
                    "TRUNCATE usage_events, usage_touches, usage_loads, usage_buckets, "
                    "usage_bucket_values"
                )
            )
            connection.execute(sa.text("VACUUM ANALYZE usage_events"))
            with suppress(sa.exc.DBAPIError):
                connection.execute(sa.text("CHECKPOINT"))
    finally:
        engine.dispose()


class ServerCpu:
    """The CPU time (user + system) of the server processes serving one database while a
    command runs: its backends, found in pg_stat_activity and read from /proc every 50 ms
    (a backend's last 50 ms before it exits can be missed). None where /proc does not
    show them (a server on another machine)."""

    def __init__(self, url: str):
        self.engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
        self.seen: dict[int, float] = {}
        self.stop = threading.Event()
        self.tick = os.sysconf("SC_CLK_TCK")

    def _cpu(self, pid: int) -> float | None:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / self.tick

    def _poll(self, connection) -> None:
        query = sa.text(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()"
        )
        while not self.stop.is_set():
            for (pid,) in connection.execute(query):
                cpu = self._cpu(pid)
                if cpu is not None:
                    self.seen[pid] = max(cpu, self.seen.get(pid, 0.0))
            self.stop.wait(0.05)

    @contextmanager
    def measuring(self):
        with self.engine.connect() as connection:
            before = {
                pid: self._cpu(pid)
                for (pid,) in connection.execute(
                    sa.text("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
                )
            }
            thread = threading.Thread(target=self._poll, args=(connection,), daemon=True)
            thread.start()
            try:
                yield self
            finally:
                self.stop.set()
                thread.join()
        self.engine.dispose()
        self.seconds = (
            round(sum(c - (before.get(pid) or 0.0) for pid, c in self.seen.items()), 2)
            if self.seen
            else None
        )


def ingest_rounds(args, url: str, usage: Path, env: dict, billing: str) -> list[dict]:
    """The first file ingested `--repeat` times (with `--before`, by both checkouts in a
    rotating order), each into emptied events, and as many floors."""
    variants = [("after", env)]
    if args.before is not None:
        before_env = {
            **env,
            "PYTHONPATH": os.pathsep.join([str(args.before / "src"), str(args.before)]),
        }
        variants.append(("before", before_env))
    rounds = []
    for i in range(args.repeat):
        order = variants[i % len(variants) :] + variants[: i % len(variants)]
        for name, variant_env in order:
            empty_events(url)
            with ServerCpu(url).measuring() as server:
                wall, rss, cpu, _ = run_timed([billing, "usage", "ingest", str(usage)], variant_env)
            rounds.append(
                {
                    "code": name,
                    "seconds": round(wall, 2),
                    "cpu_seconds": round(cpu, 2),
                    "server_cpu_seconds": server.seconds,
                    "peak_rss_mb": rss,
                    "load_average": round(os.getloadavg()[0], 2),
                }
            )
        if args.copy_floor:
            rounds.append(
                {
                    "code": "copy floor",
                    **copy_floor(url, usage, env),
                    "load_average": round(os.getloadavg()[0], 2),
                }
            )
    return rounds


def bare_group_by(url: str, aggregates: str = "count(*), sum(value), max(value)") -> float:
    """Seconds for a bare GROUP BY (customer, metric: `aggregates`) over January's events,
    every row fetched."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            started = time.perf_counter()
            rows = connection.execute(
                sa.text(
                    f"SELECT customer_id, metric_code, {aggregates} "
                    "FROM usage_events WHERE timestamp >= :start AND timestamp < :end "
                    "GROUP BY customer_id, metric_code"
                ),
                {"start": MONTH_START, "end": datetime(2026, 2, 1, tzinfo=UTC)},
            ).all()
            seconds = time.perf_counter() - started
        assert rows, "no events to group"
        return seconds
    finally:
        engine.dispose()


def settle(url: str) -> float:
    """VACUUM (ANALYZE) the store after the loads, then CHECKPOINT; returns the seconds.

    Autovacuum visits a table after a large insert anyway, and PostgreSQL writes the
    load's pages to disk in the background, spread over minutes (a gigabyte of WAL sets
    off a checkpoint): left to themselves both would run in the middle of the
    measurements, on the same two cores and disk (a bare GROUP BY measured 3.5 s right
    after a load and 1.4 s a minute later). A month-end close runs long after the month's
    usage was loaded, on a vacuumed table whose pages are on disk: so do the measurements.
    CHECKPOINT needs a superuser or the pg_checkpoint role; without it, it is skipped.
    """
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            started = time.perf_counter()
            connection.execute(sa.text("VACUUM (ANALYZE)"))
            try:
                connection.execute(sa.text("CHECKPOINT"))
            except sa.exc.DBAPIError as error:
                print(f"CHECKPOINT skipped: {error.orig}", file=sys.stderr)
            return time.perf_counter() - started
    finally:
        engine.dispose()


STEPS_SCRIPT = """
import json, sys
from datetime import date
from billing_core.steps import close
through = date.fromisoformat(sys.argv[1])
out = {}
for name, step in (("recalculate", close.recalculate), ("rate", close.rate)):
    report = step(through)
    out[name] = {"seconds": report.details["seconds"], "read": report.read,
                 "written": report.written, "warnings": len(report.warnings)}
print(json.dumps(out))
"""


@contextmanager
def database(admin_url: str, prefix: str = "billing_bench_"):
    """A throwaway PostgreSQL database; yields its URL."""
    name = prefix + uuid.uuid4().hex[:8]
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin_url.rsplit("/", 1)[0] + "/" + name
    finally:
        store = sys.modules.get("billing_core.store.engine")
        if store is not None:
            store.dispose_engines()  # this process's connections to it, if any
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--families", type=int, default=2_000)
    parser.add_argument("--events", type=int, default=5_000_000)
    parser.add_argument("--postgres", default="postgresql://postgres@localhost:5432/postgres")
    parser.add_argument("--json", type=Path, default=Path("benchmark-usage.json"))
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--ingest-only", action="store_true", help="stop after the first file")
    parser.add_argument(
        "--copy-floor", action="store_true", help="also time psql's \\copy of the first file"
    )
    parser.add_argument("--repeat", type=int, default=1, help="ingestions of the first file")
    parser.add_argument("--before", type=Path, help="another checkout, ingested alternately")
    parser.add_argument(
        "--database-prefix", default="billing_bench_", help="of the throwaway database's name"
    )
    args = parser.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from billing_core.config import normalize_database_url

    admin_url = normalize_database_url(args.postgres)
    workdir = Path(tempfile.mkdtemp(prefix="billing-usage-bench-"))
    rng = random.Random(args.seed)
    results: dict = {
        "parameters": {k: getattr(args, k) for k in ("customers", "families", "events")},
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_at_start": list(os.getloadavg()),
        },
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BILLING_", "PREFECT_"))}
    billing = str(BIN / "billing")
    with database(admin_url, args.database_prefix) as url:
        env["BILLING_DATABASE_URL"] = url
        data, ids = catalog(args.customers, args.families)
        path = workdir / "catalog.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        run_measured([billing, "db", "upgrade"], env)
        wall, _, _ = run_measured([billing, "import", str(path)], env)
        results["import_seconds"] = round(wall, 2)
        files, written = [], 0
        while written < args.events:
            n = min(1_000_000, args.events - written)
            usage = workdir / f"usage-{len(files) + 1:03d}.csv"
            started = time.perf_counter()
            write_usage(usage, ids, n, written, rng)
            generated = time.perf_counter() - started
            wall, rss, cpu, _ = run_timed([billing, "usage", "ingest", str(usage)], env)
            files.append(
                {
                    "events": n,
                    "generate_seconds": round(generated, 1),
                    "ingest_seconds": round(wall, 2),
                    "ingest_cpu_seconds": round(cpu, 2),
                    "peak_rss_mb": rss,
                    "events_per_second": round(n / wall),
                }
            )
            if not files[1:] and (args.copy_floor or args.repeat > 1 or args.before):
                results["ingest_rounds"] = ingest_rounds(args, url, usage, env, billing)
            usage.unlink()
            written += n
            if args.ingest_only:
                break
        results["ingest"] = files
        if args.ingest_only:
            results["machine"]["load_average_at_end"] = list(os.getloadavg())
            args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
            _print(results)
            print(f"\nwritten to {args.json}")
            return
        results["vacuum_analyze_seconds"] = round(settle(url), 1)
        bare = [bare_group_by(url)]
        wall, rss, out = run_measured([sys.executable, "-c", STEPS_SCRIPT, THROUGH], env)
        bare.append(bare_group_by(url))
        steps = json.loads(out.strip().splitlines()[-1])
        results["steps"] = steps
        results["steps_peak_rss_mb"] = rss
        results["bare_group_by_runs"] = [round(b, 2) for b in bare]
        results["bare_group_by_seconds"] = round(min(bare), 2)
        results["rating_to_group_by_ratio"] = round(steps["rate"]["seconds"] / min(bare), 2)
    results["machine"]["load_average_at_end"] = list(os.getloadavg())
    args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    _print(results)
    print(f"\nwritten to {args.json}")


def _print(results: dict) -> None:
    p = results["parameters"]
    print(
        f"\n{p['customers']} customers in {p['families']} families, {p['events']} events; "
        f"load average at start {results['machine']['load_average_at_start'][0]:.2f}"
    )
    first = results["ingest"][0]
    print(
        f"ingest of the first {first['events']} events: {first['ingest_seconds']} s, "
        f"CPU {first['ingest_cpu_seconds']} s, peak {first['peak_rss_mb']} MB "
        f"({first['events_per_second']} events/s)"
    )
    for r in results.get("ingest_rounds", []):
        print(
            f"  {r['code']:<11}{r['seconds']:>7.2f} s  CPU {r['cpu_seconds']:>6.2f} s  "
            f"server CPU {r.get('server_cpu_seconds')} s  load {r['load_average']}"
        )
    if "steps" not in results:
        return
    for name, step in results["steps"].items():
        print(
            f"{name:<14}{step['seconds']:>8.2f} s  read {step['read']}, written {step['written']}"
        )
    print(
        f"bare GROUP BY {results['bare_group_by_seconds']:>8.2f} s "
        f"(runs {results['bare_group_by_runs']})"
    )
    print(f"rating / GROUP BY: {results['rating_to_group_by_ratio']} x")


if __name__ == "__main__":
    main()
