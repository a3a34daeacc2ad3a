"""Benchmark: what a `billing close` of a tiny catalog costs beyond its steps, per way of
reaching a Prefect server (BILLING_PREFECT_SERVER), when PREFECT_API_URL is not set.

A SQLite store with a four-customer catalog (one family, four fixed fees: the close's
steps take a few tenths of a second), closed again and again through the `billing`
command in a child process. Each round runs every mode once, in a rotating order, so
that the machine's load falls on every mode alike:

- `prefect`: Prefect's own temporary server, started and stopped by each command (the
  behaviour before BILLING_PREFECT_SERVER existed);
- `temporary`: our temporary server, one per command;
- `reuse`: the kept server, already running (what every command after the first pays);
- `reuse-first`: the kept server stopped before the command, which starts it again
  (what the first command pays; `PREFECT_HOME`'s database already exists);
- `api-url`: PREFECT_API_URL set to a `prefect server start` of the benchmark's own
  (the floor: no server handling at all);
- `before` (with `--before DIR`): the code of another checkout (`git archive COMMIT | tar
  -x -C DIR`), run as it is configured by default, for before/after in the same run.

Each mode has its own PREFECT_HOME, created and migrated by a warm-up close that is not
counted. For every close it records the process's wall time and, from the store's
`close_runs`, the steps' own time (each step measures itself) and the close's span.
Prints medians, minima and maxima, the load average before and after; writes the runs
as JSON (--json).

    .venv/bin/python benchmarks/cli_fixed_cost.py --runs 7
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

BIN = Path(sys.executable).parent
BILLING = [sys.executable, "-m", "billing_core.cli.app"]
THROUGH = "2026-02-01"
MODES = ("prefect", "temporary", "reuse", "reuse-first", "api-url")

# Alguna's roll-up example: one family, four fixed fees on the parent's invoice.
CATALOG = (
    Path(__file__).resolve().parents[1] / "tests/scenarios/alguna-global-industries/catalog.yaml"
)


def environment(work: Path, mode: str, before: Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "BILLING_"))}
    if "BILLING_TEMPLATES_DIR" in os.environ:  # a checkout's templates, with its code
        env["BILLING_TEMPLATES_DIR"] = os.environ["BILLING_TEMPLATES_DIR"]
    if mode == "before":
        assert before is not None
        env["PYTHONPATH"] = os.pathsep.join([str(before / "src"), str(before)])
        env["BILLING_TEMPLATES_DIR"] = str(before / "templates")
    env.update(
        BILLING_DATABASE_URL=f"sqlite:///{work / 'billing.db'}",
        BILLING_OUTPUT_DIR=str(work / "documents"),
        PREFECT_HOME=str(work / f"prefect-{mode}"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        BILLING_PREFECT_SERVER="reuse" if mode.startswith("reuse") else mode,
    )
    if mode in ("api-url", "before"):
        del env["BILLING_PREFECT_SERVER"]  # the API is configured / the code knows none
    return env


def billing(env: dict[str, str], *args: str, check: bool = True) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run([*BILLING, *args], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if check and done.returncode:
        raise SystemExit(f"billing {' '.join(args)} exited {done.returncode}:\n{done.stderr}")
    return wall, done.stderr


def last_close(url: str) -> dict:
    """The store's record of its last close: the steps' own time (each step measures
    itself) and the close's span from its start to its end."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            steps, started, finished = connection.execute(
                sa.text(
                    "SELECT steps, started_at, finished_at FROM close_runs ORDER BY id DESC LIMIT 1"
                )
            ).one()
    finally:
        engine.dispose()
    steps = steps if isinstance(steps, dict) else json.loads(steps)
    if isinstance(started, str):
        from datetime import datetime

        started, finished = datetime.fromisoformat(started), datetime.fromisoformat(finished)
    return {
        "steps_seconds": round(sum(s["details"].get("seconds", 0.0) for s in steps.values()), 3),
        "close_span_seconds": round((finished - started).total_seconds(), 3),
    }


@contextmanager
def prefect_server(home: Path):
    """A `prefect server start` of the benchmark's own (the `api-url` mode); its API URL."""
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_UI_ENABLED="false"
    )
    home.mkdir(parents=True, exist_ok=True)
    log = (home / "server.log").open("w")
    server = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/api"
    try:
        for _ in range(1200):
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                time.sleep(0.25)
        else:
            raise SystemExit("prefect server start did not answer in 5 minutes")
        yield url
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def summary(values: list[float]) -> str:
    return (
        f"{statistics.median(values):6.2f} [{min(values):5.2f} – {max(values):5.2f}]"
        if values
        else "-"
    )


def rotated(modes: list[str], round_: int) -> list[str]:
    return modes[round_ % len(modes) :] + modes[: round_ % len(modes)]


def measured_close(env: dict[str, str], mode: str, url: str) -> dict:
    """One `billing close` in a child process: its wall time and the store's own record."""
    if mode == "reuse-first":
        billing(env, "server", "stop", "--force")
    wall, stderr = billing(env, "close", "--through", THROUGH)
    run = {"wall_seconds": round(wall, 3), **last_close(url)}
    if mode.startswith("reuse") and "started a Prefect server" in stderr:
        run["started_server"] = True
    return run


def big_store(args, modes: list[str], envs: dict, work: Path, results: dict) -> None:
    """Each mode's first close of a copy of the benchmark store (close_benchmark.py's
    catalog and usage on PostgreSQL), next to a bare GROUP BY on the same copy."""
    import random

    import sqlalchemy as sa

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from close_benchmark import load
    from usage_rating import bare_group_by, database

    from billing_core.config import normalize_database_url

    admin_url = normalize_database_url(args.postgres)
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    runs = results["big_store"] = {"runs": {m: [] for m in modes}}
    with database(admin_url) as template_url:
        env = {
            **envs[next(m for m in modes if m != "before")],
            "BILLING_DATABASE_URL": template_url,
        }
        runs["load"] = load(
            template_url, env, work, args.customers, args.families, args.events, random.Random(42)
        )
        template = template_url.rsplit("/", 1)[1]
        for round_ in range(args.big_runs):
            for mode in rotated(modes, round_):
                name = f"{template}_{mode.replace('-', '_')}"
                with admin.connect() as connection:
                    connection.execute(
                        sa.text(
                            f'CREATE DATABASE "{name}" TEMPLATE "{template}" STRATEGY FILE_COPY'
                        )
                    )
                url = admin_url.rsplit("/", 1)[0] + "/" + name
                try:
                    bare = bare_group_by(url)
                    documents = work / "documents-big"
                    close_env = {
                        **envs[mode],
                        "BILLING_DATABASE_URL": url,
                        "BILLING_OUTPUT_DIR": str(documents),
                    }
                    run = {**measured_close(close_env, mode, url), "bare_group_by_seconds": bare}
                    run["bare_group_by_seconds"] = round(min(bare, bare_group_by(url)), 3)
                    shutil.rmtree(documents, ignore_errors=True)
                finally:
                    from billing_core.store.engine import dispose_engines

                    dispose_engines()
                    with admin.connect() as connection:
                        connection.execute(
                            sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                        )
                runs["runs"][mode].append(run)
                print(f"big store, round {round_ + 1} {mode:<12} {run}", flush=True)
    admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="rounds (every mode once each)")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated: {MODES}")
    parser.add_argument(
        "--before", type=Path, default=None, help="a checkout of the code to compare with"
    )
    parser.add_argument(
        "--postgres",
        default=None,
        help="also close, per mode, copies of close_benchmark.py's store on this server",
    )
    parser.add_argument("--big-runs", type=int, default=3)
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--families", type=int, default=2_000)
    parser.add_argument("--events", type=int, default=5_000_000)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    if args.before is not None and "before" not in modes:
        modes.insert(0, "before")
    unknown = set(modes) - set(MODES) - {"before"}
    if unknown:
        parser.error(f"unknown modes: {', '.join(sorted(unknown))}")

    work = Path(tempfile.mkdtemp(prefix="billing-cli-fixed-cost-"))
    results: dict = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "load_before": os.getloadavg(),
        "runs": {m: [] for m in modes},
        "before": str(args.before) if args.before else None,
    }
    envs = {m: environment(work, m, args.before and args.before.resolve()) for m in modes}
    tiny = f"sqlite:///{work / 'billing.db'}"
    try:
        shutil.copy(CATALOG, work / "catalog.yaml")
        base = envs[next((m for m in modes if m != "before"), modes[0])]
        billing(base, "db", "upgrade")
        billing(base, "import", str(work / "catalog.yaml"))
        server = prefect_server(work / "prefect-api-url") if "api-url" in modes else nullcontext()
        with server as url:
            if url:
                envs["api-url"]["PREFECT_API_URL"] = url
            for mode in modes:  # warm-up: each PREFECT_HOME created and migrated
                billing(envs[mode], "close", "--through", THROUGH)
            print(f"load average before: {results['load_before']}", flush=True)
            for round_ in range(args.runs):
                for mode in rotated(modes, round_):
                    run = measured_close(envs[mode], mode, tiny)
                    results["runs"][mode].append(run)
                    print(f"round {round_ + 1} {mode:<12} {run}", flush=True)
            results["load_after_tiny"] = os.getloadavg()
            if args.postgres:
                big_store(args, modes, envs, work, results)
        for mode in modes:
            if mode.startswith("reuse"):
                billing(envs[mode], "server", "stop", "--force", check=False)
    finally:
        results["load_after"] = os.getloadavg()
        if args.keep:
            print(f"work folder: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    print(f"\nload average before {results['load_before']}, after {results['load_after']}")
    results["summary"] = report("a tiny catalog (four customers)", results["runs"])
    if args.postgres:
        big = results["big_store"]
        big["summary"] = report(
            f"{args.customers:,} customers, {args.events:,} events (PostgreSQL)", big["runs"]
        )
        print(f"{'mode':<14}{'whole process / bare GROUP BY':>32}")
        for mode, runs in big["runs"].items():
            ratios = [r["wall_seconds"] / r["bare_group_by_seconds"] for r in runs]
            groups = [r["bare_group_by_seconds"] for r in runs]
            big["summary"][mode]["ratio_to_group_by_median"] = round(statistics.median(ratios), 1)
            print(f"{mode:<14}{summary(ratios):>32}   (GROUP BY {summary(groups)} s)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


def report(title: str, runs_by_mode: dict[str, list[dict]]) -> dict:
    print(f"\n{title}: median [min – max] of each mode's runs")
    print(f"{'mode':<14}{'whole process, s':>28}{'steps, s':>28}{'beyond the steps, s':>28}")
    table = {}
    for mode, runs in runs_by_mode.items():
        walls = [r["wall_seconds"] for r in runs]
        steps = [r["steps_seconds"] for r in runs]
        beyond = [r["wall_seconds"] - r["steps_seconds"] for r in runs]
        table[mode] = {
            "wall_median": round(statistics.median(walls), 2),
            "wall_min": round(min(walls), 2),
            "wall_max": round(max(walls), 2),
            "steps_median": round(statistics.median(steps), 3),
            "beyond_steps_median": round(statistics.median(beyond), 2),
        }
        print(f"{mode:<14}{summary(walls):>28}{summary(steps):>28}{summary(beyond):>28}")
    return table


if __name__ == "__main__":
    main()
