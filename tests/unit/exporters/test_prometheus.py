"""The exposition's names follow the conventions, and every dashboard panel and Prometheus rule
queries names the exporter really exposes."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from stream.config import Config
from stream.core.engine import Engine
from stream.core.records import parse_label, parse_prediction
from stream.demo import DEMO_SETTINGS, demo_scenario
from stream.exporters.prometheus import RATIO_METRICS, EngineCollector, for_engine, registry_for
from stream.simulate import arrivals

ROOT = Path(__file__).resolve().parents[3]
NAME = re.compile(r"\bmlmon[_:][A-Za-z0-9_:]*")


@pytest.fixture(scope="module")
def exposition() -> str:
    engine = Engine(Config.from_mapping(DEMO_SETTINGS))
    collector = for_engine(engine)
    for _, kind, raw in arrivals(demo_scenario(20_000)):
        engine.receive(parse_prediction(raw) if kind == 0 else parse_label(raw))
        collector.observe(engine.metric_records)
        engine.metric_records.clear()
    return generate_latest(registry_for(collector)).decode()  # as /metrics serves it


def sample_names(text: str) -> set[str]:
    return {s.name for family in text_string_to_metric_families(text) for s in family.samples}


def recorded_names() -> set[str]:
    groups = yaml.safe_load((ROOT / "prometheus" / "rules.yml").read_text())["groups"]
    return {rule["record"] for group in groups for rule in group["rules"] if "record" in rule}


def test_names_follow_the_conventions(exposition: str) -> None:
    for family in text_string_to_metric_families(exposition):
        assert family.name.startswith("mlmon_"), family.name
        if family.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in family.samples), family.name
        for sample in family.samples:
            assert "request_id" not in sample.labels
    names = sample_names(exposition)
    assert {"mlmon_model_accuracy_ratio", "mlmon_confusion_matrix_pairs_total", "mlmon_label_lag_seconds_bucket",
            "mlmon_alert_firing", "mlmon_pairs_total", "mlmon_pending_requests"} <= names


def test_promtool_accepts_the_exposition(exposition: str) -> None:
    if shutil.which("promtool") is None:
        pytest.skip("promtool is not installed (scripts/ensure-system-deps installs Prometheus)")
    check = subprocess.run(["promtool", "check", "metrics"], input=exposition.encode(), capture_output=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_every_dashboard_query_uses_exposed_or_recorded_names(exposition: str) -> None:
    known = sample_names(exposition) | recorded_names()
    known |= {f"mlmon_model_{name}_ratio" for name in RATIO_METRICS}  # multiclass ones too: the demo is binary
    dashboard = json.loads((ROOT / "grafana" / "dashboards" / "mlmon.json").read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    queries += [v["definition"] for v in dashboard["templating"]["list"]]
    assert len(queries) > 10
    for query in queries:
        for name in NAME.findall(query):
            assert name in known, f"{name} in {query!r} is not exposed"


def test_every_prometheus_rule_uses_exposed_or_recorded_names(exposition: str) -> None:
    known = sample_names(exposition) | recorded_names()
    groups = yaml.safe_load((ROOT / "prometheus" / "rules.yml").read_text())["groups"]
    for rule in (r for g in groups for r in g["rules"]):
        for name in NAME.findall(rule["expr"]):
            assert name in known, f"{name} in {rule.get('alert') or rule.get('record')}"
        if "alert" in rule:
            assert rule["alert"][0].isupper() and "severity" in rule["labels"]
            assert {"summary", "description", "runbook_url"} <= set(rule["annotations"])


def test_promtool_rule_unit_tests_pass() -> None:
    if shutil.which("promtool") is None:
        pytest.skip("promtool is not installed (scripts/ensure-system-deps installs Prometheus)")
    for args in (["check", "rules", "rules.yml"], ["test", "rules", "tests.yml"]):
        run = subprocess.run(["promtool", *args], cwd=ROOT / "prometheus", capture_output=True, text=True)
        assert run.returncode == 0, run.stdout + run.stderr


HOPPING = {"kind": "hopping", "size": "2h", "hop": "15m"}


def overall_cells(collector: EngineCollector, *names: str) -> dict[tuple[str, str, str], float]:
    """The series without a segment of the counters ``names``, by (name, actual, predicted)."""
    registry = CollectorRegistry()
    registry.register(collector)
    return {(s.name, s.labels["actual"], s.labels["predicted"]): s.value
            for family in text_string_to_metric_families(generate_latest(registry).decode())
            for s in family.samples if s.name in names and not s.labels["segment"]}


@pytest.mark.parametrize("windows", [[HOPPING, "tumbling 1d"], ["rolling 2", "cumulative"], ["tumbling 1h", HOPPING]])
def test_confusion_counters_count_each_pair_once_whatever_the_windows(windows: list[object]) -> None:
    engine = Engine(Config.from_mapping({"windows": windows, "emit_interval": "1m", "join_ttl": "1h"}))
    start = 1_767_225_600
    for i in range(20):
        ts = start + 600 * i
        engine.receive(parse_prediction({"request_id": f"r{i}", "model": "m", "timestamp": ts, "prediction": "a"}))
        engine.receive(parse_label({"request_id": f"r{i}", "timestamp": ts + 5, "label": "a" if i % 4 else "b"}))
    engine.finish()
    collector = for_engine(engine)
    collector.observe(engine.metric_records)
    counters = overall_cells(collector, "mlmon_confusion_matrix_pairs_total")
    assert counters == {("mlmon_confusion_matrix_pairs_total", "a", "a"): 15,
                        ("mlmon_confusion_matrix_pairs_total", "b", "a"): 5}


def test_a_revised_pair_is_counted_as_it_left_its_cell() -> None:
    engine = Engine(Config.from_mapping({"windows": ["tumbling 1h"], "emit_interval": "1m"}))
    collector = for_engine(engine)
    ts = 1_767_225_600
    for obj in ({"request_id": "r", "model": "m", "timestamp": ts, "prediction": "a"},
                {"request_id": "r", "timestamp": ts + 120, "label": "b"},
                {"request_id": "x", "model": "m", "timestamp": ts + 300, "prediction": "a"},  # a flush between
                {"request_id": "r", "timestamp": ts + 60, "label": "a"}):  # earlier: wins, revises the pair
        engine.receive(parse_prediction(obj) if "prediction" in obj else parse_label(obj))
        collector.observe(engine.metric_records)
        engine.metric_records.clear()
    engine.finish()
    collector.observe(engine.metric_records)
    counters = overall_cells(collector, "mlmon_confusion_matrix_pairs_total",
                             "mlmon_confusion_matrix_revised_pairs_total")
    assert counters == {("mlmon_confusion_matrix_pairs_total", "a", "a"): 1,
                        ("mlmon_confusion_matrix_pairs_total", "b", "a"): 1,
                        ("mlmon_confusion_matrix_revised_pairs_total", "a", "a"): 0,
                        ("mlmon_confusion_matrix_revised_pairs_total", "b", "a"): 1}


def test_a_sampled_engine_states_its_rate_what_it_left_out_and_the_accuracy_s_standard_error() -> None:
    engine = Engine(Config.from_mapping({**DEMO_SETTINGS, "sample": 0.25}))
    collector = for_engine(engine)
    for _, kind, raw in arrivals(demo_scenario(4_000)):
        engine.receive(parse_prediction(raw) if kind == 0 else parse_label(raw))
    collector.observe(engine.metric_records)
    registry = CollectorRegistry()
    registry.register(collector)
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(generate_latest(registry).decode())
               for s in family.samples}
    assert samples[("mlmon_sample_ratio", ())] == 0.25
    for source in ("predictions", "labels"):
        left_out = getattr(engine.health, f"unsampled_{source}")
        assert left_out > 0 and samples[("mlmon_unsampled_records_total", (("source", source),))] == left_out
    errors = {labels: value for (name, labels), value in samples.items()
              if name == "mlmon_model_accuracy_standard_error_ratio"}
    assert errors and all(0 <= value < 0.5 for value in errors.values())
    record = collector.latest[next(iter(collector.latest))]
    assert errors[tuple(sorted(zip(["model", "model_version", "segment", "window"], next(iter(collector.latest)),
                                   strict=True)))] == record["standard_errors"]["accuracy"]


def test_served_metrics_include_the_process_s_memory_beside_the_pending_requests() -> None:
    import urllib.request

    from stream.exporters.prometheus import serve

    engine = Engine(Config.from_mapping(DEMO_SETTINGS))
    port = serve(for_engine(engine), 0)
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    families = {family.name: family for family in text_string_to_metric_families(text)}
    assert families["mlmon_process_resident_memory_bytes"].samples[0].value > 10 << 20
    assert "mlmon_pending_requests" in families
    for family in families.values():  # the process collector's names follow the conventions too
        assert family.name.startswith("mlmon_")
        assert family.type != "counter" or all(s.name.endswith(("_total", "_created")) for s in family.samples)


def test_an_engine_with_state_on_disk_says_how_much_and_how_long_its_reads_take() -> None:
    engine = Engine(Config.from_mapping({**DEMO_SETTINGS, "join_memory_mb": 0.01}))  # about 50 entries
    collector = for_engine(engine)
    for _, kind, raw in arrivals(demo_scenario(4_000)):
        engine.receive(parse_prediction(raw) if kind == 0 else parse_label(raw))
    registry = CollectorRegistry()
    registry.register(collector)
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(generate_latest(registry).decode())
               for s in family.samples}
    status = engine.store_status()
    assert status.pending[0] > 0 and status.disk_bytes > 0
    assert samples[("mlmon_pending_on_disk_requests", (("side", "prediction"),))] == status.pending[0]
    assert samples[("mlmon_pending_on_disk_requests", (("side", "label"),))] == status.pending[1]
    assert samples[("mlmon_join_store_bytes", ())] == status.disk_bytes
    assert samples[("mlmon_join_store_read_seconds_count", ())] == sum(status.reads.counts) > 0
    assert samples[("mlmon_pending_requests", (("side", "prediction"),))] >= status.pending[0]
