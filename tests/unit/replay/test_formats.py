"""Replay from JSONL, CSV and Parquet files, directories, globs and Arrow tables: the same records,
dead letters with their rows, bounded memory for unsorted input, final-only output, progress."""

from __future__ import annotations

import io
import json
import random
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm

from stream import Monitor
from stream.cli import default_dead_letters, main
from stream.config import Config
from stream.errors import ConfigError
from stream.replay import bulk, replay
from stream.replay.progress import Progress
from stream.replay.sources import jsonl_chunks
from stream.simulate import Scenario, draws, streams

SCENARIO = Scenario(pairs=3000, rate_per_s=0.5, label_coverage=0.9, duplicate_rate=0.02, label_delay_mean_s=900.0,
                    classes=("home_win", "away_win", "draw"))
CONFIG = "windows: [tumbling 1h, rolling 300, cumulative]\n"


def write(path: Path, rows: list[dict[str, Any]], fmt: str, scores_as: str = "json") -> Path:
    if fmt == "jsonl":
        path.write_bytes(b"".join(orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE) for r in rows))
    elif fmt == "csv":
        columns = sorted({k for r in rows for k in r})
        table = pa.table({c: [_cell(r.get(c)) for r in rows] for c in columns})
        pcsv.write_csv(table, path)
    else:
        cooked = [{**r, **{k: (json.dumps(v) if scores_as == "json" else list(v.items()))
                           for k, v in r.items() if k in ("scores", "segment")}} for r in rows]
        fields = []
        for column in sorted({k for r in cooked for k in r}):
            kind: pa.DataType
            if column in ("scores", "segment") and scores_as == "map":
                kind = pa.map_(pa.string(), pa.float64() if column == "scores" else pa.string())
            else:
                kind = {"timestamp": pa.float64()}.get(column, pa.string())
            fields.append(pa.field(column, kind))
        pq.write_table(pa.Table.from_pylist(cooked, schema=pa.schema(fields)), path)
    return path


def _cell(value: Any) -> str | None:
    if value is None:
        return None
    return json.dumps(value) if isinstance(value, dict | float | int) and not isinstance(value, bool) else str(value)


def run(tmp_path: Path, fmt: str, predictions: list[dict[str, Any]], labels: list[dict[str, Any]],
        **kwargs: Any) -> tuple[bytes, Any]:
    folder = tmp_path / fmt
    folder.mkdir(exist_ok=True)
    (folder / "c.yaml").write_text(CONFIG)
    p = write(folder / f"p.{fmt}", predictions, fmt, kwargs.pop("scores_as", "json"))
    lab = write(folder / f"l.{fmt}", labels, fmt)
    result = replay(p, lab, Config.load(folder / "c.yaml"), folder / "m.jsonl", folder / "a.jsonl",
                    folder / "d.jsonl", **kwargs)
    return (folder / "m.jsonl").read_bytes(), result


@pytest.fixture(scope="module")
def inputs() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    return streams(SCENARIO)


def test_jsonl_csv_and_parquet_give_byte_identical_records_equal_to_sklearn(
        tmp_path: Path, inputs: tuple[list[dict[str, Any]], list[dict[str, Any]]]) -> None:
    predictions, labels = inputs
    outputs = {fmt: run(tmp_path, fmt, predictions, labels)[0] for fmt in ("jsonl", "csv", "parquet")}
    outputs["parquet-map"] = run(tmp_path / "m", "parquet", predictions, labels, scores_as="map")[0] if (
        (tmp_path / "m").mkdir() is None) else b""
    assert outputs["jsonl"] == outputs["csv"] == outputs["parquet"] == outputs["parquet-map"]
    finals = [json.loads(line) for line in outputs["jsonl"].splitlines()]
    final = next(r for r in finals if r["final"] and r["window"]["name"] == "cumulative" and not r["segment"])
    pairs = [(d.label["label"], d.prediction["prediction"]) for d in draws(SCENARIO) if d.label is not None]
    y_true, y_pred = [t for t, _ in pairs], [p for _, p in pairs]
    assert final["n"] == len(pairs)
    assert final["metrics"]["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred), abs=1e-9)
    assert final["metrics"]["f1_macro"] == pytest.approx(
        skm.f1_score(y_true, y_pred, average="macro", zero_division=0), abs=1e-9)


def test_a_wrong_parquet_column_type_gives_dead_letters_with_rows_and_a_missing_column_a_refusal(
        tmp_path: Path) -> None:
    rows = [{"request_id": str(i), "model": "m", "timestamp": "2026-01-01T00:00:00Z" if i != 3 else "noon",
             "prediction": "a", "scores": {"a": 0.9, "b": "x" if i == 2 else "0.1"}} for i in range(1, 6)]
    labels = [{"request_id": str(i), "timestamp": 1_767_225_700.0, "label": "a"} for i in range(1, 6)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "p.parquet")  # scores: struct<a: double, b: string>
    pq.write_table(pa.Table.from_pylist(labels), tmp_path / "l.parquet")
    result = replay(tmp_path / "p.parquet", tmp_path / "l.parquet", Config.from_mapping({"windows": ["cumulative"]}),
                    tmp_path / "m.jsonl", None, tmp_path / "d.jsonl")
    dead = [json.loads(line) for line in (tmp_path / "d.jsonl").read_text().splitlines()]
    assert [(d["source"], d["file"].rsplit("/", 1)[1], d["row"]) for d in dead] == [
        ("predictions", "p.parquet", 1), ("predictions", "p.parquet", 2), ("predictions", "p.parquet", 3),
        ("predictions", "p.parquet", 4), ("predictions", "p.parquet", 5)]
    assert all("'scores'[" in d["reason"] or "RFC 3339" in d["reason"] for d in dead), dead
    assert result.engine.health.pairs == 0 and result.engine.health.orphaned_labels == 5
    pq.write_table(pa.Table.from_pylist([{k: v for k, v in r.items() if k != "model"} for r in rows]),
                   tmp_path / "p2.parquet")
    with pytest.raises(ConfigError, match=r"need the column\(s\) \['model'\]"):
        replay(tmp_path / "p2.parquet", tmp_path / "l.parquet", Config(), tmp_path / "m.jsonl")


def test_a_bad_csv_cell_is_a_dead_letter_with_its_row(tmp_path: Path) -> None:
    (tmp_path / "p.csv").write_text("request_id,model,timestamp,prediction,scores\n"
                                    "1,m,1767225600,a,\"{\"\"a\"\": 0.9, \"\"b\"\": 0.1}\"\n"
                                    "2,m,1767225600,a,{broken\n"
                                    "3,m,1767225601,b,\n")
    (tmp_path / "l.csv").write_text("request_id,timestamp,label\n1,1767225700,a\n2,1767225700,a\n3,1767225700,b\n")
    result = replay(tmp_path / "p.csv", tmp_path / "l.csv", Config.from_mapping({"windows": ["cumulative"]}),
                    tmp_path / "m.jsonl", None, tmp_path / "d.jsonl")
    dead = [json.loads(line) for line in (tmp_path / "d.jsonl").read_text().splitlines()]
    assert [(d["row"], d["reason"]) for d in dead] == [(2, "'scores' must hold a JSON object, got '{broken'")]
    assert result.engine.health.pairs == 2 and result.engine.health.orphaned_labels == 1


def test_directories_and_globs_of_files_in_several_formats(
        tmp_path: Path, inputs: tuple[list[dict[str, Any]], list[dict[str, Any]]]) -> None:
    predictions, labels = inputs
    whole, _ = run(tmp_path, "jsonl", predictions, labels)
    parts = tmp_path / "parts"
    parts.mkdir()
    half = len(predictions) // 2
    write(parts / "a.parquet", predictions[:half], "parquet")
    write(parts / "b.csv", predictions[half:], "csv")
    write(tmp_path / "l-1.jsonl", labels[:1000], "jsonl")
    write(tmp_path / "l-2.jsonl", labels[1000:], "jsonl")
    (tmp_path / "c.yaml").write_text(CONFIG)
    result = replay(parts, str(tmp_path / "l-*.jsonl"), Config.load(tmp_path / "c.yaml"), tmp_path / "m.jsonl")
    assert (tmp_path / "m.jsonl").read_bytes() == whole
    assert [Path(n).name for n in result.inputs["predictions"]] == ["a.parquet", "b.csv"]
    with pytest.raises(ConfigError, match="no JSONL, CSV or Parquet files"):
        replay(str(tmp_path / "nothing-*.csv"), parts, Config(), tmp_path / "m.jsonl")


def test_unsorted_input_is_sorted_externally_to_the_same_records(
        tmp_path: Path, inputs: tuple[list[dict[str, Any]], list[dict[str, Any]]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bulk, "fits", lambda kinds, processes: False)  # not held in memory, however small
    predictions, labels = inputs
    ordered, first = run(tmp_path, "jsonl", predictions, labels)
    assert not first.sorted_in_memory
    rng = random.Random(5)
    shuffled_p, shuffled_l = predictions[:], labels[:]
    rng.shuffle(shuffled_p)
    rng.shuffle(shuffled_l)
    (tmp_path / "s").mkdir()
    shuffled, second = run(tmp_path / "s", "jsonl", shuffled_p, shuffled_l, run_events=500)  # many runs on disk
    assert second.sorted_in_memory

    def finals(raw: bytes) -> list[dict[str, Any]]:
        return sorted((json.loads(x) for x in raw.splitlines() if json.loads(x)["final"]), key=json.dumps)

    assert finals(ordered) == finals(shuffled)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="measures VmHWM in /proc (Linux)")
def test_unsorted_replay_stays_within_a_tight_memory_cap(tmp_path: Path) -> None:
    """A scaled-down version of the 50-million-record benchmark (benchmarks/replay.py): 400,000
    shuffled records, sorted in runs of 20,000, grow the replaying process's peak RSS by under
    100 MiB (sorting them in memory grows it by about 250); ``bulk.fits`` is patched to say no,
    since an input this small is otherwise held in memory (``replay.bulk``)."""
    predictions, labels = streams(Scenario(pairs=200_000, rate_per_s=20.0, label_delay_mean_s=60.0, segments=()))
    for name, rows, seed in (("p", predictions, 1), ("l", labels, 2)):
        random.Random(seed).shuffle(rows)
        write(tmp_path / f"{name}.jsonl", rows, "jsonl")
    del predictions, labels
    script = textwrap.dedent("""
        import sys
        from pathlib import Path
        from stream.config import Config
        from stream.replay import bulk, replay

        bulk.fits = lambda kinds, processes: False  # sorted externally, not held in memory

        def peak_kib():
            return int(next(x for x in open("/proc/self/status") if x.startswith("VmHWM")).split()[1])

        folder, before = Path(sys.argv[1]), peak_kib()
        result = replay(folder / "p.jsonl", folder / "l.jsonl", Config.from_mapping({"windows": ["tumbling 1h"]}),
                        folder / "m.jsonl", final_only=True, run_events=20_000, processes=1)
        assert result.sorted_in_memory and result.engine.health.pairs == 200_000, result.summary()
        print(peak_kib() - before)
    """)
    ran = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, check=False)
    assert ran.returncode == 0, ran.stderr[-2000:]
    grown_kib = int(ran.stdout.split()[-1])
    assert grown_kib < 100 * 1024, f"peak RSS grew by {grown_kib / 1024:.0f} MiB"


def test_final_only_writes_each_windows_final_record_once(
        tmp_path: Path, inputs: tuple[list[dict[str, Any]], list[dict[str, Any]]]) -> None:
    predictions, labels = inputs
    every, _ = run(tmp_path, "jsonl", predictions, labels)
    (tmp_path / "f").mkdir()
    finals_only, result = run(tmp_path / "f", "jsonl", predictions, labels, final_only=True)
    expected = [line for line in every.splitlines() if json.loads(line)["final"]]
    assert finals_only.splitlines() == expected and result.metric_records == len(expected)


def test_final_only_figures_equal_the_revisions_final_ones_for_a_binary_scored_model(tmp_path: Path) -> None:
    """Final-only folds pairs into windows in larger batches, late; its figures (log loss, calibration
    sums included) must not change for it."""
    predictions, labels = streams(Scenario(pairs=2000, rate_per_s=0.5, label_delay_mean_s=900.0, models=("a", "b")))
    every, _ = run(tmp_path, "jsonl", predictions, labels)
    (tmp_path / "f").mkdir()
    finals_only, _ = run(tmp_path / "f", "jsonl", predictions, labels, final_only=True)
    expected = [line for line in every.splitlines() if json.loads(line)["final"]]
    assert any("calibration" in json.loads(line)["metrics"] for line in expected)
    assert finals_only.splitlines() == expected


def test_final_only_figures_equal_the_revisions_final_ones_for_a_regression_model(tmp_path: Path) -> None:
    rng = random.Random(3)
    predictions, labels = [], []
    for i in range(3000):
        ts, y = 1_767_225_600.0 + 3 * i, rng.gauss(100, 30)
        predictions.append({"request_id": str(i), "model": "price", "timestamp": ts, "prediction": y + rng.gauss(0, 5),
                            "segment": {"c": "abc"[i % 3]}})
        labels.append({"request_id": str(i), "timestamp": ts + rng.expovariate(1 / 1800), "label": y})
    labels.sort(key=lambda r: r["timestamp"])
    config = Config.from_mapping({"regression_models": ["price"]})
    every, final = tmp_path / "every.jsonl", tmp_path / "final.jsonl"
    replay(predictions, labels, config, every)
    replay(predictions, labels, config, final, final_only=True)
    assert final.read_text().splitlines() == [line for line in every.read_text().splitlines() if '"final":true' in line]


def test_metric_records_to_parquet(tmp_path: Path, inputs: tuple[list[dict[str, Any]], list[dict[str, Any]]]) -> None:
    predictions, labels = inputs
    jsonl, _ = run(tmp_path, "jsonl", predictions, labels)
    replay(tmp_path / "jsonl" / "p.jsonl", tmp_path / "jsonl" / "l.jsonl", Config.load(tmp_path / "jsonl" / "c.yaml"),
           tmp_path / "m.parquet")
    table = pq.read_table(tmp_path / "m.parquet").to_pylist()
    records = [json.loads(line) for line in jsonl.splitlines()]
    assert len(table) == len(records)
    for row, record in zip(table, records, strict=True):
        assert (row["model"], row["window_name"], row["n"], row["final"]) == (
            record["model"], record["window"]["name"], record["n"], record["final"])
        assert json.loads(row["metrics"]) == record["metrics"]


def test_dead_letters_go_beside_a_regular_metrics_file_else_to_the_working_directory(tmp_path: Path) -> None:
    assert default_dead_letters(tmp_path / "m.jsonl") == tmp_path / "dead-letters.jsonl"
    assert default_dead_letters(Path("/dev/null")) == Path("dead-letters.jsonl")
    assert default_dead_letters(tmp_path / "no-such-folder" / "m.jsonl") == Path("dead-letters.jsonl")


def test_the_cli_replays_parquet_to_dev_null_and_says_where_dead_letters_went(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "p.parquet", [{"request_id": "1", "model": "m", "timestamp": 1_767_225_600.0,
                                    "prediction": "a"}, {"request_id": "2", "timestamp": 1.0}], "parquet")
    write(tmp_path / "l.parquet", [{"request_id": "1", "timestamp": 1_767_225_600.0, "label": "a"}], "parquet")
    assert main(["replay", "--predictions", "p.parquet", "--labels", "l.parquet", "--metrics-out", "/dev/null",
                 "--alerts-out", "/dev/null", "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["dead_letters_file"] == "dead-letters.jsonl" and summary["pairs"] == 1
    assert json.loads((tmp_path / "dead-letters.jsonl").read_text())["row"] == 2


def test_the_progress_bar_shows_on_a_terminal_only(monkeypatch: pytest.MonkeyPatch) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("stream.replay.progress.DELAY_S", 0.0)
    monkeypatch.setattr("stream.replay.progress.EVERY_S", 0.0)
    shown, piped, quiet = Terminal(), io.StringIO(), Terminal()
    for stream, flag in ((shown, False), (piped, False), (quiet, True)):
        progress = Progress(1000, quiet=flag, stream=stream, ncols=200)
        for _ in range(10):
            progress.read(100)
        progress.status(5, 1_767_225_600.0)
        progress.read(0)
        progress.close()
    assert "2026-01-01T00:00Z" in shown.getvalue() and "10 records" in shown.getvalue()
    assert piped.getvalue() == "" and quiet.getvalue() == ""


def test_the_api_takes_arrow_tables(inputs: tuple[list[dict[str, Any]], list[dict[str, Any]]]) -> None:
    predictions, labels = inputs
    cooked = [{**p, "scores": json.dumps(p["scores"]), "segment": json.dumps(p["segment"])} for p in predictions]
    from_rows = Monitor({"windows": ["cumulative"], "source": {"predictions": predictions, "labels": labels}})
    from_tables = Monitor({"windows": ["cumulative"],
                           "source": {"predictions": pa.Table.from_pylist(cooked),
                                      "labels": pa.Table.from_pylist(labels)}})
    a, b = from_rows.execute(), from_tables.execute()
    assert a is not None and b is not None
    assert [r["metrics"] for r in a.metrics] == [r["metrics"] for r in b.metrics] and a.metrics


def test_the_api_takes_pandas_dataframes(inputs: tuple[list[dict[str, Any]], list[dict[str, Any]]]) -> None:
    pandas = pytest.importorskip("pandas")
    predictions, labels = inputs
    frames = {"predictions": pandas.DataFrame(predictions), "labels": pandas.DataFrame(labels)}
    from_rows = Monitor({"windows": ["cumulative"], "source": {"predictions": predictions, "labels": labels}})
    from_frames = Monitor({"windows": ["cumulative"], "source": frames})
    a, b = from_rows.execute(), from_frames.execute()
    assert a is not None and b is not None and a.metrics
    assert [r["metrics"] for r in a.metrics] == [r["metrics"] for r in b.metrics]
    assert a.health == b.health


@given(lines=st.lists(st.sampled_from([b'{"a": 1}', b"", b"  ", b"\t\r", b"x\x0by", b"\xff" * 30]), max_size=50),
       last_newline=st.booleans(), chunk_bytes=st.integers(1, 120))
@settings(max_examples=200, deadline=None)
def test_a_jsonl_file_is_read_in_chunks_as_line_by_line(tmp_path_factory: pytest.TempPathFactory, lines: list[bytes],
                                                        last_newline: bool, chunk_bytes: int) -> None:
    """``jsonl_chunks`` gives the lines that are not blank, numbered as in the file (split at
    newlines only), whatever the size of a chunk, and counts every byte."""
    data = b"\n".join(lines) + (b"\n" if last_newline and lines else b"")
    path = tmp_path_factory.mktemp("chunks") / "x.jsonl"
    path.write_bytes(data)
    pieces = data.split(b"\n")
    expected = [(n, line + b"\n" if n < len(pieces) else line) for n, line in enumerate(pieces, 1)]
    expected = [(n, line) for n, line in expected if line and not line.isspace()]
    chunks = list(jsonl_chunks(path, chunk_bytes))
    assert [(n, line) for numbers, found, _ in chunks for n, line in zip(numbers, found, strict=True)] == expected
    assert sum(size for _, _, size in chunks) == len(data)
