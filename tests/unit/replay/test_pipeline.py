"""Replay with its inputs read by a child process (``stream.replay.pipeline``) writes the same
bytes as replay in one process: metric records, alert events, dead letters, health."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from stream.config import Config
from stream.errors import MlmonError
from stream.replay import replay
from stream.simulate import Scenario, streams

RULES = [{"name": "AccuracyLow", "metric": "accuracy", "window": "tumbling_1h", "below": 0.8, "clear": 0.85,
          "min_samples": 50}]


def inputs(folder: Path, shuffle_after: int | None = None) -> tuple[Path, Path]:
    """Predictions and labels in time order, with duplicates, early labels, bad lines and a record
    from a broken clock among them; ``shuffle_after``: the labels out of order past that row."""
    predictions, labels = streams(Scenario(pairs=4000, rate_per_s=0.5, duplicate_rate=0.05, early_label_rate=0.05,
                                           label_coverage=0.9, degrade_from=0.4, recover_at=0.7))
    predictions.sort(key=lambda r: r["timestamp"])
    labels.sort(key=lambda r: r["timestamp"])
    rows: list[Any] = list(predictions)
    rows.insert(100, "{not json")
    rows.insert(2000, {"request_id": "bad", "model": "m", "timestamp": "noon", "prediction": 1})
    rows.append({**predictions[-1], "request_id": "future", "timestamp": predictions[-1]["timestamp"] + 1e7})
    no_label = {"request_id": "x", "timestamp": labels[1500]["timestamp"]}
    label_rows: list[Any] = [*labels[:1500], no_label, *labels[1500:]]
    if shuffle_after is not None:
        tail = label_rows[shuffle_after:]
        random.Random(3).shuffle(tail)
        label_rows[shuffle_after:] = tail
    out = folder / "p", folder / "l.jsonl"
    out[0].mkdir()
    half = len(rows) // 2  # two files of predictions, in a directory
    for name, part in (("a.jsonl", rows[:half]), ("b.jsonl", rows[half:])):
        (out[0] / name).write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in part))
    out[1].write_text("".join(json.dumps(r) + "\n" for r in label_rows))
    return out


def replayed(folder: Path, predictions: Path, labels: Path, processes: int, final_only: bool = True
             ) -> tuple[dict[str, bytes], Any]:
    out = folder / f"out-{processes}"
    out.mkdir()
    config = Config.from_mapping({"windows": ["tumbling 1h", "rolling 300", "cumulative"], "rules": RULES})
    result = replay(predictions, labels, config, out / "m.jsonl", out / "a.jsonl", out / "d.jsonl",
                    final_only=final_only, processes=processes)
    return {name: (out / name).read_bytes() for name in ("m.jsonl", "a.jsonl", "d.jsonl")}, result


def strip_times(files: dict[str, bytes]) -> dict[str, list[Any]]:
    """Records without their wall-clock stamps (emitted_at)."""
    return {name: [{k: v for k, v in json.loads(line).items() if k != "emitted_at"} for line in data.splitlines()]
            for name, data in files.items()}


@pytest.mark.parametrize("final_only", [True, False])
def test_a_child_reading_inputs_in_order_changes_nothing(tmp_path: Path, final_only: bool) -> None:
    predictions, labels = inputs(tmp_path)
    one, single = replayed(tmp_path, predictions, labels, 1, final_only)
    two, piped = replayed(tmp_path, predictions, labels, 2, final_only)
    assert not single.sorted_in_memory and not piped.sorted_in_memory
    assert strip_times(two) == strip_times(one)
    assert piped.summary()["health"] == single.summary()["health"] and piped.engine.balance() == single.engine.balance()
    dead = [json.loads(line)["reason"][:20] for line in two["d.jsonl"].splitlines()]
    assert len(dead) >= 4 and piped.alert_events >= 2


@pytest.mark.parametrize("shuffle_after", [0, 3000])
def test_inputs_out_of_order_are_sorted_as_in_one_process(tmp_path: Path, shuffle_after: int) -> None:
    """Out of order from the start: no child; past the rows looked at first: the child stops and
    the inputs are sorted."""
    predictions, labels = inputs(tmp_path, shuffle_after=shuffle_after)
    one, single = replayed(tmp_path, predictions, labels, 1)
    two, piped = replayed(tmp_path, predictions, labels, 2)
    assert single.sorted_in_memory and piped.sorted_in_memory
    assert strip_times(two) == strip_times(one)
    assert piped.summary()["health"] == single.summary()["health"]


def test_an_error_reading_an_input_is_raised_as_in_one_process(tmp_path: Path) -> None:
    (tmp_path / "p.csv").write_text("request_id,prediction\nr1,1\n")  # no model, no timestamp
    (tmp_path / "l.csv").write_text("request_id,timestamp,label\nr1,1700000000,1\n")
    errors = []
    for processes in (1, 2):
        with pytest.raises(MlmonError) as raised:
            replay(tmp_path / "p.csv", tmp_path / "l.csv", Config(), processes=processes)
        errors.append(str(raised.value))
    assert errors[0] == errors[1]
