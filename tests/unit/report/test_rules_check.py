"""``mlmon rules check``: what each rule would have raised over history, and each detector's
baseline, delay and promise, as a table and as JSON."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest
import yaml

from stream.cli import main
from tests.unit.core.test_detectors import RULE, stream


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("history")
    predictions, labels = stream(5, 60_000, 30_000, 45_000)
    paths = {"predictions": folder / "p.jsonl", "labels": folder / "l.jsonl", "rules": folder / "rules.yaml"}
    for name, rows in (("predictions", predictions), ("labels", labels)):
        paths[name].write_bytes(b"".join(orjson.dumps(row) + b"\n" for row in rows))
    threshold = {"name": "AccuracyLow", "metric": "accuracy", "window": "tumbling_1h", "below": 0.82,
                 "min_samples": 100, "segments": ["country=*"]}
    paths["rules"].write_text(yaml.safe_dump({"rules": [{**RULE, "segments": ["country=*"]}, threshold]}))
    return paths


def check(history: dict[str, Path], *extra: str) -> tuple[int, str]:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["rules", "check", "--predictions", str(history["predictions"]), "--labels",
                     str(history["labels"]), "--rules", str(history["rules"]), *extra])
    return code, out.getvalue()


@pytest.mark.slow
def test_json_names_each_series_alerts_and_the_detectors_promise(history: dict[str, Path]) -> None:
    code, out = check(history, "--json")
    assert code == 0
    found = json.loads(out)
    assert found["pairs"] == 60_000
    detectors = {item["segment"]["country"]: item for item in found["rules"] if item["rule"] == "AccuracyDrop"}
    assert set(detectors) == {"DE", "US"}
    assert [a["status"] for a in detectors["DE"]["alerts"]] == ["firing", "resolved"]
    assert detectors["US"]["alerts"] == []
    for item in detectors.values():
        d = item["detector"]
        assert abs(d["baseline"] - 0.9) < 0.01 and d["learned_from_pairs"] > 10_000
        assert d["false_alarm_pairs"] == 1_000_000 and d["state"] == "watching"
        assert d["delay_limit_pairs"] < d["expected_delay_pairs"] < 1.5 * d["delay_limit_pairs"]
    flapping = [item for item in found["rules"] if item["rule"] == "AccuracyLow"]
    assert sum(len(item["alerts"]) for item in flapping) > 4  # the threshold rule flaps where the detector does not


@pytest.mark.slow
def test_table_reads_as_sentences(history: dict[str, Path]) -> None:
    code, out = check(history)
    assert code == 0
    assert "AccuracyDrop" in out and "learned from" in out and "at most one false alarm per 1,000,000 pairs" in out
    assert "more alert events (--json lists them all)" in out
