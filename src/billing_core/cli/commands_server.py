"""`billing server`: the Prefect server the billing commands keep between them
(BILLING_PREFECT_SERVER=reuse, the default, when no PREFECT_API_URL is configured)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from billing_core.cli.common import fail, out

server_app = typer.Typer(
    no_args_is_help=True,
    help="The Prefect server kept for the commands' flow runs (without PREFECT_API_URL).",
)


def _home() -> Path:
    from prefect.settings import get_current_settings

    return Path(get_current_settings().home).expanduser()


@server_app.command("status")
def server_status() -> None:
    """Which Prefect server the flow runs of the next command go to."""
    from prefect.settings import get_current_settings

    from billing_core.cli import prefect_server
    from billing_core.config import get_settings

    configured = get_current_settings().api.url
    if configured:
        out.print(f"flow runs go to the configured Prefect API {configured} (PREFECT_API_URL)")
        return
    mode = get_settings().prefect_server
    home = _home()
    server, alive, used = prefect_server.status(home)
    if mode == "temporary":
        out.print("BILLING_PREFECT_SERVER=temporary: each command starts its own Prefect server")
    if server is None or not alive:
        out.print(f"no Prefect server is kept for the billing commands (PREFECT_HOME {home})")
        return
    last = prefect_server.last_use(home) or server.started
    left = max(0.0, server.idle_seconds - (time.time() - last))
    out.print(f"Prefect server at {server.ui} (API {server.url}), pid {server.pid}")
    out.print(
        "in use by a command"
        if used
        else f"unused for {time.time() - last:.0f} s; it stops in {left:.0f} s unless used"
    )
    out.print(f"log: {home / prefect_server.LOG}")


@server_app.command("start")
def server_start() -> None:
    """Start the kept Prefect server now (the first command that needs one would), or show
    the one running: to open its UI, or to talk to it with `prefect` commands."""
    from prefect.settings import get_current_settings

    from billing_core.cli import prefect_server
    from billing_core.config import get_settings

    settings = get_current_settings()
    if settings.api.url:
        out.print(f"flow runs go to the configured Prefect API {settings.api.url}")
        return
    if prefect_server.fcntl is None:
        fail("no server is kept between commands on this system")
    with prefect_server.reused_server(
        _home(),
        float(settings.server.ephemeral.startup_timeout_seconds),
        get_settings().prefect_server_idle.total_seconds(),
        prefect_server.server_environment(settings),
    ) as (url, started):
        out.print(started or f"a Prefect server is running at {url.removesuffix('/api')}")
    out.print(f"PREFECT_API_URL={url}")


@server_app.command("stop")
def server_stop(
    force: Annotated[
        bool, typer.Option("--force", help="stop it even while a command is using it")
    ] = False,
) -> None:
    """Stop the Prefect server kept for the billing commands (the next command that needs
    one starts it again)."""
    from billing_core.cli import prefect_server

    try:
        out.print(prefect_server.stop(_home(), force=force))
    except prefect_server.ServerInUse as busy:
        fail(str(busy))
