"""The Prefect server a CLI flow run reports to when no Prefect API is configured.

A close, a backfill or the demo run as Prefect flow runs. With `PREFECT_API_URL` set
(environment, Prefect profile, `.env` or `prefect.toml`) they report there and nothing
here happens. Without it, Prefect would start a temporary server for every command and
stop it at the end: 5-10 s of each command on a busy machine (docs/performance.md).
Instead, `BILLING_PREFECT_SERVER` chooses:

- `reuse` (default): the first command starts a Prefect server in the background (API
  and UI on a free port of 127.0.0.1, its database in `PREFECT_HOME` as Prefect's own
  temporary server has it) and records it in `PREFECT_HOME/billing-prefect-server.json`;
  later commands find it there and use it while it answers. It stops by itself after
  `BILLING_PREFECT_SERVER_IDLE` without a command using it, when its record is removed
  (`billing server stop`, or `PREFECT_HOME` deleted), or with a SIGTERM.
- `temporary`: a server per command, started when the command needs it and stopped when
  it ends (it also stops if the command dies).

Locks (`fcntl.flock`, released by the kernel when a process dies, so there is nothing
stale to clean up): `billing-prefect-server.lock` is held while a command looks the
server up or starts one, so that two commands starting together start one server;
`billing-prefect-server.use` is held shared by every command using the server (its mtime
is the last use), and the server stops only when it can hold it exclusively.

This module imports neither Prefect nor the store at import time: the server process
runs `python -m billing_core.cli.prefect_server serve ...`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: a server per command
    fcntl = None  # type: ignore[assignment]

MODES = ("reuse", "temporary", "prefect")
RECORD = "billing-prefect-server.json"
LOCK = "billing-prefect-server.lock"
USE = "billing-prefect-server.use"
LOG = "billing-prefect-server.log"
MARK = "billing_core.cli.prefect_server"  # in the server's command line
WATCH_SECONDS = 2.0  # how often the server checks its record, its parent, its idleness
STOP_SECONDS = 10.0  # how long a stop waits for the server to finish its requests


class ServerDidNotStart(RuntimeError):
    """The server did not answer within the start-up timeout."""

    def __init__(self, seconds: float, log: Path | None, detail: str = "", exited: bool = False):
        self.seconds, self.log = seconds, log
        where = f"; its log: {log}" if log else ""
        within = "" if exited else f" within {seconds:g} s"
        super().__init__(
            f"the Prefect server for the flow run did not start{within} "
            f"({detail or 'a busy machine?'}{where})"
        )


@dataclass
class Server:
    """A recorded server: its process, its API URL and the Prefect version it runs."""

    pid: int
    url: str
    prefect: str
    started: float
    idle_seconds: float

    @classmethod
    def read(cls, home: Path) -> Server | None:
        try:
            data = json.loads((home / RECORD).read_text())
            return cls(**{k: data[k] for k in cls.__dataclass_fields__})
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def write(self, home: Path) -> None:
        """Atomically: a reader sees the whole record or none."""
        temporary = home / f"{RECORD}.{os.getpid()}"
        temporary.write_text(json.dumps(self.__dict__, indent=2) + "\n")
        os.replace(temporary, home / RECORD)

    @property
    def ui(self) -> str:
        return self.url.removesuffix("/api")


# -- the command's side -------------------------------------------------------------------


@contextlib.contextmanager
def flow_api(announce: Callable[[str], None] | None = None) -> Iterator[str | None]:
    """A Prefect API for the flow runs started inside the block: the configured one, else
    the server `BILLING_PREFECT_SERVER` asks for. Yields its URL (None when configured)."""
    from prefect.settings import get_current_settings

    from billing_core.config import get_settings

    settings = get_current_settings()
    ours = get_settings()
    if settings.api.url or ours.prefect_server == "prefect":
        yield None  # the configured API, or Prefect's own temporary server
        return
    home = Path(settings.home).expanduser()
    timeout = float(settings.server.ephemeral.startup_timeout_seconds)
    env = server_environment(settings)
    if ours.prefect_server == "reuse" and fcntl is not None:
        used = reused_server(home, timeout, ours.prefect_server_idle.total_seconds(), env)
    else:
        used = temporary_server(home, timeout, env)
    with used as (url, started):
        if started and announce is not None:
            announce(started)
        before = _point_prefect_at(url)
        try:
            yield url
        finally:
            _drain_prefect_workers()
            _point_prefect_at(before)


def server_environment(settings) -> dict[str, str]:
    """The server's environment: the command's, with the Prefect settings it resolved
    (from a profile, `.env` or `prefect.toml` too, as Prefect passes them to its own
    temporary server), without the product's and the object store's secrets (a server
    that outlives the command has no use for them)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BILLING_", "AWS_"))}
    env.update(settings.to_environment_variables(exclude_unset=True))
    env.pop("PREFECT_API_URL", None)
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    return env


def _point_prefect_at(url: str | None) -> str | None:
    """Prefect's settings read from now on name this API (none: as they were): in this
    thread and in the threads Prefect starts later (its log and event workers read the
    process-wide settings). Returns the URL named before."""
    import prefect.context

    before = os.environ.get("PREFECT_API_URL")
    if url is None:
        os.environ.pop("PREFECT_API_URL", None)
    else:
        os.environ["PREFECT_API_URL"] = url
    prefect.context.refresh_global_settings_context()
    return before


def _drain_prefect_workers() -> None:
    """Send the logs and events still queued (task-run states travel as events) while the
    server is known to be there and held in use."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    with contextlib.suppress(Exception):
        APILogWorker.drain_all(timeout=30, at_exit=False)
    with contextlib.suppress(Exception):
        EventsWorker.drain_all(timeout=30, at_exit=False)


@contextlib.contextmanager
def reused_server(
    home: Path, timeout: float, idle_seconds: float, env: dict[str, str]
) -> Iterator[tuple[str, str | None]]:
    """The recorded server if it answers, else a new one; held in use for the block.
    Yields its URL and, when this command started it, a line saying so."""
    home.mkdir(parents=True, exist_ok=True)
    started = None
    with open(home / USE, "a+") as use:  # closing it releases the shared lock
        with _locked(home / LOCK, fcntl.LOCK_EX):
            server = Server.read(home)
            if server is not None and not _usable(server, home, timeout):
                retire(server, home)
                server = None
            if server is None:
                server = _start_detached(home, timeout, idle_seconds, env)
                started = (
                    f"started a Prefect server for flow runs at {server.ui} (API and UI, "
                    f"pid {server.pid}); later commands reuse it; it stops after "
                    f"{_duration(idle_seconds)} unused, or with `billing server stop` "
                    "(BILLING_PREFECT_SERVER=temporary: a server per command)"
                )
            fcntl.flock(use, fcntl.LOCK_SH)  # before the lock goes: it cannot idle out now
            os.utime(home / USE)
        try:
            yield server.url, started
        finally:
            with contextlib.suppress(OSError):
                os.utime(home / USE)


def _usable(server: Server, home: Path, timeout: float) -> bool:
    """The recorded server is ours, alive, of this Prefect version, and answers. One in use
    by another command that does not answer at once is given the start-up timeout (it
    may be busy); one that nobody uses is replaced."""
    import prefect

    if not _ours(server.pid):
        return False
    if server.prefect != prefect.__version__ and not in_use(home):
        return False
    if healthy(server.url, timeout=5.0):
        return True
    if not in_use(home):
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if healthy(server.url, timeout=5.0):
            return True
        time.sleep(0.5)
    raise ServerDidNotStart(
        timeout, home / LOG, detail="it runs and another command uses it, but it does not answer"
    )


def _start_detached(home: Path, timeout: float, idle_seconds: float, env: dict[str, str]) -> Server:
    """Start a server that outlives this command; wait until it answers."""
    log = (home / LOG).open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", MARK, "serve", "--home", str(home), "--idle", str(idle_seconds)],
        env=env,
        cwd=home,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # no signal from this terminal reaches it
    )
    log.close()
    _DETACHED.append(process)  # not waited for: it outlives this command
    try:
        return _wait_until_up(process, timeout, lambda: _recorded_by(home, process.pid), home / LOG)
    except BaseException:
        _stop_process(process.pid, process)
        with contextlib.suppress(OSError):
            if (server := Server.read(home)) is not None and server.pid == process.pid:
                (home / RECORD).unlink()
        raise


_DETACHED: list[subprocess.Popen] = []


def _recorded_by(home: Path, pid: int) -> Server | None:
    server = Server.read(home)
    return server if server is not None and server.pid == pid else None


@contextlib.contextmanager
def temporary_server(
    home: Path, timeout: float, env: dict[str, str]
) -> Iterator[tuple[str, str | None]]:
    """A server for this command alone, stopped when the block ends."""
    home.mkdir(parents=True, exist_ok=True)
    port_file = home / f"billing-prefect-server.{os.getpid()}.{time.monotonic_ns()}.port"
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", MARK, "serve", "--home", str(home)),
            *("--temporary", "--port-file", str(port_file), "--parent", str(os.getpid())),
        ],
        env=env,
        cwd=home,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,  # its warnings and errors on this command's stderr
    )
    try:
        server = _wait_until_up(process, timeout, lambda: _port_file(port_file), None)
        yield server.url, None
    finally:
        with contextlib.suppress(OSError):
            port_file.unlink()
        _stop_process(process.pid, process)


def _port_file(path: Path) -> Server | None:
    try:
        url = path.read_text().strip()
    except OSError:
        return None
    return Server(pid=0, url=url, prefect="", started=0.0, idle_seconds=0.0) if url else None


def _wait_until_up(
    process: subprocess.Popen, timeout: float, find: Callable[[], Server | None], log: Path | None
) -> Server:
    """The server once it answers on its health endpoint (polled every 50 ms)."""
    deadline = time.monotonic() + timeout
    server = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerDidNotStart(
                timeout, log, detail=f"it exited with {process.returncode}", exited=True
            )
        server = server or find()
        if server is not None and healthy(server.url, timeout=5.0):
            return server
        time.sleep(0.05)
    raise ServerDidNotStart(timeout, log)


def healthy(url: str, timeout: float = 5.0) -> bool:
    """The API answers its health check. (Straight to 127.0.0.1: no proxy settings.)"""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        connection.request("GET", parts.path.rstrip("/") + "/health")
        return connection.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()


def in_use(home: Path) -> bool:
    """A command holds the server in use (a shared lock on the use file)."""
    try:
        with _locked(home / USE, fcntl.LOCK_EX | fcntl.LOCK_NB):
            return False
    except BlockingIOError:
        return True


def retire(server: Server, home: Path) -> None:
    """Drop a record that no longer works: stop its process if it is ours and still runs."""
    if _recorded_by(home, server.pid) is not None:
        (home / RECORD).unlink(missing_ok=True)
    if _ours(server.pid):
        _stop_process(server.pid)


def stop(home: Path, force: bool = False) -> str:
    """`billing server stop`: what happened, in words. Refuses a server in use unless forced."""
    if fcntl is None:
        return "no server is kept between commands on this system"
    home.mkdir(parents=True, exist_ok=True)
    with _locked(home / LOCK, fcntl.LOCK_EX):
        server = Server.read(home)
        if server is None:
            return "no Prefect server was running for the billing commands"
        if not _ours(server.pid):
            (home / RECORD).unlink(missing_ok=True)
            return f"the recorded server (pid {server.pid}) had already stopped"
        if in_use(home) and not force:
            raise ServerInUse(server)
        (home / RECORD).unlink(missing_ok=True)
        _stop_process(server.pid)
    return f"stopped the Prefect server at {server.ui} (pid {server.pid})"


class ServerInUse(RuntimeError):
    def __init__(self, server: Server):
        super().__init__(
            f"a command is using the Prefect server at {server.ui} (pid {server.pid}); "
            "stop it when that command is done, or with --force"
        )


def status(home: Path) -> tuple[Server | None, bool, bool]:
    """The recorded server, whether it answers, whether a command uses it."""
    server = Server.read(home)
    if server is None or fcntl is None:
        return server, False, False
    alive = _ours(server.pid) and healthy(server.url, timeout=5.0)
    return server, alive, alive and in_use(home)


def last_use(home: Path) -> float | None:
    try:
        return (home / USE).stat().st_mtime
    except OSError:
        return None


def _ours(pid: int) -> bool:
    """The process runs and is one of these servers (not another that took its pid)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # another user's process: not ours
    try:
        return MARK.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc (macOS): a live pid from our own record


def _stop_process(pid: int, process: subprocess.Popen | None = None) -> None:
    """SIGTERM (the server finishes its requests and stops its services), then SIGKILL."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_SECONDS
    while time.monotonic() < deadline:
        if process is not None:
            if process.poll() is not None:
                return
        elif not _running(pid):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    if process is not None:
        process.wait()


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):  # a zombie has stopped
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True


@contextlib.contextmanager
def _locked(path: Path, how: int) -> Iterator[object]:
    with open(path, "a+") as handle:
        fcntl.flock(handle, how)
        yield handle


def _duration(seconds: float) -> str:
    if seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    if seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


# -- the server's side --------------------------------------------------------------------


def serve(
    home: Path,
    idle_seconds: float | None,
    temporary: bool,
    port_file: Path | None,
    parent: int | None,
) -> None:
    """Run Prefect's server app on a free port of 127.0.0.1 until told to stop.

    Temporary: Prefect's own temporary server (no UI, the services an ephemeral server
    runs), stopping when its command ends or dies. Reused: a `prefect server start`
    without the deployment scheduler and late-run marking (nothing to schedule for a
    server that lives while commands use it), with the UI, recorded in `home`."""
    import asyncio
    import socket

    if not temporary:  # unless the operator asked otherwise
        os.environ.setdefault("PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED", "false")
        os.environ.setdefault("PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED", "false")
    else:
        os.environ["PREFECT_UI_ENABLED"] = "false"

    import prefect
    import uvicorn
    from prefect.server.api.server import create_app
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    # IPPROTO_TCP named: asyncio sets TCP_NODELAY on accepted connections only then
    # (without it, Nagle and delayed ACKs add 40 ms to every API call).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/api"
    me = Server(os.getpid(), url, prefect.__version__, time.time(), idle_seconds or 0.0)

    config = uvicorn.Config(
        create_app(final=True, ephemeral=temporary),
        lifespan="on",
        log_level="error",
        timeout_keep_alive=settings.server.api.keepalive_timeout,
        ws_ping_interval=settings.server.api.websocket_ping_interval,
        ws_ping_timeout=settings.server.api.websocket_ping_timeout,
    )
    server = uvicorn.Server(config)
    if temporary:
        assert port_file is not None
        port_file.write_text(url + "\n")
    else:
        (home / USE).touch()  # its idle time counts from now
        me.write(home)

    async def watch() -> None:
        while not server.should_exit:
            await asyncio.sleep(WATCH_SECONDS)
            if temporary:
                if parent is not None and os.getppid() != parent:
                    server.should_exit = True  # its command died
            elif _recorded_by(home, me.pid) is None or _idle_out(home, me):
                server.should_exit = True

    async def run() -> None:
        watcher = asyncio.create_task(watch())
        try:
            await server.serve(sockets=[sock])
        finally:
            watcher.cancel()

    try:
        with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
            runner.run(run())
    finally:
        with contextlib.suppress(OSError):
            if temporary and port_file is not None:
                port_file.unlink()
            elif _recorded_by(home, me.pid) is not None:
                (home / RECORD).unlink()


def _idle_out(home: Path, me: Server) -> bool:
    """Unused for the idle time: removes the record (no command finds it any more) and says
    so. Under the start lock, so that no command is between finding and using it."""
    if not me.idle_seconds or time.time() - (last_use(home) or me.started) < me.idle_seconds:
        return False
    try:
        with _locked(home / LOCK, fcntl.LOCK_EX | fcntl.LOCK_NB):
            if in_use(home) or time.time() - (last_use(home) or 0) < me.idle_seconds:
                return False
            (home / RECORD).unlink(missing_ok=True)
            return True
    except BlockingIOError:
        return False


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog=f"python -m {MARK}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("serve", help="run the server (started by the billing commands)")
    run.add_argument("--home", type=Path, required=True)
    run.add_argument("--idle", type=float, default=None)
    run.add_argument("--temporary", action="store_true")
    run.add_argument("--port-file", type=Path, default=None)
    run.add_argument("--parent", type=int, default=None)
    args = parser.parse_args(argv)
    serve(args.home, args.idle, args.temporary, args.port_file, args.parent)


if __name__ == "__main__":
    main()
