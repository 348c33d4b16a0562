from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from stream import Monitor
from stream.errors import ConfigError
from stream.simulate import Scenario, streams


def test_a_bounded_run_over_jsonl_files_returns_final_metrics_alerts_and_health(tmp_path: Path) -> None:
    predictions, labels = streams(Scenario(pairs=3000, rate_per_s=1.0, degrade_from=0.4, recover_at=0.7,
                                           label_delay_mean_s=60.0))
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in predictions) + "{broken\n")
    (tmp_path / "l.jsonl").write_text("".join(json.dumps(r) + "\n" for r in labels))
    monitor = Monitor(config={
        "enabled": True, "mode": "replay", "windows": ["tumbling 1h", "rolling 300"],
        "source": {"predictions": tmp_path / "p.jsonl", "labels": str(tmp_path / "l.jsonl")},
        "rules": [{"name": "AccuracyLow", "metric": "accuracy", "window": "rolling_300", "below": 0.75,
                   "clear": 0.8, "min_samples": 300}],
    })
    monitor.setup()
    result = monitor.execute()
    assert result is not None
    assert {r["window"]["name"] for r in result.metrics} == {"tumbling_1h", "rolling_300"}
    assert all(r["final"] for r in result.metrics)
    assert [a["status"] for a in result.alerts] == ["firing", "resolved"]
    assert [d["reason"][:14] for d in result.dead_letters] == ["not valid JSON"]
    assert result.health["balance"] == {"predictions": 0, "labels": 0}
    assert result.health["pairs"] == 3000


def test_in_memory_sources_and_bad_items() -> None:
    monitor = Monitor(config={"windows": ["cumulative"], "source": {
        "predictions": [{"request_id": "a", "model": "m", "timestamp": 1.6e9, "prediction": 1}, "junk"],
        "labels": [{"request_id": "a", "timestamp": 1.6e9 + 1, "label": 1}],
    }})
    result = monitor.execute()  # setup() is implied
    assert result is not None and result.metrics[0]["metrics"]["accuracy"] == 1.0
    assert result.dead_letters[0]["reason"] == "expected a JSON object, got str"


def test_disabled_monitor_says_so_and_does_nothing(caplog: pytest.LogCaptureFixture) -> None:
    monitor = Monitor(config={"enabled": False, "mode": "production", "broker": "nowhere:1"})
    monitor.setup()
    assert monitor.execute() is None
    assert "disabled" in caplog.text


@pytest.mark.parametrize("config", [{"mode": "batch"}, {"windows": ["weekly"], "source": {}}])
def test_bad_configs_fail_at_setup(config: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        Monitor(config=config).setup()


@pytest.mark.slow
def test_with_no_configuration_the_first_three_lines_run_the_demonstration() -> None:
    """In a fresh interpreter, as a newcomer types it: the demonstration's figures and its alerts
    firing then resolving (the detector rule before the threshold rule), with a log line saying
    how to use real data."""
    code = ("import json, time; started = time.monotonic()\n"
            "from stream import Monitor\n"
            "impl = Monitor(); impl.setup(); result = impl.execute()\n"
            "alerts = [[a['alertname'], a['status']] for a in result.alerts]\n"
            "print(json.dumps({'metrics': len(result.metrics), 'alerts': alerts,\n"
            "                  'balance': result.health['balance'], 'seconds': time.monotonic() - started}))\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    out = json.loads(run.stdout)
    assert out["metrics"] > 0, out
    assert out["alerts"][0] == ["AccuracyDrop", "firing"], out
    for name in ("AccuracyDrop", "ModelAccuracyLow"):
        assert [status for alert, status in out["alerts"] if alert == name] == ["firing", "resolved"], out
    assert out["balance"] == {"predictions": 0, "labels": 0}
    assert out["seconds"] < 30, out  # a few seconds here; the bound allows a loaded machine
    assert "no 'source' given" in run.stderr, run.stderr


def test_records_with_keys_that_are_not_strings_are_dead_letters_not_errors() -> None:
    base = {"request_id": "r", "model": "m", "timestamp": 1.6e9, "prediction": "a"}
    predictions = [{**base, "scores": {1: 0.5}}, {**base, "request_id": "s", "segment": {2: "x"}},
                   {**base, "request_id": "t", 3: "x"}]  # an unknown key is ignored, whatever its type
    result = Monitor(config={"windows": ["cumulative"], "source": {"predictions": predictions, "labels": []}}).execute()
    assert result is not None
    assert [(d["line"], d["reason"]) for d in result.dead_letters] == [
        (1, "'scores' classes must be non-empty strings, got '1'"), (2, "'segment' keys must be strings, got '2'")]
    assert result.health["predictions"] == 3 and result.health["invalid_predictions"] == 2
