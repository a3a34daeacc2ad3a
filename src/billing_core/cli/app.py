"""The `billing` command: parses, calls the services, prints.

Refused input exits 1 with the reason on stderr (one line naming the file and problem,
then one line per bad row); nothing is changed.

Each group of commands has its module (`commands_*`); they are all registered here, on
the one Typer app.
"""

from __future__ import annotations

import atexit
import gc
import os
import sys

import click
import typer
from typer.core import TyperArgument, TyperOption

from billing_core.cli import (
    commands_catalog,
    commands_close,
    commands_credits,
    commands_db,
    commands_demo,
    commands_invoices,
    commands_reports,
    commands_server,
    commands_subscriptions,
    commands_usage,
)
from billing_core.cli.common import err


def _value_label(param: click.Parameter, ctx: click.Context | None = None) -> str | None:
    """What an option's value is, as help shows it: its metavar (DATE, FILE, STATUS...),
    else its kind in words; nothing for a flag. (Typer would show Python types:
    `<bool>`, `<list[Path]>`, `<str>`.)"""
    if getattr(param, "is_flag", False) or getattr(param, "count", False):
        return None
    if param.metavar is not None:
        return param.metavar
    kind = param.type
    if isinstance(kind, click.Path):
        word = "FOLDER" if kind.dir_okay and not kind.file_okay else "FILE"
    elif isinstance(kind, click.types.IntParamType):
        word = "NUMBER"
    else:
        word = "TEXT"
    return word + ("..." if param.nargs != 1 else "")


TyperOption.display_type_rich = _value_label  # type: ignore[method-assign]
# An argument's metavar (INVOICE, FILE...) already says what it takes.
TyperArgument.display_type_rich = lambda self, ctx: None  # type: ignore[method-assign]

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Period-close billing: schedules and usage into consolidated invoices.",
)
app.add_typer(commands_db.db_app, name="db")
app.add_typer(commands_usage.usage_app, name="usage")
app.add_typer(commands_invoices.invoices_app, name="invoices")
app.add_typer(commands_subscriptions.subscriptions_app, name="subscriptions")
app.add_typer(commands_credits.credits_app, name="credits")
app.add_typer(commands_reports.reports_app, name="reports")
app.add_typer(commands_server.server_app, name="server")
app.command("import")(commands_catalog.import_)
app.command("close")(commands_close.close)
app.command("backfill")(commands_close.backfill)
app.command("demo")(commands_demo.demo)


# Without PREFECT_API_URL a flow run needs a Prefect server started for it (kept between
# commands, or one per command: `prefect_server`); Prefect's default 20 s for it to start
# is too short on a busy machine.
SERVER_STARTUP_SECONDS = "180"
SERVER_TIMEOUT = "Timed out while attempting to connect to ephemeral Prefect API server"


WHAT_TO_DO = (
    "start one with `prefect server start` and run with "
    "PREFECT_API_URL=http://127.0.0.1:4200/api, or raise "
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
)


def _one_line(error: BaseException) -> str:
    """An unexpected error as one line (the traceback with BILLING_DEBUG=1)."""
    from billing_core.cli.prefect_server import ServerDidNotStart
    from billing_core.config import SettingsError

    if isinstance(error, SettingsError):
        return f"refused: the environment's settings: {'; '.join(str(error).splitlines())}"
    if isinstance(error, ServerDidNotStart):
        return f"{error}: {WHAT_TO_DO}"
    if SERVER_TIMEOUT in str(error):
        timeout = os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS")
        return (
            f"the temporary Prefect server did not start within {timeout} s (a busy machine?): "
            + WHAT_TO_DO
        )
    from billing_core.store.engine import safe_url

    text = " ".join(str(getattr(error, "orig", None) or error).split())
    url = os.environ.get("BILLING_DATABASE_URL")
    if url:
        text = text.replace(url, safe_url(url))
    return f"error: {type(error).__name__}: {text[:500]} (BILLING_DEBUG=1 shows where)"


def main() -> None:
    """Entry point of the `billing` command: no input ever gets a traceback, only one line
    (BILLING_DEBUG=1 shows the traceback of an unexpected error)."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault(
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", SERVER_STARTUP_SECONDS
    )
    # The last exit handler (registered first): what the command built lives until the
    # process ends, so the interpreter's final collections need not walk it (0.5-1 s of a
    # close's wall time with Prefect and SQLAlchemy loaded; docs/performance.md).
    atexit.register(gc.freeze)
    try:
        app()  # exits itself, with click's one-line usage errors
    except Exception as error:  # noqa: BLE001 - the last guard: one line, not a traceback
        if os.environ.get("BILLING_DEBUG") == "1":
            raise
        err.print(_one_line(error))
        sys.exit(1)


if __name__ == "__main__":
    main()
