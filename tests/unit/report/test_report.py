"""The report plots the records' own figures, every window of them, and survives bad input."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import orjson

from stream import Monitor
from stream.core.keys import segment_label
from stream.report import Inputs, build_html, read_files
from stream.report.charts import alert_episodes, confusion_figure, series_figure, timed_finals
from stream.simulate import Scenario, streams


def replayed(tmp_path: Path, pairs: int = 6000) -> Any:
    """A degrading and recovering model with two segments, and a regression model, replayed."""
    predictions, labels = streams(Scenario(pairs=pairs, rate_per_s=0.5, degrade_from=0.4, recover_at=0.7,
                                           label_delay_mean_s=600.0))
    for i in range(0, pairs, 3):
        ts = predictions[i]["timestamp"]
        predictions.append({"request_id": f"price-{i}", "model": "price", "timestamp": ts, "prediction": 100.0 + i % 7})
        labels.append({"request_id": f"price-{i}", "timestamp": ts + 30, "label": 100.0 + i % 5})
    result = Monitor(config={
        "windows": ["tumbling 1h", "tumbling 1d", "cumulative"], "regression_models": ["price"],
        "source": {"predictions": predictions, "labels": labels},
        "rules": [{"name": "AccuracyLow", "metric": "accuracy", "window": "tumbling_1h", "below": 0.8,
                   "clear": 0.85, "min_samples": 100}],
    }).execute()
    assert result is not None
    return result


def test_every_plotted_point_is_its_record_s_figure_and_no_window_is_dropped(tmp_path: Path) -> None:
    result = replayed(tmp_path)
    for model in ("nba-game-outcome", "price"):
        records = [r for r in result.metrics if r["model"] == model]
        metrics = ("accuracy", "f1_macro", "roc_auc") if model != "price" else ("mae", "rmse", "r2")
        figure = series_figure(records, metrics, [])
        assert figure is not None
        finals = timed_finals(records)
        rows = [*metrics, "label_coverage"]
        panels = sorted({segment for _, segment, _ in finals}, key=lambda s: (s != "", s))
        plotted: dict[tuple[str, str, str, str], Any] = {}
        for trace in figure["data"]:
            axis = int(trace["xaxis"][1:] or 1) - 1
            row, column = divmod(axis, len(panels))
            layout_title = figure["layout"]["annotations"][column]["text"]
            segment = html.unescape(layout_title.removeprefix("<b>").removesuffix("</b>"))
            for x, y in zip(trace["x"], trace["y"], strict=True):
                plotted[(trace["name"], "" if segment == "all" else segment, x, rows[row])] = y
        expected = {}
        for (name, segment, start), record in finals.items():
            for metric in rows:
                value = record["label_coverage"] if metric == "label_coverage" else record["metrics"].get(metric)
                expected[(name, segment, start * 1000, metric)] = value  # epoch milliseconds
        assert plotted == expected  # the same windows, the same values, unrounded
        assert {segment_label(r["segment"]) for r in records} == set(panels)


def test_alert_spans_run_from_firing_to_resolved() -> None:
    events = [
        {"alertname": "A", "status": "firing", "labels": {"model": "m", "model_version": "v"}, "fingerprint": "f",
         "starts_at": "2026-01-01T01:00:00Z", "annotations": {"summary": "s", "description": "d"}},
        {"alertname": "A", "status": "resolved", "labels": {"model": "m", "model_version": "v"}, "fingerprint": "f",
         "starts_at": "2026-01-01T01:00:00Z", "ends_at": "2026-01-01T03:00:00Z"},
        {"alertname": "B", "status": "firing", "labels": {"model": "m", "model_version": "v", "segment": "k=x"},
         "fingerprint": "g", "starts_at": "2026-01-01T02:00:00Z"},
        {"alertname": "C", "status": "firing", "labels": {"model": "other", "model_version": "v"}, "fingerprint": "h",
         "starts_at": "2026-01-01T02:00:00Z"},
    ]
    episodes = alert_episodes(events, "m", "v", end="2026-01-02 00:00:00")
    assert [(e["name"], e["segment"], e["start"], e["end"], e["firing"]) for e in episodes] == [
        ("A", "", "2026-01-01 01:00:00", "2026-01-01 03:00:00", False),
        ("B", "k=x", "2026-01-01 02:00:00", "2026-01-02 00:00:00", True)]


def test_the_confusion_matrix_shows_counts_and_row_shares() -> None:
    record = {"classes": ["a", "b"], "confusion_matrix": [[3, 1], [0, 0]],
              "window": {"name": "cumulative", "kind": "cumulative"}}
    figure = confusion_figure(record)
    assert figure is not None
    counts, shares = figure["data"]
    assert counts["z"] == [[3, 1], [0, 0]] and shares["z"] == [[0.75, 0.25], [0.0, 0.0]]


def test_bad_lines_are_named_with_file_and_line_and_the_rest_is_reported(tmp_path: Path) -> None:
    result = replayed(tmp_path, pairs=1500)
    good = [orjson.dumps(r).decode() for r in result.metrics]
    path = tmp_path / "metrics.jsonl"
    other_version = json.dumps({"model": "m", "window": "tumbling_1h", "accuracy": 0.9})
    path.write_text("\n".join([good[0], good[1][: len(good[1]) // 2], other_version, *good[2:]]) + "\n")
    alerts = tmp_path / "alerts.jsonl"
    alerts.write_text("".join(orjson.dumps(a).decode() + "\n" for a in result.alerts) + "[1, 2]\n")
    inputs = read_files([path, tmp_path / "missing.jsonl"], [alerts])
    assert inputs.problems[0].startswith(f"{path}:2: not a JSON line")
    assert inputs.problems[1] == f"{path}:3: not a metric record of this mlmon version (no 'model_version')"
    assert inputs.problems[2] == f"{tmp_path / 'missing.jsonl'}: no such file"
    assert inputs.problems[3].startswith(f"{alerts}:{len(result.alerts) + 1}: not an alert event")
    assert len(inputs.metrics) == len(good) - 1 and len(inputs.alerts) == len(result.alerts)
    page = build_html(inputs)
    assert 'id="problems"' in page and f"{path}:2" in page and page.count('<tr><td class="name">') == 2


def test_parquet_records_read_as_replay_writes_them(tmp_path: Path) -> None:
    from stream.replay.output import open_metrics

    result = replayed(tmp_path, pairs=1500)
    writer = open_metrics(tmp_path / "m.parquet")
    writer.write(result.metrics)
    writer.close()
    inputs = read_files([tmp_path / "m.parquet"])
    assert not inputs.problems and len(inputs.metrics) == len(result.metrics)
    assert [{k: r[k] for k in original} for r, original in zip(inputs.metrics, result.metrics, strict=True)
            ] == result.metrics  # and the columns Parquet adds for queries (window_name, window_start)


def test_a_monitor_result_writes_its_report_and_shows_inline(tmp_path: Path) -> None:
    result = replayed(tmp_path, pairs=1500)
    path = result.report(tmp_path / "r.html")
    page = path.read_text()
    assert "nba-game-outcome" in page and "price" in page and "<script src" not in page
    assert result._repr_html_() == page.replace("mlmon report", "mlmon report")  # the same page
    empty = build_html(Inputs())
    assert 'id="summary"' in empty


def test_mlmon_report_names_what_it_skipped_and_refuses_nothing_to_report(
        tmp_path: Path, capsys: Any) -> None:
    from stream.cli import main

    result = replayed(tmp_path, pairs=1500)
    path = tmp_path / "m.jsonl"
    path.write_text("".join(orjson.dumps(r).decode() + "\n" for r in result.metrics) + '{"truncated": \n')
    out = tmp_path / "r.html"
    assert main(["report", "--records", str(path), "--out", str(out), "--metrics", "accuracy,log_loss"]) == 0
    captured = capsys.readouterr()
    assert f"skipped {path}:{len(result.metrics) + 1}: not a JSON line" in captured.err
    assert f"wrote {out}" in captured.out and "log_loss" in out.read_text()
    (tmp_path / "empty.jsonl").write_text("")
    assert main(["report", "--records", str(tmp_path / "empty.jsonl"), "--out", str(out)]) == 2
    assert "no metric records to report on" in capsys.readouterr().err
    assert main(["report", "--out", str(out)]) == 2


def test_a_window_is_plotted_by_its_final_record_else_its_latest_revision() -> None:
    def record(start: int, accuracy: float, final: bool) -> dict[str, Any]:
        return {"segment": {}, "window": {"name": "tumbling_1h", "start": start, "end": start + 3600}, "n": 1,
                "metrics": {"accuracy": accuracy}, "final": final}

    chosen = timed_finals([record(0, 0.1, False), record(0, 0.5, True), record(0, 0.9, False),
                           record(3600, 0.2, False), record(3600, 0.3, False)])
    assert {k[2]: r["metrics"]["accuracy"] for k, r in chosen.items()} == {0: 0.5, 3600: 0.3}


def test_names_from_inputs_are_text_never_markup() -> None:
    hostile = '<img src=x onerror="alert(1)"></script>'
    record = {"model": hostile, "model_version": hostile, "segment": {"k": hostile}, "task": "classification",
              "window": {"kind": "tumbling", "name": "tumbling_1h", "start": 0, "end": 3600, "size_s": 3600},
              "n": 1, "predictions": 1, "label_coverage": 1.0, "metrics": {"accuracy": 1.0}, "final": True}
    alert = {"alertname": "A", "status": "firing", "labels": {"model": hostile, "model_version": hostile},
             "starts_at": "1970-01-01T00:00:00Z", "annotations": {"summary": hostile, "description": hostile}}
    page = build_html(Inputs(metrics=[record, {**record, "segment": {}}], alerts=[alert]))
    assert "<img" not in page and page.count("</script>") == page.count("<script")


def test_a_page_plots_by_default_the_figures_its_records_carry() -> None:
    from stream.report.charts import default_metrics

    def records(*names: str) -> list[dict[str, Any]]:
        return [{"metrics": dict.fromkeys(names, 0.5)}]

    assert default_metrics("classification", records("accuracy", "f1_macro", "roc_auc")) == (
        "accuracy", "f1_macro", "roc_auc")
    assert default_metrics("classification", records("accuracy", "f1_macro", "roc_auc_ovr_macro")) == (
        "accuracy", "f1_macro", "roc_auc_ovr_macro")  # more than two classes
    assert default_metrics("classification", records("accuracy", "f1_macro")) == ("accuracy", "f1_macro")  # no scores
    assert default_metrics("regression", records("mae", "rmse", "r2")) == ("mae", "rmse", "r2")


def test_figures_of_sampled_requests_say_so_with_their_standard_errors() -> None:
    predictions, labels = streams(Scenario(pairs=3000, rate_per_s=0.5, label_delay_mean_s=600.0))
    result = Monitor(config={"windows": ["tumbling 1d", "cumulative"], "sample": 0.5,
                             "source": {"predictions": predictions, "labels": labels}}).execute()
    assert result is not None
    page = build_html(Inputs(metrics=result.metrics))
    assert 'id="sampled"' in page and "<code>sample</code>: 0.5" in page
    latest = [r for r in result.metrics if r["final"] and r["window"]["name"] == "cumulative" and not r["segment"]]
    assert f"accuracy {latest[0]['metrics']['accuracy']:.4f} ± {latest[0]['standard_errors']['accuracy']:.4f}" in page
    assert 'id="sampled"' not in build_html(Inputs(metrics=[{k: v for k, v in r.items() if k != "sample_rate"}
                                                            for r in result.metrics]))
