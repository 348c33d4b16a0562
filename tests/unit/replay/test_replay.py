"""`mlmon replay` end to end on JSONL files: exact final metrics, dead letters, alerts."""

from __future__ import annotations

import json
import math
import random
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from sklearn import metrics as skm

from stream.cli import main
from stream.core.sampling import Sampler
from stream.simulate import Scenario, draws, streams

SCENARIO = Scenario(pairs=6000, rate_per_s=1.0, label_coverage=0.9, duplicate_rate=0.05,
                    early_label_rate=0.02, label_delay_mean_s=900.0, degrade_from=0.4, recover_at=0.7)
RULES = """
rules:
  - name: ModelAccuracyLow
    metric: accuracy
    window: rolling_300
    below: 0.75
    clear: 0.8
    min_samples: 300
    for: 2
"""


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def run_replay(tmp_path: Path, predictions: list[Any], labels: list[Any], *flags: str) -> dict[str, Path]:
    paths = {
        "predictions": write_jsonl(tmp_path / "p.jsonl", predictions),
        "labels": write_jsonl(tmp_path / "l.jsonl", labels),
        "config": write_jsonl(tmp_path / "c.yaml", ["windows: [tumbling 1h, rolling 300, cumulative]"]),
        "rules": write_jsonl(tmp_path / "r.yaml", [RULES]),
        "metrics": tmp_path / "m.jsonl", "alerts": tmp_path / "a.jsonl", "dead": tmp_path / "d.jsonl",
    }
    code = main(["replay", "--predictions", str(paths["predictions"]), "--labels", str(paths["labels"]),
                 "--config", str(paths["config"]), "--rules", str(paths["rules"]),
                 "--metrics-out", str(paths["metrics"]), "--alerts-out", str(paths["alerts"]),
                 "--dead-letters-out", str(paths["dead"]), *flags])
    assert code == 0
    return paths


def expected_by_hour() -> dict[int, list[tuple[str, str]]]:
    out: dict[int, list[tuple[str, str]]] = defaultdict(list)
    for d in draws(SCENARIO):
        if d.label is not None:
            out[int(d.prediction["timestamp"] // 3600) * 3600].append((d.label["label"], d.prediction["prediction"]))
    return out


def check_final_metrics(metrics_path: Path) -> None:
    finals = {r["window"]["start"]: r for r in read_jsonl(metrics_path)
              if r["final"] and r["window"]["name"] == "tumbling_1h" and not r["segment"]}
    expected = expected_by_hour()
    assert set(finals) == set(expected)
    for start, pairs in expected.items():
        y_true, y_pred = [t for t, _ in pairs], [p for _, p in pairs]
        m = finals[start]["metrics"]
        assert finals[start]["n"] == len(pairs)
        assert m["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred), abs=1e-9)
        assert m["f1_weighted"] == pytest.approx(
            skm.f1_score(y_true, y_pred, average="weighted", zero_division=0), abs=1e-9)
        assert m["mcc"] == pytest.approx(skm.matthews_corrcoef(y_true, y_pred), abs=1e-9)


def test_replay_is_exact_and_alerts_fire_and_resolve(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    predictions, labels = streams(SCENARIO)
    paths = run_replay(tmp_path, predictions, labels)
    check_final_metrics(paths["metrics"])
    summary = json.loads(capsys.readouterr().out)
    assert summary["balance"] == {"predictions": 0, "labels": 0}
    assert summary["health"]["duplicate_predictions"] > 0 and summary["health"]["duplicate_labels"] > 0
    alerts = read_jsonl(paths["alerts"])
    assert [a["status"] for a in alerts] == ["firing", "resolved"]
    assert alerts[0]["fingerprint"] == alerts[1]["fingerprint"]


def test_the_default_output_is_the_final_records_of_revisions_with_the_same_alerts(tmp_path: Path) -> None:
    predictions, labels = streams(SCENARIO)
    default = run_replay(tmp_path, predictions, labels)
    (tmp_path / "revisions").mkdir()
    revisions = run_replay(tmp_path / "revisions", predictions, labels, "--revisions")
    written, revised = read_jsonl(default["metrics"]), read_jsonl(revisions["metrics"])
    assert all(r["final"] for r in written) and not all(r["final"] for r in revised)
    assert written == [r for r in revised if r["final"]]
    assert default["alerts"].read_bytes() == revisions["alerts"].read_bytes()  # the times they had live


def test_unsorted_files_give_the_same_result(tmp_path: Path) -> None:
    predictions, labels = streams(SCENARIO)
    sorted_run = run_replay(tmp_path, predictions, labels)
    rng = random.Random(3)
    rng.shuffle(predictions)
    rng.shuffle(labels)
    (tmp_path / "shuffled").mkdir()
    shuffled_run = run_replay(tmp_path / "shuffled", predictions, labels)
    def finals(path: Path) -> list[dict[str, Any]]:
        return sorted((r for r in read_jsonl(path) if r["final"]), key=json.dumps)

    assert finals(sorted_run["metrics"]) == finals(shuffled_run["metrics"])
    check_final_metrics(shuffled_run["metrics"])


def test_malformed_lines_go_to_dead_letters_and_the_run_goes_on(tmp_path: Path) -> None:
    predictions, labels = streams(SCENARIO)
    predictions.insert(10, "{not json")
    predictions.insert(20, {"request_id": "x", "model": "m", "timestamp": "soon", "prediction": "a"})
    labels.insert(5, {"request_id": "y", "timestamp": 1.6e9})
    labels.insert(7, [1, 2, 3])
    paths = run_replay(tmp_path, predictions, labels)
    dead = read_jsonl(paths["dead"])
    assert [(d["source"], d["line"]) for d in dead] == [
        ("predictions", 11), ("predictions", 21), ("labels", 6), ("labels", 8)]
    assert "not valid JSON" in dead[0]["reason"] and dead[0]["raw"] == "{not json"
    assert "not an RFC 3339" in dead[1]["reason"]
    assert dead[2]["reason"] == "missing field 'label'"
    assert "expected a JSON object" in dead[3]["reason"]
    check_final_metrics(paths["metrics"])


def test_bad_config_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = write_jsonl(tmp_path / "bad.yaml", ["windows: [weekly]"])
    empty = write_jsonl(tmp_path / "e.jsonl", [])
    code = main(["replay", "--predictions", str(empty), "--labels", str(empty), "--config", str(bad),
                 "--metrics-out", str(tmp_path / "m"), "--alerts-out", str(tmp_path / "a")])
    assert code == 2
    assert "'kind' must be one of" in capsys.readouterr().err


def test_a_record_stamped_alone_far_in_the_future_is_a_dead_letter_and_moves_nothing(tmp_path: Path) -> None:
    predictions, labels = streams(SCENARIO)
    future = 4e9  # 2096, in the middle of both files
    at = len(predictions) // 2, len(labels) // 2
    predictions.insert(at[0], {"request_id": "broken-clock", "model": SCENARIO.models[0],
                                               "timestamp": future, "prediction": "home_win"})
    labels.insert(at[1], {"request_id": "broken-clock", "timestamp": future, "label": "away_win"})
    paths = run_replay(tmp_path, predictions, labels)
    check_final_metrics(paths["metrics"])  # every window exact: nothing closed early, nothing counted late
    dead = read_jsonl(paths["dead"])
    assert [(d["source"], d["request_id"], d["line"]) for d in dead] == [
        ("predictions", "broken-clock", at[0] + 1), ("labels", "broken-clock", at[1] + 1)]
    assert all("ahead of the record before it" in d["reason"] and "max_future_s" in d["reason"] for d in dead)
    assert json.loads(dead[0]["raw"])["request_id"] == "broken-clock"


def test_a_dead_letter_stays_within_a_few_kib_whatever_the_line_holds(tmp_path: Path) -> None:
    predictions, labels = streams(SCENARIO)
    predictions.insert(3, "\x01" * 60_000)  # control bytes: six bytes each once JSON-encoded
    paths = run_replay(tmp_path, predictions, labels)
    [dead] = read_jsonl(paths["dead"])
    assert dead["line"] == 4 and len(json.dumps(dead)) < 5000


def test_a_label_its_model_cannot_use_is_dead_lettered_with_its_file_line_and_model(tmp_path: Path) -> None:
    predictions, labels = streams(SCENARIO)
    rid = predictions[10]["request_id"]
    at = next(i for i, label in enumerate(labels) if label["request_id"] == rid)
    labels[at] = {**labels[at], "label": 0.5}  # a float is no class name
    paths = run_replay(tmp_path, predictions, labels)
    [dead] = read_jsonl(paths["dead"])
    where = (dead["source"], dead["file"], dead["line"], dead["request_id"], dead["model"])
    assert where == ("labels", str(paths["labels"]), at + 1, rid, SCENARIO.models[0])


def test_a_sampled_replay_gives_scikit_learn_s_figures_of_the_sampled_requests(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``sample: 0.3``: the final hourly figures are scikit-learn's on the requests whose id hash
    falls in the first 30%, stated with the rate and standard errors; the rest is counted."""
    predictions, labels = streams(SCENARIO)
    write_jsonl(tmp_path / "c.yaml", ["windows: [tumbling 1h, cumulative]", "sample: 0.3"])
    code = main(["replay", "--predictions", str(write_jsonl(tmp_path / "p.jsonl", predictions)),
                 "--labels", str(write_jsonl(tmp_path / "l.jsonl", labels)), "--config", str(tmp_path / "c.yaml"),
                 "--metrics-out", str(tmp_path / "m.jsonl"), "--alerts-out", str(tmp_path / "a.jsonl")])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    sampler = Sampler(0.3)
    want: dict[int, list[tuple[str, str]]] = defaultdict(list)
    for d in draws(SCENARIO):
        if d.label is not None and sampler.keeps(d.prediction["request_id"]):
            want[int(d.prediction["timestamp"] // 3600) * 3600].append((d.label["label"], d.prediction["prediction"]))
    finals = {r["window"]["start"]: r for r in read_jsonl(tmp_path / "m.jsonl")
              if r["final"] and r["window"]["name"] == "tumbling_1h" and not r["segment"]}
    assert set(finals) == set(want)
    for start, pairs in want.items():
        y_true, y_pred = [t for t, _ in pairs], [p for _, p in pairs]
        record = finals[start]
        assert record["n"] == len(pairs) and record["sample_rate"] == 0.3
        assert record["metrics"]["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred), abs=1e-9)
        assert record["metrics"]["f1_macro"] == pytest.approx(
            skm.f1_score(y_true, y_pred, average="macro", zero_division=0), abs=1e-9)
        accuracy = record["metrics"]["accuracy"]
        assert record["standard_errors"]["accuracy"] == pytest.approx(
            math.sqrt(0.7 * accuracy * (1 - accuracy) / (len(pairs) - 1)), rel=1e-9)
    kept = sum(sampler.keeps(p["request_id"]) for p in predictions)
    assert summary["health"]["unsampled_predictions"] == len(predictions) - kept > 0.6 * len(predictions)
    assert summary["health"]["unsampled_labels"] == sum(not sampler.keeps(r["request_id"]) for r in labels)
    assert summary["balance"] == {"predictions": 0, "labels": 0}
