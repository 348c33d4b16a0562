"""The HTML reports of a replay and of the demo, opened in a real headless Chromium with the
network cut off: every chart drawn, with its points, the alert spans and the summary, no error."""

from __future__ import annotations

import json
import re
from pathlib import Path

import orjson
import pytest
from browser import ARTIFACTS, render

from stream.cli import main
from stream.simulate import Scenario, streams

RULES = """
rules:
  - name: AccuracyLow
    metric: accuracy
    window: tumbling_1h
    below: 0.8
    clear: 0.85
    min_samples: 100
    summary: accuracy of an hour's labeled games fell below 80%
  - name: PriceErrorHigh
    metric: mae
    window: tumbling_1h
    above: 2.5
    min_samples: 50
"""


def backtest_files(folder: Path) -> tuple[Path, Path, Path]:
    """A model that degrades and recovers (two segments, scores) and a regression model (a price)."""
    predictions, labels = streams(Scenario(pairs=12_000, rate_per_s=0.4, degrade_from=0.4, recover_at=0.7,
                                           label_delay_mean_s=900.0))
    for i in range(0, 12_000, 4):
        ts = predictions[i]["timestamp"]
        wrong = 3.5 if 0.45 < i / 12_000 < 0.6 else 1.0  # its error rises, then falls back
        predictions.append({"request_id": f"price-{i}", "model": "price", "timestamp": ts,
                            "prediction": 100.0 + wrong * (i % 3)})
        labels.append({"request_id": f"price-{i}", "timestamp": ts + 60, "label": 100.0 + (i % 5) * 0.5})
    paths = folder / "predictions.jsonl", folder / "labels.jsonl", folder / "config.yaml"
    paths[0].write_bytes(b"".join(orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE) for r in predictions))
    paths[1].write_bytes(b"".join(orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE) for r in labels))
    paths[2].write_text("windows: [tumbling 1h, tumbling 1d, cumulative]\nregression_models: [price]\n" + RULES)
    return paths


def test_a_replay_s_report_draws_every_chart_offline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    predictions, labels, config = backtest_files(tmp_path)
    report = tmp_path / "backtest.html"
    assert main(["replay", "--predictions", str(predictions), "--labels", str(labels), "--config", str(config),
                 "--metrics-out", str(tmp_path / "m.jsonl"), "--alerts-out", str(tmp_path / "a.jsonl"), "--quiet",
                 "--report-out", str(report)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["report_file"] == str(report)
    alerts = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert {(a["alertname"], a["status"]) for a in alerts if not a["labels"].get("segment")} >= {
        ("AccuracyLow", "firing"), ("AccuracyLow", "resolved"), ("PriceErrorHigh", "firing"),
        ("PriceErrorHigh", "resolved")}
    page = report.read_text()
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=", page)  # nothing to fetch
    assert report.stat().st_size < 10_000_000

    shown = render(report, "replay-report.png", height=1750)  # the summary and the first model (README)
    assert shown.errors == []
    # two models: each a chart over time; the classification model its confusion matrix and calibration
    assert shown.charts == 4 and shown.svgs >= 4
    records = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    timed = [r for r in records if "end" in r["window"]]
    rows = 4  # three figures and label coverage, each a point per timed window
    assert shown.points == rows * len(timed) + 2 * 2 + 2 + sum(
        1 for b in _latest_calibration(records) if b["count"])
    assert shown.markers >= rows * len(timed)  # every point drawn
    assert shown.heatmaps == 2
    assert shown.shapes >= 2 * rows  # an alert span on every chart row of each model, at least
    assert shown.count(r'<table id="summary">') == 1 and shown.count(r'<td class="name">price</td>') == 1
    assert shown.count(r'<table id="health">') == 1
    assert (ARTIFACTS / "replay-report.png").stat().st_size > 50_000


def _latest_calibration(records: list[dict]) -> list[dict]:
    hourly = [r for r in records if r["model"] != "price" and not r["segment"] and r["window"]["name"] == "tumbling_1h"]
    return max(hourly, key=lambda r: r["window"]["end"])["metrics"]["calibration"]


def test_the_demo_s_report_shows_the_fall_and_the_alert(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = tmp_path / "demo.html"
    assert main(["demo", "--duration", "3", "--pairs", "8000", "--metrics-port", "0", "--report-out", str(report)]) == 0
    out = capsys.readouterr().out
    assert f"the HTML report will be written to {report} at the end" in out  # standard output is no terminal
    assert f"report written to {report}" in out
    shown = render(report, "demo-report.png")
    assert shown.errors == []
    assert shown.charts == 3 and shown.heatmaps == 2
    assert shown.markers >= 4 * 3 * 4  # four rows of three panels (overall, two venues), four 15-minute windows
    assert shown.shapes >= 4  # the accuracy alert's span, firing to resolved, on each chart row
    assert "ModelAccuracyLow" in shown.dom
