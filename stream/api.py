"""The Python API for programs and notebooks.

>>> from stream import Monitor
>>> predictions = [{"request_id": str(i), "model": "m", "timestamp": 1.7e9 + i, "prediction": "a"} for i in range(4)]
>>> labels = [{"request_id": str(i), "timestamp": 1.7e9 + i + 1, "label": "a" if i % 2 else "b"} for i in range(4)]
>>> monitor = Monitor(config={"windows": ["cumulative"], "source": {"predictions": predictions, "labels": labels}})
>>> monitor.setup()
>>> result = monitor.execute()
>>> result.metrics[0]["metrics"]["accuracy"], result.health["pairs"]
(0.5, 4)
>>> Monitor(config={"enabled": False}).execute() is None
True

With no source, ``Monitor().execute()`` runs the embedded demonstration (the simulated model of
``mlmon demo``, in a few seconds, without a broker) and returns its results.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stream.config import Config
from stream.errors import ConfigError
from stream.replay import Collected, run

__all__ = ["DEMO_PAIRS", "MODES", "Monitor", "MonitorResult"]

log = logging.getLogger("mlmon")
MODES = ("replay", "production")
DEMO_PAIRS = 20_000  # the demonstration's predictions, as `mlmon demo` sends by default


@dataclass
class MonitorResult:
    """What a bounded run found: the final record of every window, every alert event, the health."""

    metrics: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    health: dict[str, Any] = field(default_factory=dict)

    def report(self, path: str | Path, metrics: tuple[str, ...] | None = None, title: str = "mlmon report") -> Path:
        """Write the HTML report of these results (as ``mlmon report`` makes it) to ``path``."""
        from stream.report import write_report

        return write_report(Path(path), self._inputs(), metrics, title)

    def _repr_html_(self) -> str:
        """The report, shown inline by Jupyter."""
        from stream.report import build_html

        return build_html(self._inputs())

    def _inputs(self) -> Any:
        from stream.report import Inputs

        return Inputs(metrics=list(self.metrics), alerts=list(self.alerts), health=self.health,
                      dead_letters=len(self.dead_letters))


class Monitor:
    """``Monitor(config={...})``: ``setup()`` validates and prepares, ``execute()`` runs.

    Config keys: ``enabled`` (default True), ``mode`` (``replay`` or ``production``), ``source``
    (``{"predictions": ..., "labels": ...}``, each a JSONL, CSV or Parquet file, directory or glob,
    a pandas DataFrame, an Arrow table or an iterable of dicts; ``"format"`` if the extension does
    not say; a run with a source is bounded; in replay mode without one, the demonstration's simulated model and
    settings, under any given here), ``rules`` (a list or a YAML path), and any setting of
    :class:`Config`.
    """

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        self.raw = dict(config or {})
        self.enabled = bool(self.raw.pop("enabled", True))
        self.mode = str(self.raw.pop("mode", "replay"))
        self.source = self.raw.pop("source", None)
        self.config: Config | None = None

    def setup(self) -> None:
        if not self.enabled:
            log.warning("mlmon is disabled (enabled: false): setup does nothing")
            return
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        rules = self.raw.get("rules")
        if isinstance(rules, str | Path):
            from stream.config import read_yaml

            self.raw["rules"] = read_yaml(rules).get("rules", [])
        if self.source is None and self.mode == "replay":
            self._demonstration()
        self.config = Config.from_mapping(self.raw)
        if self.mode == "production":
            from stream.kafka.admin import ensure_topics

            ensure_topics(self.config)

    def _demonstration(self) -> None:
        """No source: the simulated model of ``mlmon demo`` and its settings (those given win)."""
        from stream.demo import DEMO_SETTINGS, demo_scenario
        from stream.simulate import streams

        predictions, labels = streams(demo_scenario(DEMO_PAIRS))
        self.source = {"predictions": predictions, "labels": labels}
        self.raw = {**DEMO_SETTINGS, **self.raw}
        log.warning("mlmon: no 'source' given, so this runs the demonstration (%d simulated predictions of a "
                    "model that degrades, then recovers). Point it at real data with config={'source': "
                    "{'predictions': ..., 'labels': ...}} (JSONL paths or lists of dicts), or run the Kafka worker "
                    "with config={'mode': 'production', 'broker': ...}", len(predictions))

    def execute(self) -> MonitorResult | None:
        if not self.enabled:
            log.warning("mlmon is disabled (enabled: false): execute does nothing")
            return None
        if self.config is None:
            self.setup()
        assert self.config is not None
        if self.source is None:  # production without a source: run the worker until it is stopped
            from stream.kafka.worker import run_worker

            run_worker(self.config)
            return None
        return self._bounded(self.config)

    def _bounded(self, config: Config) -> MonitorResult:
        """The source through the replay's data path, results kept in memory."""
        engine, sink, _, _ = run(self.source.get("predictions", []), self.source.get("labels", []), config, Collected,
                                 format=self.source.get("format"), final_only=True)  # it keeps final records
        assert isinstance(sink, Collected)
        return MonitorResult(sink.metrics, sink.alerts, sink.dead_letters,
                             {**engine.health.as_dict(), "balance": engine.balance()})
