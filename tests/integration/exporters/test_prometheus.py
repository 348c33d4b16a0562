"""`mlmon demo` scraped by a real Prometheus server: PromQL returns what scikit-learn computes."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from sklearn import metrics as skm

from kafka_broker import free_port
from stream.demo import demo_scenario
from stream.simulate import draws

PAIRS = 20_000
ROOT = Path(__file__).resolve().parents[3]


def prometheus_query(port: int, query: str) -> list[dict[str, object]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    with urllib.request.urlopen(url, timeout=5) as response:
        body = json.load(response)
    assert body["status"] == "success", body
    return body["data"]["result"]  # type: ignore[no-any-return]


@pytest.fixture
def demo_and_prometheus(tmp_path: Path):  # type: ignore[no-untyped-def]
    if shutil.which("prometheus") is None or shutil.which("promtool") is None:
        pytest.skip("Prometheus is not installed (scripts/ensure-system-deps installs it)")
    metrics_port, prom_port = free_port(), free_port()
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"scrape_configs: [{{job_name: mlmon-demo, static_configs: [{{targets: ['127.0.0.1:{metrics_port}']}}]}}]\n"
    )
    prom = subprocess.Popen(
        ["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{prom_port}"],
        stdout=(tmp_path / "prometheus.log").open("wb"), stderr=subprocess.STDOUT)
    demo = subprocess.Popen(
        [sys.executable, "-m", "stream.cli", "demo", "--pairs", str(PAIRS), "--duration", "12",
         "--metrics-port", str(metrics_port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        yield demo, metrics_port, prom_port
    finally:
        for proc in (demo, prom):
            proc.terminate()
            proc.wait(timeout=30)


def test_promql_accuracy_equals_sklearn_and_promtool_accepts_the_scrape(demo_and_prometheus) -> None:  # type: ignore[no-untyped-def]
    demo, metrics_port, prom_port = demo_and_prometheus
    first_line = demo.stdout.readline()
    assert f"http://127.0.0.1:{metrics_port}/metrics" in first_line
    lines = [first_line]
    for line in demo.stdout:  # the replay ends with the join-health line; /metrics stays up a little longer
        lines.append(line)
        if line.startswith("join health"):
            break
    scrape = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read()
    check = subprocess.run(["promtool", "check", "metrics"], input=scrape, capture_output=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    pairs = [(d.label["label"], d.prediction["prediction"]) for d in draws(demo_scenario(PAIRS)) if d.label]
    expected = skm.accuracy_score([t for t, _ in pairs], [p for _, p in pairs])
    query = 'mlmon_model_accuracy_ratio{window="cumulative", segment=""}'
    deadline, got = time.monotonic() + 20, None
    while time.monotonic() < deadline:
        result = prometheus_query(prom_port, query)
        if result and abs(float(result[0]["value"][1]) - expected) < 1e-9:  # type: ignore[index]
            got = float(result[0]["value"][1])  # type: ignore[index]
            break
        time.sleep(0.5)
    assert got == pytest.approx(expected, abs=1e-9), "".join(lines)
    assert prometheus_query(prom_port, "mlmon_process_resident_memory_bytes")  # beside the pending requests
    dashboard = json.loads((ROOT / "grafana" / "dashboards" / "mlmon.json").read_text())
    for panel in dashboard["panels"]:  # each panel's query is PromQL this Prometheus runs
        for target in panel.get("targets", []):
            prometheus_query(prom_port, re.sub(r"\$\w+", ".*", target["expr"]))
    assert any(line.startswith("[FIRING") for line in lines) and any(line.startswith("[RESOLVED") for line in lines)
    assert demo.wait(timeout=30) == 0
