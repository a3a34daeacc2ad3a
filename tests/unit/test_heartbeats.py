"""A flow run's heartbeats: sent as Prefect sends them, stopped as soon as the run ends."""

from __future__ import annotations

import time
from types import SimpleNamespace

import prefect.flow_engine

from flows import heartbeats


class Engine:
    """What the heartbeat thread uses of Prefect's flow-run engine."""

    heartbeat_seconds = 30
    flow_run = SimpleNamespace(state=SimpleNamespace(is_final=lambda: False))
    logger = SimpleNamespace(debug=lambda *a, **k: None)

    def __init__(self) -> None:
        self.sent: list[tuple] = []

    def _build_heartbeat_event_template(self):
        return "resource", ["related"]

    def _emit_flow_run_heartbeat(self, resource, related):
        self.sent.append((resource, related))


def seconds_to_end(send_heartbeats) -> tuple[float, Engine]:
    """Start a run's heartbeats, wait for the first, end the run: how long ending took."""
    engine = Engine()
    with send_heartbeats(engine):
        while not engine.sent:
            time.sleep(0.01)
        started = time.perf_counter()
    return time.perf_counter() - started, engine


def test_the_flow_engine_sends_the_prompt_heartbeats_on_a_checked_prefect():
    import flows.runtime  # noqa: F401 - installs them

    assert heartbeats.checked_release(), "check flows/heartbeats.py against this Prefect"
    assert prefect.flow_engine._send_heartbeats is heartbeats._send_heartbeats


def test_a_run_ends_without_waiting_for_its_heartbeat_thread():
    ended, engine = seconds_to_end(heartbeats._send_heartbeats)
    assert engine.sent == [("resource", ["related"])]
    # Prefect's own thread, in its one-second sleep, holds the end of the run ~1 s.
    assert ended < 0.5


def test_no_heartbeats_when_they_are_turned_off():
    engine = Engine()
    engine.heartbeat_seconds = None
    with heartbeats._send_heartbeats(engine):
        time.sleep(0.05)
    assert engine.sent == []


def test_an_unchecked_prefect_release_keeps_its_own(monkeypatch):
    own = prefect.flow_engine._send_heartbeats
    monkeypatch.setattr(prefect, "__version__", "3.99.0")
    assert heartbeats.prompt_heartbeats() is False
    assert prefect.flow_engine._send_heartbeats is own
