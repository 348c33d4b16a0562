"""Replay in two shares (``stream.replay.shards``) writes what replay in one process writes: the same
final records (their stamps too), health counts and dead letters; and where a share cannot judge
alone, it runs in one process."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream.config import Config
from stream.core.clock import judge_in_time_order
from stream.replay import bulk, ownership, parts, replay, shards, sources
from stream.replay.exchange import Exchange
from stream.replay.occupancy import Occupancy
from stream.replay.shards import replay_shared
from stream.simulate import Scenario, streams
from tests.unit.replay import test_fuzz as hostile


def _never(kinds: Any, processes: int) -> bool:
    """``bulk.fits`` for a test of shares not held in memory, however small."""
    return False


def inputs(folder: Path, seed: int, broken_clock: bool = False, in_order: bool = False,
           future_at: int | None = None) -> tuple[Path, Path]:
    """Two models (one a regression model), duplicates with other values, early and missing labels,
    bad lines, two files of predictions; shuffled unless ``in_order``. ``future_at``: a record of a
    broken clock at that row of predictions in time order, and out of order after it."""
    rng = random.Random(seed)
    predictions, labels = streams(Scenario(pairs=3000, rate_per_s=0.2, duplicate_rate=0.1, early_label_rate=0.05,
                                           label_coverage=0.85, models=("a", "b"), seed=seed))
    for row in labels[::7]:  # a correction: the same request labelled again, the other way, later
        labels.append({**row, "timestamp": row["timestamp"] + 30, "label": "away_win"})
    for row in predictions[::5]:
        row["model"] = "price"
        row["prediction"] = rng.uniform(1, 100)
        row.pop("scores", None)
    prices = {p["request_id"] for p in predictions if p["model"] == "price"}
    for row in labels:
        if row["request_id"] in prices:
            row["label"] = rng.uniform(1, 100)
    for index, row in enumerate(predictions):
        if index % 3 == 0:
            row["timestamp"] = f"{row['timestamp']}"  # not RFC 3339: a dead letter
    rows: list[Any] = [*predictions, "{not json", {"request_id": 7, "model": "a", "timestamp": 1, "prediction": 1}]
    label_rows: list[Any] = [*labels, {"request_id": "x", "timestamp": labels[5]["timestamp"]}]
    if broken_clock:
        rows.append({**predictions[-1], "request_id": "future", "timestamp": 2_000_000_000.0})
    if future_at is not None:
        for row in predictions:
            row["timestamp"] = float(row["timestamp"])
        rows = sorted(predictions, key=lambda r: r["timestamp"])
        rows.insert(future_at, {**predictions[-1], "request_id": "future", "timestamp": 2_000_000_000.0})
        label_rows.sort(key=lambda r: r["timestamp"])  # all in order: only the predictions' step back stops a share
    for part in (rows, label_rows) if future_at is None else ():
        if in_order:
            part.sort(key=lambda r: r["timestamp"] if isinstance(r, dict) and isinstance(r["timestamp"], float) else 0)
        else:
            rng.shuffle(part)
    out = folder / "p", folder / "l.jsonl"
    out[0].mkdir()
    half = len(rows) // 2 if future_at is None else len(rows)
    for name, part in (("a.jsonl", rows[:half]), ("b.jsonl", rows[half:])):
        (out[0] / name).write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in part))
    out[1].write_text("".join(json.dumps(r) + "\n" for r in label_rows))
    return out


def replayed(folder: Path, predictions: Path, labels: Path, shares: int, config: Config,
             shared: list[bool] | None = None) -> dict[str, Any]:
    """Replay's outputs in ``shares`` shares: 0 is one process record by record (the reference),
    1 one share held in this process, 2 two processes; ``shared`` hears whether shares made them."""
    out = folder / f"out-{shares}"
    out.mkdir()
    with pytest.MonkeyPatch.context() as patch:
        def spy(*args: Any, **kwargs: Any) -> Any:
            answer = replay_shared(*args, **kwargs)
            if shared is not None:
                shared.append(answer is not None)
            return answer

        patch.setattr(shards, "replay_shared", spy)
        patch.setattr(shards, "shares_for", lambda *args: shares)
        result = replay(predictions, labels, config, out / "m.jsonl", out / "a.jsonl", out / "d.jsonl",
                        processes=max(shares, 1))
    records = [json.loads(line) for line in (out / "m.jsonl").read_text().splitlines()]
    dead = [json.loads(line) for line in (out / "d.jsonl").read_text().splitlines()]
    return {"records": sorted(records, key=lambda r: json.dumps(r, sort_keys=True)),
            "stamps": [r["emitted_at"] for r in records],  # in the order written: by time in both
            "dead": sorted(dead, key=lambda d: json.dumps(d, sort_keys=True)),
            "health": result.summary()["health"], "balance": result.engine.balance(), "written": records}


def compared(one: dict[str, Any], two: dict[str, Any]) -> None:
    """The same outputs; the order of records final at the same time aside (one process record by
    record writes them as its windows were made, shares in the order of their windows)."""
    assert {k: v for k, v in two.items() if k != "written"} == {k: v for k, v in one.items() if k != "written"}


@pytest.mark.parametrize(("seed", "in_order", "windows", "threads", "held"), [
    (1, False, ["tumbling 1h", "tumbling 1d", "cumulative"], 1, True),
    (1, False, ["tumbling 1h", "tumbling 1d", "cumulative"], 2, True),  # the second share in a new interpreter
    (1, False, ["tumbling 1h", "tumbling 1d", "cumulative"], 1, False),  # shares too large to hold in memory
    (2, True, ["tumbling 1h", {"kind": "hopping", "size": "2h", "hop": "30m"}, "rolling 500", "cumulative"], 1, True),
    (2, True, ["tumbling 1h", {"kind": "hopping", "size": "2h", "hop": "30m"}, "rolling 500", "cumulative"], 1,
     False)])
def test_two_shares_write_what_one_process_writes(tmp_path: Path, seed: int, in_order: bool, windows: list[Any],
                                                  threads: int, held: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shards.threading, "active_count", lambda: threads)  # one: the second share is forked
    monkeypatch.setattr(bulk, "CHUNK_LINES", 97 if threads == 1 else bulk.CHUNK_LINES)  # decoded in many chunks
    monkeypatch.setattr(sources, "CHUNK_BYTES", 4096 if threads == 1 else sources.CHUNK_BYTES)  # read in many
    monkeypatch.setattr(bulk, "fits", bulk.fits if held else _never)  # (forked: the second share too)
    split: list[int] = []  # chunks whose owners this process found, where it split the owner pass
    owned = Exchange.owned

    def spied(self: Exchange, chunks: Any, owners: Any) -> Any:
        def counted(raws: list[Any], sequences: list[int]) -> list[int]:
            split.append(len(raws))
            return owners(raws, sequences)  # type: ignore[no-any-return]

        return owned(self, chunks, counted)

    monkeypatch.setattr(Exchange, "owned", spied)
    predictions, labels = inputs(tmp_path, seed, in_order=in_order)
    config = Config.from_mapping({"regression_models": ["price"], "max_future_s": 7200, "join_ttl": "30m",
                                  "windows": windows})
    shared: list[bool] = []
    reference = replayed(tmp_path, predictions, labels, 0, config, shared)
    one = replayed(tmp_path, predictions, labels, 1, config, shared)
    two = replayed(tmp_path, predictions, labels, 2, config, shared)
    assert shared == [True, True] and one["records"] and len(one["dead"]) >= 1000 and one["health"]["pairs"] > 1000
    compared(reference, one)
    compared(reference, two)
    assert two["written"] == one["written"]  # in the same order
    if threads == 1 and held:  # forked, both shares held: each process found the owners of every other chunk
        assert len(split) > 100
    else:
        assert not split


def as_csv(folder: Path, predictions: Path, labels: Path) -> tuple[Path, Path]:
    """The same inputs as CSV files (objects as JSON cells); a line that is not an object is left out."""
    out = folder / "csv"
    out.mkdir()
    paths = []
    for name, files in (("p.csv", sorted(predictions.glob("*.jsonl"))), ("l.csv", [labels])):
        rows = []
        for f in files:
            for line in f.read_text().splitlines():
                with contextlib.suppress(json.JSONDecodeError):
                    rows.append(json.loads(line))
        columns = sorted({key for row in rows for key in row})
        with (out / name).open("w", newline="") as sink:
            writer = csv.writer(sink)
            writer.writerow(columns)
            writer.writerows([json.dumps(row[c]) if isinstance(row.get(c), dict) else row.get(c, "")
                              for c in columns] for row in rows)
        paths.append(out / name)
    return paths[0], paths[1]


def test_csv_files_are_shared_too(tmp_path: Path) -> None:
    predictions, labels = as_csv(tmp_path, *inputs(tmp_path, 5))
    config = Config.from_mapping({"regression_models": ["price"], "max_future_s": 7200, "join_ttl": "30m"})
    shared: list[bool] = []
    one = replayed(tmp_path, predictions, labels, 0, config)
    two = replayed(tmp_path, predictions, labels, 2, config, shared)
    assert shared == [True] and one["health"]["pairs"] > 1000
    compared(one, two)


@pytest.mark.slow
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(hostile_predictions=st.lists(hostile.predictions.map(hostile.dump) | hostile.lines
                                    | st.sampled_from([b"", b"\xef\xbb\xbf{}", b'{"a":1}\r', b"\x00"]), max_size=40),
       hostile_labels=st.lists(hostile.labels.map(hostile.dump) | hostile.lines, max_size=40),
       seed=st.integers(0, 10**6))
def test_hostile_lines_among_valid_ones_give_the_same_outputs_in_shares(
        hostile_predictions: list[bytes], hostile_labels: list[bytes], seed: int) -> None:
    """Any line (of any type, any bytes, any date) shuffled into a valid backtest: one share and
    two processes write what one process writes record by record, dead letters and health too."""
    rng = random.Random(seed)
    start = 1_767_225_600
    predictions = [hostile.dump({"request_id": f"r{i}", "model": rng.choice(["m", "n"]), "prediction": rng.choice("xy"),
                                 "timestamp": start + rng.random() * 7200, "scores": {"x": 0.25, "y": 0.75}})
                   for i in range(300)] + hostile_predictions
    labels = [hostile.dump({"request_id": f"r{i}", "timestamp": start + rng.random() * 9000,
                            "label": rng.choice("xy")}) for i in range(0, 300, 2)] + hostile_labels
    rng.shuffle(predictions)
    rng.shuffle(labels)
    config = Config.from_mapping({"join_ttl": "1h"})
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        paths = [folder / "p.jsonl", folder / "l.jsonl"]
        for path, lines in zip(paths, (predictions, labels), strict=True):
            path.write_bytes(b"".join(line.replace(b"\n", b" ") + b"\n" for line in lines))
        reference = replayed(folder, *paths, 0, config)
        compared(reference, replayed(folder, *paths, 1, config))
        compared(reference, replayed(folder, *paths, 2, config))


@pytest.mark.parametrize("held", [True, False])
def test_a_broken_clock_or_a_limit_reached_replays_in_one_process(tmp_path: Path, held: bool,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A record one process refuses as alone in the future, or a segment value folded into
    ``__other__``: decided from the order of all records, so the two shares step aside."""
    monkeypatch.setattr(shards.threading, "active_count", lambda: 1)  # forked: it sees what is patched here
    monkeypatch.setattr(bulk, "fits", bulk.fits if held else _never)
    predictions, labels = inputs(tmp_path, 3, broken_clock=True)
    config = Config.from_mapping({"regression_models": ["price"]})
    shared: list[bool] = []
    one = replayed(tmp_path, predictions, labels, 0, config)
    assert any("ahead of" in d["reason"] for d in one["dead"])
    compared(one, replayed(tmp_path, predictions, labels, 2, config, shared))
    compared(one, replayed(tmp_path, predictions, labels, 1, config, shared))
    limited = Config.from_mapping({"regression_models": ["price"], "max_segment_values": 1, "max_future_s": 0})
    (tmp_path / "limited").mkdir()
    one = replayed(tmp_path / "limited", predictions, labels, 0, limited)
    assert one["health"]["folded_segments"] > 0
    compared(one, replayed(tmp_path / "limited", predictions, labels, 2, limited, shared))
    compared(one, replayed(tmp_path / "limited", predictions, labels, 1, limited, shared))
    assert shared == [False, False, False, False]


def test_input_found_out_of_order_on_the_way_is_judged_as_read_again(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Predictions in time order for 2,000 rows, then not: a share too large to hold in memory
    reads them as they come, finds them out of order, and reads them again sorted; what it counted
    on the way is forgotten, so the broken clock's record among those rows is judged (refused) as
    one process judges it."""
    monkeypatch.setattr(shards.threading, "active_count", lambda: 1)  # forked: it sees what is patched here
    monkeypatch.setattr(bulk, "fits", _never)
    predictions, labels = inputs(tmp_path, 4, future_at=2000)
    config = Config.from_mapping({"regression_models": ["price"], "join_ttl": "30m"})
    shared: list[bool] = []
    one = replayed(tmp_path, predictions, labels, 0, config)
    assert sum("ahead of" in d["reason"] for d in one["dead"]) == 1
    compared(one, replayed(tmp_path, predictions, labels, 2, config, shared))
    compared(one, replayed(tmp_path, predictions, labels, 1, config, shared))
    assert shared == [False, False]


@settings(max_examples=300, deadline=None)
@given(gaps=st.lists(st.sampled_from([0.0, 1.0, 1799.0, 1800.0, 3599.0, 3600.0, 3601.0, 7200.0, 1e6]),
                     min_size=1, max_size=12),
       split=st.integers(0, 2**12), start=st.sampled_from([0.0, 1799.5, 1e9 + 0.25]))
def test_occupancy_tells_whether_one_process_refuses_a_record(gaps: list[float], split: int, start: float) -> None:
    """The occupancy of two shares added, against ``judge_in_time_order`` over all records."""
    times, ts = [], start
    for gap in gaps:
        ts += gap
        times.append(ts)
    shares = [Occupancy(3600.0), Occupancy(3600.0)]
    for i, t in enumerate(times):
        list(shares[split >> i & 1].watch(iter([(t,)])))
    shares[0].add(shares[1])
    refused = any(reason is not None for _, reason in judge_in_time_order(times, float, 3600.0))
    assert shares[0].refuses(3600.0) == refused


def test_records_written_as_parquet_are_whole_when_replay_returns(tmp_path: Path) -> None:
    """The merged sink is closed before replay returns (a Parquet file's footer is written then)."""
    import pyarrow.parquet as pq

    predictions, labels = inputs(tmp_path, 6)
    config = Config.from_mapping({"regression_models": ["price"], "max_future_s": 7200, "join_ttl": "30m"})
    tables = []
    for processes in (1, 2):
        out = tmp_path / f"m{processes}.parquet"
        replay(predictions, labels, config, out, processes=processes)
        tables.append(sorted(json.dumps(row, sort_keys=True, default=str) for row in pq.read_table(out).to_pylist()))
    assert tables[0] and tables[1] == tables[0]


def test_what_stops_the_second_share_stops_replay_with_its_reason(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    predictions, labels = inputs(tmp_path, 1)
    monkeypatch.setattr(shards.threading, "active_count", lambda: 1)  # forked: it runs what is patched here
    share = shards.replay_share

    def failing(*args: Any) -> Any:
        if args[3] == (1, 2):
            raise ValueError("the second share failed")
        return share(*args)

    monkeypatch.setattr(shards, "replay_share", failing)
    with pytest.raises(ValueError, match="the second share failed"):
        replay(predictions, labels, Config(), tmp_path / "m.jsonl", processes=2)
    monkeypatch.setattr(shards, "_answer", lambda args: os._exit(3))
    with pytest.raises(RuntimeError, match=r"ended early \(exit code 3\)"):
        replay(predictions, labels, Config(), tmp_path / "m.jsonl", processes=2)


def test_a_second_share_that_dies_while_the_owner_pass_is_split_stops_replay(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The first process waits for owners the second never sends: it learns why, and does not hang."""
    predictions, labels = inputs(tmp_path, 1)
    monkeypatch.setattr(shards.threading, "active_count", lambda: 1)  # forked: it runs what is patched here
    monkeypatch.setattr(sources, "CHUNK_BYTES", 4096)  # many chunks, owners found by both
    owned, parent = Exchange.owned, os.getpid()

    def dying(self: Exchange, chunks: Any, owners: Any) -> Any:
        for n, item in enumerate(owned(self, chunks, owners)):
            if os.getpid() != parent and n == 3:
                os._exit(5)
            yield item

    monkeypatch.setattr(Exchange, "owned", dying)
    with pytest.raises(RuntimeError, match=r"ended early \(exit code 5\)"):
        replay(predictions, labels, Config(), tmp_path / "m.jsonl", processes=2)


@pytest.mark.parametrize("held", [True, False])
def test_sampled_shares_write_what_one_process_writes(tmp_path: Path, held: bool,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """``sample``: requests left out before the settled ones are counted as columns, and record by
    record, leave the same records, counts and dead letters."""
    monkeypatch.setattr(bulk, "fits", bulk.fits if held else _never)
    predictions, labels = inputs(tmp_path, 3)
    config = Config.from_mapping({"regression_models": ["price"], "max_future_s": 7200, "join_ttl": "30m",
                                  "sample": 0.4})
    reference = replayed(tmp_path, predictions, labels, 0, config)
    assert reference["health"]["unsampled_predictions"] > 1000 and reference["health"]["pairs"] > 500
    assert all(r["sample_rate"] == 0.4 for r in reference["records"])
    shared: list[bool] = []
    compared(reference, replayed(tmp_path, predictions, labels, 1, config, shared))
    compared(reference, replayed(tmp_path, predictions, labels, 2, config, shared))
    assert shared == [True, True]
    if held:  # the rate and standard errors are columns of a Parquet output
        import pyarrow.parquet as pq

        replay(predictions, labels, config, tmp_path / "m.parquet")
        rows = pq.read_table(tmp_path / "m.parquet").to_pylist()
        def key(model: str, version: str, segment: Any, window: Any) -> tuple[str, ...]:
            return model, version, json.dumps(segment, sort_keys=True), json.dumps(window, sort_keys=True)

        by_window = {key(r["model"], r["model_version"], r["segment"], r["window"]): r for r in reference["records"]}
        assert len(rows) == len(by_window)
        for row in rows:
            want = by_window[key(row["model"], row["model_version"], json.loads(row["segment"]),
                                 json.loads(row["window"]))]
            assert (row["sample_rate"], json.loads(row["standard_errors"])) == (0.4, want["standard_errors"])


@pytest.mark.parametrize(("shares", "threads", "held"), [(6, 1, True), (5, 2, True), (4, 1, False)])
def test_many_shares_write_what_one_process_writes(tmp_path: Path, shares: int, threads: int, held: bool,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """An input split into more shares than processes (``parts``: a file per share, replayed one
    after another) writes what one process writes, record by record; so does one process alone."""
    monkeypatch.setattr(shards.threading, "active_count", lambda: threads)  # one: the second process is forked
    monkeypatch.setattr(bulk, "fits", bulk.fits if held else _never)
    monkeypatch.setattr(parts, "FRAME_ROWS", 53)  # many frames, of every input
    predictions, labels = inputs(tmp_path, 3)
    config = Config.from_mapping({"regression_models": ["price"], "max_future_s": 7200, "join_ttl": "30m",
                                  "windows": ["tumbling 1h", "rolling 500", "cumulative"]})
    shared: list[bool] = []
    reference = replayed(tmp_path, predictions, labels, 0, config, shared)
    many = replayed(tmp_path, predictions, labels, shares, config, shared)
    two = replayed(tmp_path, predictions, labels, 2, config, shared)
    assert shared == [True, True] and len(many["dead"]) >= 1000 and many["health"]["pairs"] > 1000
    compared(reference, many)
    assert many["written"] == two["written"]  # in the same order


def test_shares_files_go_under_join_store_dir_and_what_a_killed_replay_left_goes(tmp_path: Path) -> None:
    """The shares' files live under ``join_store_dir`` while replay runs; a folder that a killed
    replay left there (its process gone) is removed, another process's is kept."""
    import subprocess
    import sys

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True).stdout.strip()
    store = tmp_path / "store"
    (store / f"mlmon-shares-{gone}-abc").mkdir(parents=True)
    (store / f"mlmon-shares-{os.getpid()}-abc").mkdir()
    predictions, labels = inputs(tmp_path, 4)
    config = Config.from_mapping({"regression_models": ["price"], "join_store_dir": str(store)})
    seen: list[list[str]] = []
    split = parts.split

    def spy(*args: Any) -> Any:
        seen.append(sorted(p.name for p in store.iterdir()))
        return split(*args)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(parts, "split", spy)
        patch.setattr(shards, "shares_for", lambda *args: 4)
        patch.setattr(shards.threading, "active_count", lambda: 1)  # forked: it sees the spy
        replay(predictions, labels, config, tmp_path / "m.jsonl", processes=2)
    assert seen and all(f"mlmon-shares-{gone}-abc" not in names and len(names) == 2 for names in seen)
    assert sorted(p.name for p in store.iterdir()) == [f"mlmon-shares-{os.getpid()}-abc"]


ROWS = st.one_of(
    st.builds(lambda i: b'{"request_id": "%s", "label": 1}\n' % i.encode("utf-8", "surrogatepass"),
              st.text(max_size=12)),
    st.sampled_from([b'{"request_id": 7}\n', b"not json\n", b'{"label": 1}\n', b'{"request_id": "a"} {"x": 1}\n',
                     b'{"request_id": "a"},{"request_id": "b"}\n', b'{"request_id": "\\ud800"}\n',
                     b'{"request_id": "a", "request_id": "b"}\n', b'{"request_id": "%s"}\n' % (b"x" * 200)]),
    st.fixed_dictionaries({"request_id": st.text(max_size=5)}),
    st.just('{"request_id": "a"}'),
)


@given(rows=st.lists(ROWS, max_size=40), shares=st.integers(2, 5))
@settings(max_examples=300, deadline=None)
def test_owners_of_a_chunk_are_those_of_its_rows_one_by_one(rows: list[Any], shares: int) -> None:
    """``owners`` (a chunk's request ids decoded at once) gives each row the share ``owner`` gives it
    alone, whatever the rows: not JSON, no id, an id not a string, too long, dicts, text."""
    sequences = list(range(7, 7 + len(rows)))
    assert ownership.owners(rows, sequences, shares, 128) == [ownership.owner(row, s, shares, 128)
                                                           for row, s in zip(rows, sequences, strict=True)]


@given(request_id=st.text(max_size=12), shares=st.integers(2, 5), sequence=st.integers(0, 1000))
@settings(max_examples=300, deadline=None)
def test_a_request_has_one_owner_whatever_its_rows_format(request_id: str, shares: int, sequence: int) -> None:
    """A request id hashes alike as a CSV or Parquet row's value, as JSON text without escapes, and
    with every character escaped, so a request's rows meet in one share whatever their form."""
    try:
        request_id.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: no JSON line holds it as a string
        return
    dict_row = ownership.owner({"request_id": request_id}, sequence, shares, 1 << 20)
    lines = [json.dumps({"request_id": request_id, "label": 1}, ensure_ascii=False).encode(),  # escapes: " \\ controls
             json.dumps({"label": 1, "request_id": request_id}).encode()]  # and every character past ASCII
    assert [ownership.owner(line, sequence + 1, shares, 1 << 20) for line in lines] == [dict_row, dict_row]
    assert ownership.owners(lines, [sequence + 1] * 2, shares, 1 << 20) == [dict_row, dict_row]
