"""Custom metrics: a user's own figure of a window, by expression or by Python function, computed
wherever built-in metrics are (metric records, Prometheus, alert rules, the API).

Expressions are evaluated by simpleeval (a sandboxed evaluator of Python expressions: no
attribute access, no imports, bounded powers), never ``eval``. They see ``tp``, ``fp``, ``fn``,
``tn`` and ``support`` (each indexed by class name; a class the window has not seen counts 0),
``n``, and the window's built-in metrics by name (``accuracy``, ``f1_macro``, ``roc_auc``...);
regression models see ``n``, ``mae``, ``rmse``, ``r2`` and ``mean_error``. A function is any
importable callable ``(matrix, classes) -> float`` (the confusion matrix as numpy, rows actual,
columns predicted), or, for a regression model, ``(figures) -> float`` with those names; it may
also be named by an entry point of the group ``mlmon.metrics``.

A definition that does not parse, names something unknown, divides by zero or cannot be imported
is refused when the configuration is read. At run time a division by zero, or a figure the window
lacks (``roc_auc`` without scores), yields null; a function that raises is logged once per metric
and yields null.

>>> metric = CustomMetric.parse({"name": "cost", "expression": "500 * fn['1'] + 5 * fp['1']"}, 0)
>>> import numpy as np
>>> metric.value(np.array([[90, 4], [2, 4]]), ["0", "1"], {"accuracy": 0.94})
1020.0
>>> CustomMetric.parse({"name": "bad", "expression": "tp['1'] / nope"}, 0)  # doctest: +ELLIPSIS
Traceback (most recent call last):
stream.core.errors.ConfigError: custom metric bad: cannot evaluate "tp['1'] / nope": NameNotDefined: 'nope' is not ...
"""

from __future__ import annotations

import fnmatch
import importlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

import numpy as np
import numpy.typing as npt
from simpleeval import InvalidExpression, SimpleEval

from stream.core.errors import ConfigError

__all__ = ["ENTRY_POINT_GROUP", "CustomMetric", "MetricBook", "parse_custom_metrics"]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "mlmon.metrics"
CLASSIFICATION_NAMES = (
    "accuracy", "balanced_accuracy", "precision_macro", "precision_micro", "precision_weighted", "recall_macro",
    "recall_micro", "recall_weighted", "f1_macro", "f1_micro", "f1_weighted", "mcc", "cohen_kappa", "log_loss",
    "brier", "roc_auc", "roc_auc_ovr_macro", "roc_auc_error_bound", "average_precision", "average_precision_macro",
    "average_precision_error_bound", "ece",
)
PER_CLASS_NAMES = ("tp", "fp", "fn", "tn", "support", "precision", "recall", "f1")
REGRESSION_NAMES = ("mae", "rmse", "r2", "mean_error")
# Start-up check values: unlike 0 or 1, these make a denominator zero only where it always is.
_PROBE_COUNT, _PROBE_FIGURE = 7, 0.37


class _PerClass(dict[str, Any]):
    """A per-class figure: a class the window has not seen counts 0."""

    def __missing__(self, key: str) -> int:
        return 0


@dataclass
class CustomMetric:
    name: str
    models: list[str] = field(default_factory=lambda: ["*"])
    expression: str | None = None
    function: Callable[..., Any] | None = None
    _failed: bool = False

    @classmethod
    def parse(cls, raw: Any, i: int) -> CustomMetric:
        where = f"custom_metrics[{i}]"
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str) or not raw["name"].isidentifier():
            raise ConfigError(f"{where}: 'name' is required, a name such as fraud_cost")
        name = raw["name"]
        unknown = set(raw) - {"name", "models", "expression", "function", "description"}
        if unknown:
            raise ConfigError(f"custom metric {name}: unknown key(s) {sorted(unknown)}")
        if name in CLASSIFICATION_NAMES + PER_CLASS_NAMES + REGRESSION_NAMES + ("n",):
            raise ConfigError(f"custom metric {name}: the name is a built-in metric's")
        models = raw.get("models", ["*"])
        if isinstance(models, str):
            models = [models]
        if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
            raise ConfigError(f"custom metric {name}: 'models' must be a list of globs")
        expression, function = raw.get("expression"), raw.get("function")
        if (expression is None) == (function is None):
            raise ConfigError(f"custom metric {name}: give exactly one of 'expression' and 'function'")
        metric = cls(name, models, expression=str(expression) if expression is not None else None,
                     function=_load(name, str(function)) if function is not None else None)
        if expression is not None:
            metric._check()
        return metric

    def applies(self, model: str) -> bool:
        return any(fnmatch.fnmatchcase(model, pattern) for pattern in self.models)

    def _check(self) -> None:
        """Evaluate the expression on probe values of every name, for both kinds of model: it must
        parse, name only known things, and not divide by zero, in at least one of them."""
        reasons = []
        for names in (_probe_classification(), _probe_regression()):
            try:
                _evaluate(str(self.expression), names)
                return
            except ZeroDivisionError:
                reasons.append("it divides by zero")
            except (InvalidExpression, SyntaxError, KeyError, TypeError, ValueError) as exc:
                reasons.append(f"{type(exc).__name__}: {exc}")
        raise ConfigError(f"custom metric {self.name}: cannot evaluate {self.expression!r}: {reasons[0]}")

    def value(self, counts: npt.NDArray[np.int64] | None, classes: list[str], metrics: dict[str, Any]) -> float | None:
        """The metric of one window: ``counts``/``classes`` its confusion matrix (None for a
        regression model), ``metrics`` its built-in figures."""
        try:
            if self.function is not None:
                out = self.function(counts, classes) if counts is not None else self.function(metrics)
            else:
                out = _evaluate(str(self.expression), _names(counts, classes, metrics))
            out = float(out)
            return out if math.isfinite(out) else None
        except ZeroDivisionError:
            return None
        except Exception as exc:
            if self.expression is not None and isinstance(exc, InvalidExpression | KeyError | TypeError):
                return None  # a figure this window lacks (roc_auc without scores)
            if not self._failed:
                self._failed = True
                log.warning("custom metric %s failed, its value is null (logged once): %r", self.name, exc)
            return None


def _evaluate(expression: str, names: dict[str, Any]) -> Any:
    return SimpleEval(names=names, functions={"abs": abs, "min": min, "max": max, "sqrt": math.sqrt,
                                              "log": math.log}).eval(expression)


def _names(counts: npt.NDArray[np.int64] | None, classes: list[str], metrics: dict[str, Any]) -> dict[str, Any]:
    names = {k: (_PerClass(v) if isinstance(v, dict) else v) for k, v in metrics.items() if k != "calibration"}
    if counts is None:
        return names  # a regression model's figures, with n
    cells = counts.astype(np.int64)
    n = int(cells.sum())
    tp = np.diag(cells)
    fp, fn = cells.sum(axis=0) - tp, cells.sum(axis=1) - tp
    for key, column in (("tp", tp), ("fp", fp), ("fn", fn), ("tn", n - tp - fp - fn)):
        names[key] = _PerClass(zip(classes, column.tolist(), strict=True))
    names["n"] = n
    return names


def _probe_classification() -> dict[str, Any]:
    names: dict[str, Any] = dict.fromkeys(CLASSIFICATION_NAMES, _PROBE_FIGURE)
    for key in PER_CLASS_NAMES:
        names[key] = _Probe(_PROBE_COUNT)
    names["n"] = 4 * _PROBE_COUNT
    return names


def _probe_regression() -> dict[str, Any]:
    return {"n": _PROBE_COUNT, **dict.fromkeys(REGRESSION_NAMES, _PROBE_FIGURE)}


class _Probe(dict[str, Any]):
    """A per-class name at start-up: every class has the probe value."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def __missing__(self, key: str) -> float:
        return self.value


def _load(name: str, target: str) -> Callable[..., Any]:
    """``package.module:callable``, or the name of an entry point of the group ``mlmon.metrics``."""
    try:
        if ":" not in target:
            found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == target]
            if not found:
                raise LookupError(f"no entry point {target!r} in the group {ENTRY_POINT_GROUP!r}")
            loaded = found[0].load()
        else:
            module, _, attribute = target.partition(":")
            loaded = importlib.import_module(module)
            for part in attribute.split("."):
                loaded = getattr(loaded, part)
    except Exception as exc:
        raise ConfigError(f"custom metric {name}: cannot import {target!r}: {type(exc).__name__}: {exc}") from exc
    if not callable(loaded):
        raise ConfigError(f"custom metric {name}: {target!r} is not callable")
    return loaded  # type: ignore[no-any-return]


def parse_custom_metrics(raw: Any) -> list[CustomMetric]:
    if not isinstance(raw, list):
        raise ConfigError("'custom_metrics' must be a list of {name, models, expression or function}")
    metrics = [CustomMetric.parse(item, i) for i, item in enumerate(raw)]
    names = [m.name for m in metrics]
    if len(set(names)) != len(names):
        raise ConfigError(f"'custom_metrics' defines a name twice: {sorted({n for n in names if names.count(n) > 1})}")
    return metrics


class MetricBook:
    """Per model, what its figures need beyond the window's state: the positive class of a binary
    model (``positive_classes``, globs) and the custom metrics that apply."""

    def __init__(self, positive_classes: dict[str, str] | None = None, custom: list[CustomMetric] | None = None):
        self.positive_classes = dict(positive_classes or {})
        self.custom = list(custom or [])
        self._cache: dict[str, tuple[str | None, list[CustomMetric]]] = {}

    def of(self, model: str) -> tuple[str | None, list[CustomMetric]]:
        found = self._cache.get(model)
        if found is None:
            positive = next((cls for glob, cls in self.positive_classes.items() if fnmatch.fnmatchcase(model, glob)),
                            None)
            found = self._cache[model] = (positive, [m for m in self.custom if m.applies(model)])
        return found

    def add_custom(self, model: str, counts: npt.NDArray[np.int64] | None, classes: list[str],
                   metrics: dict[str, Any], n: int) -> None:
        """Add the custom metrics of ``model`` to a window's ``metrics`` (``counts`` None and
        ``classes`` empty for a regression model, whose figures are given with ``n``)."""
        custom = self.of(model)[1]
        if not custom or not metrics:
            return
        figures = metrics if counts is not None else {"n": n, **metrics}
        for metric in custom:
            metrics[metric.name] = metric.value(counts, classes, figures)
