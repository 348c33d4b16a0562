"""Settings: a YAML file, then environment overrides (``MLMON_<KEY>``), then explicit arguments.

>>> Config.from_mapping({"join_ttl": "2h", "windows": ["tumbling 1h", "cumulative"]}).join_ttl_s
7200
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from stream.core.custom import parse_custom_metrics
from stream.core.detectors import DetectorRule
from stream.core.join import DUPLICATE_LABEL_RULES
from stream.core.rules import Rule
from stream.core.settings import DEFAULT_WINDOWS, MAX_CLASSES, Settings
from stream.core.windows import WindowSpec, parse_duration_s
from stream.errors import ConfigError

__all__ = ["DEFAULT_WINDOWS", "MAX_CLASSES", "Config", "bootstrap_servers", "parse_rules", "read_yaml"]

STRUCTURED = ("rules", "windows", "regression_models", "positive_classes", "custom_metrics")  # not scalars


@dataclass
class Config(Settings):
    """The core's settings (:class:`stream.core.settings.Settings`), the inputs', the worker's and Kafka's."""

    max_record_bytes: int = 64 * 1024
    max_future_s: int = 3600  # records stamped further ahead are dead letters (0: no limit; see core.clock)
    flush_interval_ms: int = 250  # wall time between the worker's partials: bounds alert latency
    idle_timeout_s: int = 60  # wall time after which an input partition with no records stops holding windows open
    checkpoint_interval_s: int = 300  # wall time between saves of a partition's engine (0: none; kafka.checkpoints)
    # Kafka (used by the worker only)
    broker: str = "127.0.0.1:9092"
    predictions_topic: str = "predictions"
    labels_topic: str = "labels"
    metrics_topic: str = "model-metrics"
    alerts_topic: str = "model-alerts"
    dead_letters_topic: str = "mlmon-dead-letters"
    health_topic: str = "mlmon-health"
    partials_topic: str = "mlmon-partials"  # internal: per-partition window states, keyed by model
    repartition_topic: str = "mlmon-repartition"  # internal: input records forwarded to their request's partition
    partitions: int = 4
    replication_factor: int = 1
    kafka_options: dict[str, str] = field(default_factory=dict)  # extra librdkafka settings (SASL, SSL...)
    app_id: str = "mlmon"
    data_dir: str = "mlmon-data"
    metrics_port: int = 9464  # Prometheus /metrics of the worker; 0 turns it off
    metrics_address: str = "127.0.0.1"  # localhost unless configured otherwise
    # Alert delivery beyond the alerts topic (both optional)
    alertmanager_url: str = ""  # e.g. http://127.0.0.1:9093: alerts go to its v2 API
    webhook_url: str = ""  # every alert event is POSTed there as JSON

    @classmethod
    def from_mapping(cls, raw: dict[str, Any]) -> Config:
        config = cls()
        known = {f.name for f in fields(cls)}
        for key, value in raw.items():
            if key in STRUCTURED:
                continue
            if key == "kafka_options":
                if not isinstance(value, dict):
                    raise ConfigError("'kafka_options' must be a mapping of librdkafka settings")
                config.kafka_options = {str(k): str(v) for k, v in value.items()}
                continue
            if key == "broker":
                value = bootstrap_servers(value)
            name = key if key in known else f"{key}_s" if f"{key}_s" in known else None
            if name is None:
                raise ConfigError(f"unknown setting '{key}' (known: {', '.join(sorted(known))})")
            current = getattr(config, name)
            if name == "max_future_s" and value in (0, "0", "off"):
                value = 0  # no limit
            elif name.endswith("_s"):
                value = parse_duration_s(value)
            elif isinstance(current, int):
                if isinstance(value, str) and value.isdigit():
                    value = int(value)
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise ConfigError(f"setting '{key}' must be a whole number, got {value!r}")
            setattr(config, name, value)
        if config.duplicate_labels not in DUPLICATE_LABEL_RULES:
            raise ConfigError(f"'duplicate_labels' is one of {', '.join(DUPLICATE_LABEL_RULES)}, "
                              f"got {config.duplicate_labels!r}")
        config.sample = _sample_rate(config.sample)
        config.join_memory_mb = _memory_mb(config.join_memory_mb)
        if config.max_classes > MAX_CLASSES:
            raise ConfigError(f"'max_classes' is at most {MAX_CLASSES:,}, got {config.max_classes:,}")
        if "windows" in raw:
            if not isinstance(raw["windows"], list) or not raw["windows"]:
                raise ConfigError("'windows' must be a non-empty list")
            config.windows = [WindowSpec.parse(w) for w in raw["windows"]]
        if len({w.name for w in config.windows}) != len(config.windows):
            raise ConfigError("'windows' lists the same window twice")
        config.regression_models = [str(m) for m in raw.get("regression_models", [])]
        config.rules, config.detectors = parse_rules(raw.get("rules", []))
        config.check_rules()
        positive = raw.get("positive_classes", {})
        if not isinstance(positive, dict):
            raise ConfigError("'positive_classes' must be a mapping of model glob -> class name")
        config.positive_classes = {str(k): str(v) for k, v in positive.items()}
        config.custom_metrics = parse_custom_metrics(raw.get("custom_metrics", []))
        return config

    def check_rules(self) -> None:
        names = {w.name for w in self.windows}
        for rule in self.rules:
            if rule.window not in names:
                raise ConfigError(f"rule {rule.name}: window '{rule.window}' is not configured {sorted(names)}")

    @classmethod
    def load(cls, path: str | Path | None = None, rules_path: str | Path | None = None) -> Config:
        raw = read_yaml(path) if path else {}
        for f in fields(cls):
            env = os.environ.get(f"MLMON_{f.name.upper()}")
            if env is not None and f.name not in (*STRUCTURED, "kafka_options"):
                raw[f.name] = env
        config = cls.from_mapping(raw)
        if rules_path:
            config.rules, config.detectors = parse_rules(read_yaml(rules_path).get("rules", []))
            config.check_rules()
        return config


def bootstrap_servers(value: Any) -> str:
    """Kafka's bootstrap list (``host:port,host:port``) from that or faust's form
    (``kafka://host:port``, several separated by commas or semicolons).

    >>> bootstrap_servers("kafka://k1:9092;kafka://k2:9092")
    'k1:9092,k2:9092'
    """
    servers = [s.strip() for s in str(value).replace(";", ",").split(",") if s.strip()]
    servers = [s[len("kafka://"):] if s.lower().startswith("kafka://") else s for s in servers]
    if not servers or any("://" in s or not s for s in servers):
        raise ConfigError(f"broker {value!r}: expected host:port (several separated by commas), or kafka://host:port")
    return ",".join(servers)


def read_yaml(path: str | Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping at the top level")
    return raw


def parse_rules(raw: Any) -> tuple[list[Rule], list[DetectorRule]]:
    """A rules list: threshold rules, and rules with a ``detector`` (see core.detectors)."""
    if not isinstance(raw, list):
        raise ConfigError("'rules' must be a list")
    rules = [Rule.parse(r) for r in raw if not (isinstance(r, dict) and "detector" in r)]
    detectors = [DetectorRule.parse(r) for r in raw if isinstance(r, dict) and "detector" in r]
    if len({r.name for r in rules} | {d.name for d in detectors}) != len(raw):
        raise ConfigError("two rules share a name")
    return rules, detectors


def _memory_mb(value: Any) -> float:
    """``join_memory_mb``: mebibytes for pending requests in memory, a positive number."""
    try:
        mb = float(value)
    except (TypeError, ValueError):
        mb = math.nan
    if isinstance(value, bool) or not math.isfinite(mb) or mb <= 0:
        raise ConfigError(f"'join_memory_mb' is the memory for pending requests in MiB, above 0, got {value!r}")
    return mb


def _sample_rate(value: Any) -> float:
    """``sample``: the fraction of requests counted, in (0, 1] (see ``stream.core.sampling``)."""
    try:
        rate = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        rate = math.nan
    if not 0.0 < rate <= 1.0:
        raise ConfigError(f"'sample' is the fraction of requests to count, above 0 and at most 1, got {value!r}")
    return rate
