"""CSV usage read in blocks and validated a batch at a time (`usage_blocks`, `usage_vector`)
stores exactly what the row-by-row path stores and says exactly what it says: the same
events (every column), touches, per-file counts, messages and rejects, on both stores.

Each case loads the same files twice through `billing usage ingest`, row by row
(`usage.BATCHES = False`) and in batches, into the same emptied store, and compares. The
blocks are made small (a few rows each) so that a file holds plain batches next to
batches with a problem, and a quoted field runs across a block's end.
"""

from __future__ import annotations

import codecs
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from billing_core.cli.app import app
from billing_core.inputs import usage, usage_blocks, usage_write
from tests.helpers import import_yaml

CATALOG = """
customers:
  - {id: solo, name: Solo, currency: USD}
  - {id: duo, name: Duo, currency: USD}
metrics:
  - {code: units, name: Units, aggregation: sum}
  - {code: calls, name: Calls, aggregation: count}
  - {code: peak, name: Peak, aggregation: max}
  - {code: level, name: Level, aggregation: latest}
  - {code: users, name: Users, aggregation: unique_count, field: user_id}
  - {code: sizes, name: Sizes, aggregation: unique_count}
  - {code: gb, name: GB, aggregation: sum, field: gb}
"""

HEADER = "event_id,customer,metric,timestamp,quantity,user_id,gb,region"

PLAIN = [
    "p01,solo,units,2026-01-05T10:00:00Z,10,,,eu",
    "p02,duo,units,2026-01-05T10:00:00+01:00,1.5,,,",
    "p03,solo,calls,2026-01-05T23:30:00-05:30,,,,us",
    "p04,solo,peak,2026-01-06T10:00:00.5Z,7.250,,,",
    "p05,solo,level,2026-01-07T10:00:00.123456+15:59,0.000001,,,",
    "p06,duo,users,2026-01-08T10:00:00Z,1,alice,,eu",
    "p07,duo,users,2026-01-08T11:00:00Z,1,bob,,",
    "p08,solo,sizes,2026-01-09T10:00:00Z,2.50,,,",
    "p09,solo,sizes,2026-01-09T11:00:00Z,100.000,,,",
    "p10,solo,gb,2026-01-10T10:00:00Z,1,,0.75,eu",
    "p11,solo,units,2026-01-11T10:00:00Z,999999999999.999999,,,",
    "p12,duo,units,2026-01-12T10:00:00-00:00,0,,,",
    "p01,solo,units,2026-01-13T10:00:00Z,99,,,eu",  # the same event id again: the first counts
    "p13,solo,units,2026-01-13T10:00:00+23:59,1,,,",  # an offset only the row path sends
    "p14,solo,users,2026-01-14T10:00:00Z,1, carol ,,",  # spaces the row path strips
    "p15,duo,units,2026-01-15T10:00:00Z,007,,,é",
    "p16,solo,units,1900-01-01T00:00:00Z,1,,,",
    "p17,solo,units,2199-12-31T23:59:59.999999Z,1,,,",
]


@pytest.fixture
def catalog(store, monkeypatch):
    import_yaml(CATALOG)
    monkeypatch.setattr(usage_blocks, "BLOCK_BYTES", 160)  # two or three rows a block
    return store


def write(path: Path, rows: list[str], *, crlf: bool = False, bom: bool = False) -> Path:
    end = "\r\n" if crlf else "\n"
    data = (HEADER + end + end.join(rows) + end).encode()
    path.write_bytes((codecs.BOM_UTF8 if bom else b"") + data)
    return path


def outcome(store, monkeypatch, batches: bool, loads: list[list[object]]) -> dict:
    """Run each load (`billing usage ingest` arguments) in turn, row by row or in batches;
    what each said and what the store and the rejects files hold after them. The store's
    usage is emptied afterwards for the other run."""
    monkeypatch.setattr(usage, "BATCHES", batches)
    in_batches: list[int] = []
    add_events = usage_write.Writer.add_events

    def counted(self, events):
        in_batches.append(events.rows)
        return add_events(self, events)

    monkeypatch.setattr(usage_write.Writer, "add_events", counted)
    said = []
    for args in loads:
        result = CliRunner().invoke(app, ["usage", "ingest", *map(str, args)])
        assert result.exception is None or isinstance(result.exception, SystemExit), (
            result.exception
        )
        rejects = ""
        if "--skip-invalid" in args:
            rejects_path = Path(str(args[args.index("--skip-invalid") + 1]))
            if rejects_path.exists():
                rejects = rejects_path.read_text(encoding="utf-8")
                rejects_path.unlink()
        said.append((result.exit_code, result.stdout, result.stderr, rejects))
    found = {
        "said": said,
        "events": store.rows(
            "SELECT event_id, customer_id, metric_code, timestamp, CAST(quantity AS TEXT), "
            "value, dimension, CAST(properties AS TEXT), source FROM usage_events "
            "ORDER BY event_id"
        ),
        "touches": sorted(
            store.rows("SELECT customer_id, metric_code, earliest, latest FROM usage_touches")
        ),
        "loads": store.rows(
            "SELECT source, key, events_read, events_loaded, duplicates, rejected "
            "FROM usage_loads ORDER BY id"
        ),
    }
    with store.session() as session:
        for table in ("usage_events", "usage_touches", "usage_loads"):
            session.execute(sa.text(f"DELETE FROM {table}"))
        session.commit()
    return found | {"in_batches": sum(in_batches)}


def same_both_ways(store, monkeypatch, loads: list[list[object]]) -> dict:
    rows = outcome(store, monkeypatch, False, loads)
    batched = outcome(store, monkeypatch, True, loads)
    assert rows.pop("in_batches") == 0
    in_batches = batched.pop("in_batches")
    assert batched == rows
    return rows | {"in_batches": in_batches}


def test_odd_values_are_stored_the_same(catalog, tmp_path, monkeypatch):
    path = write(tmp_path / "plain.csv", PLAIN)
    found = same_both_ways(catalog, monkeypatch, [[path]])
    assert found["said"][0][0] == 0, found["said"]
    assert len(found["events"]) == len(PLAIN) - 1
    assert found["in_batches"] > 0  # some blocks were plain enough for the batch path
    stored = {r[0]: r for r in found["events"]}
    assert stored["p01"][4] == "10" and stored["p04"][4] == "7.250"
    assert stored["p08"][6] == "2.5" and stored["p09"][6] == "100"
    assert stored["p10"][5] == 750_000 and stored["p03"][5] == 1_000_000
    assert stored["p14"][6] == "carol"


def test_crlf_and_a_byte_order_mark_are_stored_the_same(catalog, tmp_path, monkeypatch):
    path = write(tmp_path / "crlf.csv", PLAIN, crlf=True, bom=True)
    found = same_both_ways(catalog, monkeypatch, [[path]])
    assert found["said"][0][0] == 0
    assert found["in_batches"] > 0


def test_quoted_fields_blank_lines_and_odd_rows_read_the_same(catalog, tmp_path, monkeypatch):
    rows = [
        *PLAIN[:4],
        'q1,solo,units,2026-01-05T10:00:00Z,1,,,"eu, west"',
        'q2,solo,units,2026-01-05T10:00:00Z,2,,,"a ""quoted"" word"',
        *PLAIN[4:8],
        'q3,solo,units,2026-01-05T10:00:00Z,3,,,"a region\nover three\nlines, long enough '
        'to run past the end of its block"',
        *PLAIN[8:10],
        "",
        "q4,solo,units,2026-01-05T10:00:00Z,4,,",  # a cell short
        *PLAIN[10:13],
        "   ",
        "q5,solo,units,2026-01-05T10:00:00Z,5,,,eu\\west\tand a tab",
        *PLAIN[13:],
        "",
    ]
    path = write(tmp_path / "quoted.csv", rows)
    rejects = tmp_path / "rejects.csv"
    refused = same_both_ways(catalog, monkeypatch, [[path]])
    code, _, err, _ = refused["said"][0]
    assert code == 1 and ": row 18: row: has 7 cells" in err, err
    skipped = same_both_ways(catalog, monkeypatch, [[path, "--skip-invalid", rejects]])
    assert skipped["said"][0][0] == 0
    assert skipped["in_batches"] > 0
    assert {r[0] for r in skipped["events"]} >= {"q1", "q2", "q3", "q5"}


@pytest.mark.parametrize("skip", [False, True], ids=["refused", "skip-invalid"])
def test_an_unknown_customer_mid_batch_is_named_the_same(catalog, tmp_path, monkeypatch, skip):
    monkeypatch.setattr(usage_blocks, "BLOCK_BYTES", 1 << 20)  # one batch for the file
    rows = [f"m{i:02d},solo,units,2026-01-05T10:00:00Z,{i},,," for i in range(30)]
    rows[14] = "m14,nobody,units,2026-01-05T10:00:00Z,1,,,"
    rows[20] = "m20,solo,units,2026-02-30T10:00:00Z,1,,,"
    path = write(tmp_path / "middle.csv", rows)
    args = [path, "--skip-invalid", tmp_path / "rejects.csv"] if skip else [path]
    found = same_both_ways(catalog, monkeypatch, [args])
    code, _, err, rejects = found["said"][0]
    assert found["in_batches"] == 0  # the batch went row by row
    if skip:
        assert code == 0 and len(found["events"]) == 28
        assert "unknown customer 'nobody'" in rejects
    else:
        assert code == 1 and not found["events"]
        assert err.splitlines()[1:] == [
            f"{path}: row 16: customer: unknown customer 'nobody'",
            f"{path}: row 22: timestamp: not an ISO 8601 timestamp: '2026-02-30T10:00:00Z'",
        ]


def test_duplicates_across_files_and_loads_are_counted_the_same(catalog, tmp_path, monkeypatch):
    first = write(tmp_path / "first.csv", PLAIN[:6])
    again = write(tmp_path / "again.csv", PLAIN[3:10] + PLAIN[:2])
    bad = write(tmp_path / "bad.csv", [*PLAIN[10:12], "b1,solo,units,2026-01-05T10:00:00Z,-1,,,"])
    rejects = tmp_path / "rejects.csv"
    found = same_both_ways(
        catalog,
        monkeypatch,
        [[first], [again, first, bad, "--skip-invalid", rejects], [first, again]],
    )
    assert [s[0] for s in found["said"]] == [0, 0, 0]
    assert found["in_batches"] > 0
    assert [tuple(r[2:]) for r in found["loads"]] == [
        (6, 6, 0, 0),
        (9, 4, 5, 0),
        (6, 0, 6, 0),
        (3, 2, 0, 1),
        (6, 0, 6, 0),
        (9, 0, 9, 0),
    ]


def test_a_refused_file_leaves_nothing_either_way(catalog, tmp_path, monkeypatch):
    good = write(tmp_path / "good.csv", PLAIN[:12])
    bad = write(tmp_path / "bad.csv", [*PLAIN[:3], "x1,solo,units,2026-01-05T10:00:00Z,1e400,,,"])
    found = same_both_ways(catalog, monkeypatch, [[good, bad]])
    code, _, err, _ = found["said"][0]
    assert code == 1 and "quantity: too large: 1e400" in err
    assert not found["events"] and not found["loads"] and not found["touches"]


def test_large_batches_are_written_in_the_row_paths_batch_size(catalog, tmp_path, monkeypatch):
    monkeypatch.setattr(usage_blocks, "BLOCK_BYTES", 1 << 20)
    monkeypatch.setattr(usage_write, "BATCH", 7)
    rows = [f"s{i:03d},solo,units,2026-01-05T10:{i % 60:02d}:00Z,{i},,," for i in range(100)]
    path = write(tmp_path / "sizes.csv", rows + rows[:10])
    found = same_both_ways(catalog, monkeypatch, [[path]])
    assert found["in_batches"] == 110
    assert found["loads"][0][2:] == (110, 100, 10, 0)


def test_every_field_quoted_is_read_in_batches_the_same(catalog, tmp_path, monkeypatch):
    import csv
    import io

    text = io.StringIO()
    writer = csv.writer(text, quoting=csv.QUOTE_ALL)
    writer.writerow(HEADER.split(","))
    for i in range(40):
        region = ["eu, west", 'say "hi"', "", '"', "plain"][i % 5]
        metric = ["units", "users", "gb", "calls"][i % 4]
        user = ['o"brien', "a,b", "x"][i % 3]
        writer.writerow(
            [f"w{i:02d}", "solo", metric, "2026-01-05T10:00:00Z", i, user, "1.5", region]
        )
    path = tmp_path / "quoted.csv"
    path.write_text(text.getvalue(), encoding="utf-8")
    found = same_both_ways(catalog, monkeypatch, [[path]])
    assert found["said"][0][0] == 0, found["said"]
    assert len(found["events"]) == 40
    assert found["in_batches"] == 40
