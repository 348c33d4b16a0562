"""Custom metrics: by expression and by function, refused when bad, equal to a direct numpy
computation in replay and the API, in Prometheus, and able to drive an alert rule."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest

from stream.api import Monitor
from stream.config import Config
from stream.core.custom import CustomMetric
from stream.core.engine import Engine
from stream.errors import ConfigError
from stream.exporters.prometheus import for_engine
from stream.replay import replay

T0 = 1_700_000_000
COST = {"name": "fraud_cost", "models": ["fraud-*"], "expression": "500 * fn['1'] + 5 * fp['1']"}


@pytest.fixture
def youden_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An importable module with a metric function, as a user's package would have."""
    name = f"user_metrics_{uuid.uuid4().hex[:8]}"  # a module of its own per test: sys.modules keeps them
    (tmp_path / f"{name}.py").write_text(textwrap.dedent("""
        import numpy as np

        def youden(matrix, classes):
            if "1" not in classes:
                return float("nan")  # null
            i = classes.index("1")
            tp = matrix[i, i]
            fn = matrix[i].sum() - tp
            fp = matrix[:, i].sum() - tp
            tn = matrix.sum() - tp - fn - fp
            return tp / (tp + fn) + tn / (tn + fp) - 1

        def broken(matrix, classes):
            raise RuntimeError("boom")

        def squared_error_sum(figures):
            return figures["rmse"] ** 2 * figures["n"]
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def direct(matrix: np.ndarray, classes: list[str]) -> dict[str, float]:
    i = classes.index("1")
    tp = matrix[i, i]
    fn, fp = matrix[i].sum() - tp, matrix[:, i].sum() - tp
    tn = matrix.sum() - tp - fn - fp
    with np.errstate(divide="ignore", invalid="ignore"):
        return {"fraud_cost": 500.0 * fn + 5.0 * fp, "youden": tp / (tp + fn) + tn / (tn + fp) - 1}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 50), min_size=4, max_size=4))
def test_an_expression_equals_numpy_on_any_matrix(cells: list[int]) -> None:
    matrix = np.array(cells, dtype=np.int64).reshape(2, 2)
    metric = CustomMetric.parse(COST, 0)
    assert metric.value(matrix, ["0", "1"], {}) == direct(matrix, ["0", "1"])["fraud_cost"]
    ratio = CustomMetric.parse({"name": "r", "expression": "tp['1'] / (tp['1'] + fn['1']) - accuracy"}, 0)
    value = ratio.value(matrix, ["0", "1"], {"accuracy": 0.5})
    if matrix[1].sum() == 0:
        assert value is None  # division by zero at run time: null, as built-ins
    else:
        assert value == pytest.approx(matrix[1, 1] / matrix[1].sum() - 0.5, abs=1e-12)


def test_a_class_the_window_has_not_seen_counts_zero() -> None:
    metric = CustomMetric.parse(COST, 0)
    assert metric.value(np.array([[3]]), ["0"], {}) == 0.0


@pytest.mark.parametrize(("definition", "reason"), [
    ({"name": "m", "expression": "500 * fn['1'] +"}, "cannot evaluate"),
    ({"name": "m", "expression": "tp['1'] / recall_at_k"}, "'recall_at_k' is not defined"),
    ({"name": "m", "expression": "tp['1'] / 0"}, "divides by zero"),
    ({"name": "m", "expression": "__import__('os').system('true')"}, "cannot evaluate"),
    ({"name": "m", "expression": "tp.__class__"}, "cannot evaluate"),
    ({"name": "m", "function": "no_such_package.metrics:youden"}, "cannot import"),
    ({"name": "m", "function": "json:no_such_function"}, "cannot import"),
    ({"name": "m", "function": "no_such_entry_point"}, "no entry point"),
    ({"name": "m", "function": "json:__doc__"}, "not callable"),
    ({"name": "m"}, "exactly one of"),
    ({"name": "accuracy", "expression": "1"}, "built-in"),
    ({"name": "not a name", "expression": "1"}, "'name' is required"),
])
def test_bad_definitions_are_refused_at_start_naming_the_metric(definition: dict[str, Any], reason: str) -> None:
    with pytest.raises(ConfigError) as refused:
        Config.from_mapping({"custom_metrics": [definition]})
    assert reason in str(refused.value)
    assert definition["name"] in str(refused.value) or "custom_metrics[0]" in str(refused.value)


def test_a_name_defined_twice_is_refused() -> None:
    with pytest.raises(ConfigError, match="twice"):
        Config.from_mapping({"custom_metrics": [{"name": "a", "expression": "n"}, {"name": "a", "expression": "n"}]})


def test_a_function_that_raises_is_null_and_logged_once(youden_module: str, caplog: pytest.LogCaptureFixture) -> None:
    metric = CustomMetric.parse({"name": "b", "function": f"{youden_module}:broken"}, 0)
    with caplog.at_level(logging.WARNING):
        assert metric.value(np.eye(2, dtype=np.int64), ["0", "1"], {}) is None
        assert metric.value(np.eye(2, dtype=np.int64), ["0", "1"], {}) is None
    assert [r.getMessage() for r in caplog.records if "custom metric b" in r.getMessage()] == [
        "custom metric b failed, its value is null (logged once): RuntimeError('boom')"]


def test_an_entry_point_names_a_function(youden_module: str, tmp_path: Path) -> None:
    info = tmp_path / f"{youden_module}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {youden_module}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[mlmon.metrics]\nyouden_j = {youden_module}:youden\n")
    metric = CustomMetric.parse({"name": "j", "function": "youden_j"}, 0)
    matrix = np.array([[5, 1], [2, 7]])
    assert metric.value(matrix, ["0", "1"], {}) == pytest.approx(direct(matrix, ["0", "1"])["youden"])


# ------------------------------------------------------------------ end to end: replay, API, Prometheus


def traffic(tmp_path: Path) -> tuple[Path, Path, dict[tuple[str, str], list[tuple[str, str]]]]:
    rng = np.random.default_rng(7)
    predictions, labels = [], []
    pairs: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for i in range(600):
        model = ("fraud-eu", "fraud-us", "churn")[i % 3]
        truth = str(int(rng.random() < 0.3))
        guess = truth if rng.random() < (0.9 if i < 300 else 0.5) else str(1 - int(truth))
        ts = T0 + i * 10
        predictions.append({"request_id": f"r{i}", "model": model, "timestamp": ts, "prediction": guess,
                            "scores": {"1": 0.8 if guess == "1" else 0.2, "0": 0.2 if guess == "1" else 0.8}})
        labels.append({"request_id": f"r{i}", "timestamp": ts + 30, "label": truth})
        pairs.setdefault((model, "all"), []).append((truth, guess))
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in predictions))
    (tmp_path / "l.jsonl").write_text("".join(json.dumps(r) + "\n" for r in labels))
    return tmp_path / "p.jsonl", tmp_path / "l.jsonl", pairs


def settings_with_custom(module: str) -> dict[str, Any]:
    return {
        "windows": ["cumulative"],
        "custom_metrics": [COST, {"name": "youden", "models": ["fraud-*"], "function": f"{module}:youden"}],
        "rules": [{"name": "FraudCostHigh", "metric": "fraud_cost", "window": "cumulative", "above": 5_000,
                   "min_samples": 1, "severity": "warning"}],
    }


def check_records(records: list[dict[str, Any]], pairs: dict[tuple[str, str], list[tuple[str, str]]]) -> None:
    finals = {r["model"]: r for r in records if r["final"] and not r["segment"]}
    assert set(finals) == {"fraud-eu", "fraud-us", "churn"}
    assert "fraud_cost" not in finals["churn"]["metrics"]  # its models' globs do not match
    for model in ("fraud-eu", "fraud-us"):
        record = finals[model]
        matrix = np.array(record["confusion_matrix"])
        expected = direct(matrix, record["classes"])
        truth_guess = pairs[(model, "all")]
        assert matrix.sum() == len(truth_guess)
        assert record["metrics"]["fraud_cost"] == expected["fraud_cost"]
        assert record["metrics"]["youden"] == pytest.approx(expected["youden"], abs=1e-12)
        assert "roc_auc" in record["metrics"] and "ece" in record["metrics"]


def test_replay_computes_custom_metrics_and_alerts_on_them(tmp_path: Path, youden_module: str) -> None:
    predictions, labels, pairs = traffic(tmp_path)
    (tmp_path / "c.json").write_text(json.dumps(settings_with_custom(youden_module)))
    config = Config.load(tmp_path / "c.json")
    replay(predictions, labels, config, tmp_path / "out.jsonl", tmp_path / "alerts.jsonl")
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    check_records(records, pairs)
    alerts = [json.loads(line) for line in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    assert {a["labels"]["model"] for a in alerts if a["status"] == "firing"} == {"fraud-eu", "fraud-us"}


def test_the_api_computes_custom_metrics_and_alerts_on_them(tmp_path: Path, youden_module: str) -> None:
    predictions, labels, pairs = traffic(tmp_path)
    monitor = Monitor({"source": {"predictions": str(predictions), "labels": str(labels)},
                       **settings_with_custom(youden_module)})
    monitor.setup()
    result = monitor.execute()
    assert result is not None
    check_records(result.metrics, pairs)
    firing = [a for a in result.alerts if a["status"] == "firing"]
    assert {a["labels"]["model"] for a in firing} == {"fraud-eu", "fraud-us"}


def test_prometheus_exposes_custom_and_ranking_metrics_promtool_clean(tmp_path: Path, youden_module: str) -> None:
    predictions, labels, _ = traffic(tmp_path)
    engine = Engine(Config.from_mapping(settings_with_custom(youden_module)))
    collector = for_engine(engine)
    from stream.core.records import parse_label, parse_prediction

    rows = [(json.loads(line), parse_prediction) for line in predictions.read_text().splitlines()]
    rows += [(json.loads(line), parse_label) for line in labels.read_text().splitlines()]
    for raw, parse in sorted(rows, key=lambda r: r[0]["timestamp"]):
        engine.receive(parse(raw))
    engine.finish()
    collector.observe(engine.metric_records)
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    assert 'mlmon_model_custom_metric{metric="fraud_cost",model="fraud-eu"' in text
    assert 'mlmon_model_custom_metric{metric="youden",model="fraud-us"' in text
    assert "mlmon_model_roc_auc_ratio{" in text and "mlmon_model_ece_ratio{" in text
    assert 'mlmon_model_calibration_fraction_positive_ratio{bin="0.1-0.2"' in text
    if shutil.which("promtool") is None:
        pytest.skip("promtool is not installed (scripts/ensure-system-deps installs Prometheus)")
    check = subprocess.run(["promtool", "check", "metrics"], input=text.encode(), capture_output=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_regression_models_get_custom_metrics_by_expression_and_function(youden_module: str) -> None:
    config = Config.from_mapping({
        "windows": ["cumulative"], "regression_models": ["price"],
        "custom_metrics": [{"name": "sse", "models": ["price"], "expression": "rmse ** 2 * n"},
                           {"name": "sse_fn", "models": ["price"], "function": f"{youden_module}:squared_error_sum"}]})
    engine = Engine(config)
    from stream.core.records import parse_label, parse_prediction

    truths, guesses = [1.0, 2.0, 4.0], [1.5, 2.0, 3.0]
    for i, (truth, guess) in enumerate(zip(truths, guesses, strict=True)):
        engine.receive(parse_prediction({"request_id": str(i), "model": "price", "timestamp": T0 + i,
                                         "prediction": guess}))
        engine.receive(parse_label({"request_id": str(i), "timestamp": T0 + i, "label": truth}))
    engine.finish()
    final = next(r for r in engine.metric_records if r["final"])
    sse = sum((t - g) ** 2 for t, g in zip(truths, guesses, strict=True))
    assert final["metrics"]["sse"] == pytest.approx(sse, abs=1e-9)
    assert final["metrics"]["sse_fn"] == pytest.approx(sse, abs=1e-9)


def test_python_is_not_reachable_from_an_expression() -> None:
    assert "os" not in sys.modules["stream.core.custom"].__dict__
    for expression in ("().__class__.__bases__", "open('/etc/passwd')", "lambda: 1", "[x for x in range(9**9)]"):
        with pytest.raises(ConfigError):
            CustomMetric.parse({"name": "m", "expression": expression}, 0)
