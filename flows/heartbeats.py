"""A flow run's heartbeats that stop as soon as the run ends.

Prefect's flow engine sends a heartbeat from a thread of its own every
`PREFECT_FLOWS_HEARTBEAT_FREQUENCY` seconds (the server marks a run that stops sending
them as crashed), and joins that thread when the run ends. On Prefect 3.8 the thread
sleeps in steps of one second, checking between them whether to stop: every flow run,
`billing close` included, waited up to a second (half a second on average) at its end
for nothing (measured with `py-spy` on the close of the benchmark store).

`prompt_heartbeats` puts in its place the same heartbeats, from the same kind of thread
with the same context, whose wait ends the moment the run does. It does so only on the
Prefect releases it was checked against (`CHECKED_RELEASES`); any other release keeps its
own.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

CHECKED_RELEASES = ("3.8.8",)


def checked_release() -> bool:
    import prefect

    return prefect.__version__ in CHECKED_RELEASES


@contextmanager
def _send_heartbeats(engine: Any, join_on_exit: bool = True) -> Iterator[None]:
    """Prefect 3.8.8's `flow_engine._send_heartbeats`, its sleep an event's wait."""
    from prefect.flow_engine import MINIMUM_HEARTBEAT_INTERVAL

    seconds = engine.heartbeat_seconds
    if seconds is None:
        yield
        return
    seconds = max(seconds, MINIMUM_HEARTBEAT_INTERVAL)
    resource, related = engine._build_heartbeat_event_template()
    stop = threading.Event()

    def beat() -> None:
        while not stop.is_set():
            run = engine.flow_run
            if run and run.state and run.state.is_final():
                return
            try:
                engine._emit_flow_run_heartbeat(resource, related)
            except Exception:  # noqa: BLE001 - as Prefect's own: logged, the run goes on
                engine.logger.debug("Failed to emit heartbeat", exc_info=True)
            stop.wait(seconds)

    thread = threading.Thread(target=contextvars.copy_context().run, args=(beat,), daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        if join_on_exit:
            thread.join(timeout=2)


def prompt_heartbeats() -> bool:
    """Install the prompt heartbeats on a checked Prefect release; whether it did."""
    if not checked_release():
        return False
    import prefect.flow_engine

    prefect.flow_engine._send_heartbeats = _send_heartbeats
    return True
