"""docker-compose.yml and the files it mounts: every service has a health check, every mounted
file exists, and the real tools accept the Prometheus and Alertmanager configs."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from stream.config import Config

ROOT = Path(__file__).resolve().parents[2]


def compose() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())  # type: ignore[no-any-return]


def test_every_service_has_a_health_check_and_its_files() -> None:
    services = compose()["services"]
    assert set(services) == {"kafka", "worker", "producer", "prometheus", "alertmanager", "grafana"}
    for name, service in services.items():
        assert "healthcheck" in service, name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY ") and not line.startswith("COPY pyproject"):
            assert (ROOT / line.split()[1]).exists(), line


def test_the_images_mlmon_config_and_rules_load() -> None:
    config = Config.load(ROOT / "docker" / "mlmon.yaml", ROOT / "docker" / "rules.yaml")
    assert config.metrics_address == "0.0.0.0" and config.alertmanager_url
    Config.load(None, ROOT / "rules" / "default.yaml")


def test_promtool_accepts_the_compose_prometheus_config(tmp_path: Path) -> None:
    if shutil.which("promtool") is None:
        pytest.skip("promtool is not installed (scripts/ensure-system-deps installs Prometheus)")
    shutil.copy(ROOT / "docker" / "prometheus.yml", tmp_path / "prometheus.yml")
    shutil.copy(ROOT / "prometheus" / "rules.yml", tmp_path / "rules.yml")  # as mounted in the container
    run = subprocess.run(["promtool", "check", "config", str(tmp_path / "prometheus.yml")],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_amtool_accepts_the_alertmanager_config() -> None:
    if shutil.which("amtool") is None:
        pytest.skip("amtool is not installed (scripts/ensure-system-deps installs Alertmanager)")
    run = subprocess.run(["amtool", "check-config", str(ROOT / "docker" / "alertmanager.yml")],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
