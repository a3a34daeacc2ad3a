"""The Prefect server of a `billing` command run without PREFECT_API_URL
(`billing_core.cli.prefect_server`): the close stays a Prefect flow run, read back from
the server it used; a kept server is found again by the next command, a dead or hung one
is replaced, an unused one stops by itself, two commands starting together start one.

The tests marked slow start real servers through the installed command; the others play
the record and the locks with stand-in processes.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from billing_core.cli import prefect_server as ps

BIN = Path(sys.executable).parent
CATALOG = Path(__file__).resolve().parents[1] / "scenarios/alguna-global-industries/catalog.yaml"


def billing(*args: str, home: Path, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_API_URL", "BILLING_PREFECT_SERVER"))
    }
    environment.update(PREFECT_HOME=str(home), **env)
    return subprocess.run(
        [str(BIN / "billing"), *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture
def home(tmp_path) -> Path:
    """The commands' PREFECT_HOME; a server kept there is stopped after the test."""
    home = tmp_path / "prefect-home"
    yield home
    ps.stop(home, force=True)


@pytest.fixture
def tiny(tmp_path, home) -> Path:
    """A migrated SQLite store holding one family of four (its own folder)."""
    return make_store(tmp_path / "store", home)


def make_store(folder: Path, home: Path) -> Path:
    folder.mkdir()
    for args in (("db", "upgrade"), ("import", str(CATALOG))):
        done = billing(*args, home=home, cwd=folder, BILLING_DATABASE_URL=_url(folder))
        assert done.returncode == 0, done.stderr
    return folder


def _url(folder: Path) -> str:
    return f"sqlite:///{folder / 'billing.db'}"


def close(folder: Path, home: Path, **env: str) -> subprocess.CompletedProcess:
    url = _url(folder)
    done = billing(
        "close", "--through", "2026-02-01", home=home, cwd=folder, BILLING_DATABASE_URL=url, **env
    )
    assert done.returncode == 0, done.stderr
    assert "global-industries" in done.stdout
    return done


def flow_runs(api: str) -> list[dict]:
    """The period-close flow runs the server holds, with their task runs' names."""
    runs = httpx.post(f"{api}/flow_runs/filter", json={}, timeout=30).json()
    shown = []
    for run in runs:
        tasks = httpx.post(
            f"{api}/task_runs/filter",
            json={"flow_runs": {"id": {"any_": [run["id"]]}}},
            timeout=30,
        ).json()
        shown.append(
            {
                "id": run["id"],
                "state": run["state_type"],
                "tasks": sorted(t["name"].rsplit("-", 1)[0] for t in tasks),
            }
        )
    return shown


STEPS = sorted(
    [
        "recalculate-schedules",
        "collect-usage",
        "rate-usage",
        "consolidate-rollups",
        "apply-credits",
        "render-invoices",
    ]
)


def wait_for(check, seconds: float = 60.0):
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.25)


def the_close_run(folder: Path) -> str:
    with sqlite3.connect(folder / "billing.db") as db:
        return db.execute("SELECT flow_run_id FROM close_runs ORDER BY id DESC").fetchone()[0]


@pytest.mark.slow
def test_a_kept_server_holds_the_flow_runs_is_found_again_and_a_dead_one_is_replaced(tiny, home):
    first = close(tiny, home)
    assert "started a Prefect server for flow runs at http://127.0.0.1:" in first.stderr
    server = ps.Server.read(home)
    assert server is not None and ps._ours(server.pid)

    # The close is a Prefect flow run on that server, its six steps task runs.
    run = the_close_run(tiny)
    shown = wait_for(lambda: [r for r in flow_runs(server.url) if r["tasks"] == STEPS])
    assert [(r["id"], r["state"]) for r in shown] == [(run, "COMPLETED")]

    # The next command finds it: no new server, its flow run on the same one.
    second = close(tiny, home)
    assert "started a Prefect server" not in second.stderr
    assert ps.Server.read(home).pid == server.pid
    assert the_close_run(tiny) in {r["id"] for r in flow_runs(server.url)}

    # Killed (no clean-up at all): the next command replaces it, and the runs are kept.
    os.kill(server.pid, signal.SIGKILL)
    wait_for(lambda: not ps._running(server.pid), 10)
    third = close(tiny, home)
    assert "started a Prefect server" in third.stderr
    replaced = ps.Server.read(home)
    assert replaced.pid != server.pid
    runs = wait_for(lambda: len(flow_runs(replaced.url)) == 3 and flow_runs(replaced.url))
    assert the_close_run(tiny) in {r["id"] for r in runs}

    # `billing server stop`: gone, and said so.
    done = billing("server", "stop", home=home, cwd=tiny)
    assert done.returncode == 0 and f"pid {replaced.pid}" in done.stdout
    assert not (home / ps.RECORD).exists()
    assert wait_for(lambda: not ps._running(replaced.pid), 15)

    # `billing server start`: one now, its API on the last line; `status` names it.
    started = billing("server", "start", home=home, cwd=tiny)
    assert started.returncode == 0 and "started a Prefect server" in started.stdout
    api = started.stdout.strip().splitlines()[-1].removeprefix("PREFECT_API_URL=")
    assert api == ps.Server.read(home).url and ps.healthy(api)
    status = billing("server", "status", home=home, cwd=tiny)
    assert api.removesuffix("/api") in status.stdout


@pytest.mark.slow
def test_a_temporary_server_is_gone_with_its_command_and_kept_the_flow_run(tiny, home):
    close(tiny, home, BILLING_PREFECT_SERVER="temporary")
    assert not (home / ps.RECORD).exists()
    assert not list(home.glob("*.port"))
    assert not _servers_of(home)
    # Its database stays in PREFECT_HOME, as Prefect's own temporary server's does.
    with sqlite3.connect(home / "prefect.db") as db:
        rows = db.execute("SELECT id, state_type FROM flow_run").fetchall()
    assert [(r[0], r[1]) for r in rows] == [(the_close_run(tiny), "COMPLETED")]


@pytest.mark.slow
def test_an_unused_server_stops_by_itself(tiny, home):
    close(tiny, home, BILLING_PREFECT_SERVER_IDLE="2")
    server = ps.Server.read(home)
    assert server is not None and server.idle_seconds == 2
    assert wait_for(lambda: not ps._running(server.pid), 30)
    assert not (home / ps.RECORD).exists()


@pytest.mark.slow
def test_two_commands_starting_together_start_one_server(tiny, home, tmp_path):
    other = make_store(tmp_path / "other", home)
    done: list[subprocess.CompletedProcess] = []
    threads = [
        threading.Thread(target=lambda f=folder: done.append(close(f, home)))
        for folder in (tiny, other)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(done) == 2
    assert sum("started a Prefect server" in d.stderr for d in done) == 1
    assert len(_servers_of(home)) == 1


def _servers_of(home: Path) -> list[int]:
    """The server processes running for this home."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ours = ps.MARK.encode() in cmdline and str(home).encode() in cmdline
        if ours and ps._running(int(proc.name)):
            found.append(int(proc.name))
    return found


# -- the record and the locks, with stand-in processes --------------------------------------


@pytest.fixture
def stand_in():
    """A process that looks like a server (its command line names the module), does
    nothing, and answers no health check."""
    process = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)", ps.MARK, "serve"]
    )
    # Popen returns while the kernel still sets up the new program (its command line is
    # empty for a moment); a recorded server has long been running.
    assert wait_for(lambda: ps._ours(process.pid), 10)
    yield process
    if process.poll() is None:
        process.kill()
        process.wait()


def _record(home: Path, pid: int, url: str = "http://127.0.0.1:9/api") -> ps.Server:
    import prefect

    server = ps.Server(pid, url, prefect.__version__, time.time(), 60.0)
    home.mkdir(parents=True, exist_ok=True)
    server.write(home)
    return server


def _fake_start(started: list):
    def start(home, timeout, idle_seconds, env):
        server = ps.Server(4242, "http://127.0.0.1:1/api", "x", time.time(), idle_seconds)
        started.append(server)
        return server

    return start


def test_a_record_of_a_dead_process_is_replaced(tmp_path, monkeypatch):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    _record(tmp_path, gone.pid)
    started: list = []
    monkeypatch.setattr(ps, "_start_detached", _fake_start(started))
    with ps.reused_server(tmp_path, 5, 60, {}) as (url, announced):
        assert url == "http://127.0.0.1:1/api" and announced.startswith("started")
    assert len(started) == 1


def test_a_record_naming_another_program_is_dropped_and_that_program_left_alone(
    tmp_path, monkeypatch
):
    _record(tmp_path, os.getpid())  # this test's process: alive, not a server
    started: list = []
    monkeypatch.setattr(ps, "_start_detached", _fake_start(started))
    with ps.reused_server(tmp_path, 5, 60, {}):
        pass
    assert len(started) == 1  # and this process is still here to assert it


def test_a_server_that_does_not_answer_and_nobody_uses_is_stopped_and_replaced(
    tmp_path, monkeypatch, stand_in
):
    _record(tmp_path, stand_in.pid)
    started: list = []
    monkeypatch.setattr(ps, "_start_detached", _fake_start(started))
    with ps.reused_server(tmp_path, 5, 60, {}):
        pass
    assert stand_in.wait(timeout=15) is not None
    assert len(started) == 1


def test_a_server_in_use_that_does_not_answer_is_waited_for_not_killed(
    tmp_path, monkeypatch, stand_in
):
    _record(tmp_path, stand_in.pid)
    monkeypatch.setattr(ps, "_start_detached", _fake_start([]))
    with open(tmp_path / ps.USE, "a+") as use:
        import fcntl

        fcntl.flock(use, fcntl.LOCK_SH)  # another command, mid-close
        with (
            pytest.raises(ps.ServerDidNotStart, match="another command uses it"),
            ps.reused_server(tmp_path, 1, 60, {}),
        ):
            pass
    assert stand_in.poll() is None


def test_stop_refuses_a_server_in_use_unless_forced(tmp_path, stand_in):
    import fcntl

    _record(tmp_path, stand_in.pid)
    with open(tmp_path / ps.USE, "a+") as use:
        fcntl.flock(use, fcntl.LOCK_SH)
        with pytest.raises(ps.ServerInUse):
            ps.stop(tmp_path)
        assert stand_in.poll() is None
        assert "stopped" in ps.stop(tmp_path, force=True)
    assert stand_in.wait(timeout=15) is not None
    assert not (tmp_path / ps.RECORD).exists()
    assert "no Prefect server" in ps.stop(tmp_path)


def test_idle_means_unused_for_the_idle_time_and_not_in_use(tmp_path):
    import fcntl

    me = _record(tmp_path, os.getpid())
    me.idle_seconds = 60
    (tmp_path / ps.USE).touch()
    assert not ps._idle_out(tmp_path, me)  # used just now
    old = time.time() - 120
    os.utime(tmp_path / ps.USE, (old, old))
    with open(tmp_path / ps.USE, "a+") as use:
        fcntl.flock(use, fcntl.LOCK_SH)  # a long close: not idle, however old the mark
        assert not ps._idle_out(tmp_path, me)
    assert ps._idle_out(tmp_path, me)
    assert not (tmp_path / ps.RECORD).exists()  # no command finds it any more


def test_the_mode_and_the_idle_time_are_checked(monkeypatch):
    from billing_core.config import SettingsError, get_settings

    monkeypatch.setenv("BILLING_PREFECT_SERVER", "Temporary")
    monkeypatch.setenv("BILLING_PREFECT_SERVER_IDLE", "PT10M")
    settings = get_settings()
    assert settings.prefect_server == "temporary"
    assert settings.prefect_server_idle.total_seconds() == 600
    monkeypatch.setenv("BILLING_PREFECT_SERVER", "forever")
    with pytest.raises(SettingsError, match="^BILLING_PREFECT_SERVER=forever: reuse"):
        get_settings()
    monkeypatch.setenv("BILLING_PREFECT_SERVER", "reuse")
    monkeypatch.setenv("BILLING_PREFECT_SERVER_IDLE", "0")
    with pytest.raises(SettingsError, match="^BILLING_PREFECT_SERVER_IDLE=0:.*unused"):
        get_settings()


def test_the_server_gets_no_billing_or_object_store_secrets(monkeypatch):
    from prefect.settings import get_current_settings

    monkeypatch.setenv("BILLING_DATABASE_URL", "postgresql://billing:s3cret@db/billing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cret")
    env = ps.server_environment(get_current_settings())
    assert "s3cret" not in " ".join(env.values())
    assert env["PREFECT_HOME"] == os.environ["PREFECT_HOME"]
    assert "PREFECT_API_URL" not in env
