"""Two usage loads that share new event ids, in different orders, deadlock on the events'
key on PostgreSQL (each waits for a row the other wrote). The one PostgreSQL aborts is
rolled back whole and run again alone: both loads succeed and each event is stored once.
"""

from __future__ import annotations

import threading

import pytest

from billing_core.inputs import usage, usage_write
from billing_core.inputs.usage import ingest_files, retrying_deadlocks
from billing_core.store.postgres import EventCopy
from tests.helpers import import_yaml

CATALOG = """
customers: [{id: acme, name: Acme, currency: USD}]
metrics: [{code: calls, name: Calls, aggregation: sum}]
"""


def _file(folder, name: str, numbers: list[int]):
    path = folder / name
    rows = ["event_id,customer,metric,timestamp,quantity"]
    rows += [f"e-{n:04d},acme,calls,2026-01-05T10:00:00Z,1" for n in numbers]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def test_loads_that_deadlock_are_run_again_alone_and_count_each_event_once(
    store, tmp_path, monkeypatch
):
    if store.backend != "postgres":
        pytest.skip("SQLite has one writer at a time: its loads queue, they cannot deadlock")
    import_yaml(CATALOG)
    monkeypatch.setattr(usage_write, "BATCH", 50)
    first, second = list(range(50)), list(range(50, 100))
    paths = [_file(tmp_path, "a.csv", first + second), _file(tmp_path, "b.csv", second + first)]

    # Each load's first batch is written before either writes its second: then each
    # second batch waits for rows the other load wrote, a deadlock.
    both_wrote_once = threading.Barrier(2, timeout=30)
    writers_seen: set[int] = set()
    write_batch = EventCopy._write_batch

    def in_step(self, *batch):
        write_batch(self, *batch)
        if id(self) not in writers_seen and not self.session.info.get("load_alone"):
            writers_seen.add(id(self))
            both_wrote_once.wait()

    monkeypatch.setattr(EventCopy, "_write_batch", in_step)
    deadlocks = []
    is_deadlock = usage.is_deadlock

    def counting(error):
        found = is_deadlock(error)
        deadlocks.append(found)
        return found

    monkeypatch.setattr(usage, "is_deadlock", counting)
    results: dict[str, object] = {}

    def load(path):
        try:
            results[path.name] = retrying_deadlocks(lambda session: ingest_files(session, [path]))
        except BaseException as error:  # noqa: BLE001 - the test reads it
            results[path.name] = error

    threads = [threading.Thread(target=load, args=(p,)) for p in paths]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)

    assert not [r for r in results.values() if isinstance(r, BaseException)], results
    assert deadlocks.count(True) == 1, deadlocks  # it happened, once, and was retried
    assert sorted(r.loaded for r in results.values()) == [0, 100]  # the retry found all
    assert store.rows("SELECT count(*), count(DISTINCT event_id) FROM usage_events") == [(100, 100)]
    # The day's bucket counts each event once: the deadlocked load's writes were undone.
    assert store.rows("SELECT events, total_low FROM usage_buckets") == [(100, 100 * 10**6)]


def test_a_load_that_is_not_a_deadlock_is_not_run_again(store, tmp_path):
    calls = []

    def load(session):
        calls.append(session.info.get("load_alone"))
        raise ValueError("a bad file")

    with pytest.raises(ValueError, match="a bad file"):
        retrying_deadlocks(load)
    assert calls == [False]
