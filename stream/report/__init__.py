"""One self-contained HTML page of a backtest or a live run: a summary table, then for each model
version its metrics over event time with its alerts shaded, its latest confusion matrix and its
calibration.

The page needs no network: plotly.js (from the ``plotly`` package) is embedded once, with the
figures' JSON. Opened in a browser, it draws every chart and records what it drew on its
``<body>`` (``data-charts``, ``data-points``, ``data-errors``), which the browser tests read.

>>> from stream.report.inputs import Inputs
>>> page = build_html(Inputs(metrics=[{"model": "m", "model_version": "v1", "segment": {}, "task": "classification",
...     "window": {"kind": "tumbling", "name": "tumbling_1h", "start": 0, "end": 3600, "size_s": 3600},
...     "n": 3, "predictions": 3, "label_coverage": 1.0, "metrics": {"accuracy": 2 / 3}, "final": True}]))
>>> "tumbling_1h" in page and "plotly" in page
True
"""

from __future__ import annotations

import html
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson

from stream.report.charts import (
    alert_episodes,
    confusion_figure,
    default_metrics,
    latest_final,
    reliability_figure,
    series_figure,
    when,
)
from stream.report.inputs import Inputs, read_files, read_topics

__all__ = ["Inputs", "build_html", "read_files", "read_topics", "write_report"]

HEALTH_COLUMNS = ("pairs", "expired_predictions", "late_labels", "orphaned_labels", "duplicate_labels")

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 36px; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0 16px; }
th, td { border: 1px solid #ddd; padding: 4px 8px; text-align: right; }
th { background: #f4f4f4; } td.name { text-align: left; } .firing { color: #b22222; font-weight: 600; }
.problems { color: #8a6d3b; background: #fcf8e3; padding: 8px; font-size: 13px; }
.row { display: flex; gap: 16px; flex-wrap: wrap; } .row > div { flex: 1 1 420px; }
"""

_CATCH = """
var mlmonErrors = [];
window.addEventListener("error", function (e) { mlmonErrors.push(String(e.message)); });
(function (log) {
  console.error = function () {
    mlmonErrors.push(Array.prototype.join.call(arguments, " "));
    log.apply(console, arguments);
  };
})(console.error);
"""

_DRAW = """
(function () {
  var errors = mlmonErrors;
  var figures = JSON.parse(document.getElementById("mlmon-figures").textContent);
  var charts = 0, points = 0;
  Object.keys(figures).forEach(function (id) {
    try {
      var fig = figures[id];
      Plotly.newPlot(id, fig.data, fig.layout, {displaylogo: false, responsive: true});
      charts += 1;
      fig.data.forEach(function (t) { points += (t.x || t.z || []).length; });
    } catch (e) { errors.push(id + ": " + e); }
  });
  document.body.dataset.charts = charts;
  document.body.dataset.points = points;
  window.setTimeout(function () { document.body.dataset.errors = JSON.stringify(errors); }, 0);
})();
"""


def build_html(inputs: Inputs, metrics: tuple[str, ...] | None = None, title: str = "mlmon report") -> str:
    """The page for ``inputs``; ``metrics``: the figures to plot over time (default: accuracy,
    f1_macro, roc_auc; mae, rmse, r2 for regression models)."""
    from plotly.offline import get_plotlyjs

    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for record in inputs.metrics:
        groups[(record["model"], record["model_version"])].append(record)
    end = max((when(r["window"]["end"]) for r in inputs.metrics if "end" in r["window"]), default=None)
    figures: dict[str, Any] = {}
    sections: list[str] = []
    summary: list[str] = []
    for index, ((model, version), records) in enumerate(sorted(groups.items())):
        task = records[0]["task"]
        latest = latest_final(records)
        episodes = alert_episodes(inputs.alerts, model, version, end or "")
        firing = sorted({e["name"] for e in episodes if e["firing"]})
        chosen = metrics or default_metrics(task, records)
        summary.append(_summary_row(model, version, task, latest, chosen, firing, len(episodes)))
        parts = [f'<h2 id="model-{index}">{_e(model)} {_e(version)} <small>({_e(task)})</small></h2>']
        series = series_figure(records, tuple(chosen), episodes)
        if series is not None:
            figures[f"series-{index}"] = series
            parts.append(f'<div id="series-{index}" class="chart"></div>')
        else:
            parts.append("<p>No timed windows (tumbling or hopping) to plot over time: the summary above "
                         "shows the latest figures.</p>")
        row = []
        for kind, build in (("confusion", confusion_figure), ("reliability", reliability_figure)):
            figure = build(latest) if latest is not None else None
            if figure is not None:
                figures[f"{kind}-{index}"] = figure
                row.append(f'<div id="{kind}-{index}" class="chart"></div>')
        if row:
            parts.append(f'<div class="row">{"".join(row)}</div>')
        sections.append("\n".join(parts))
    return _page(title, inputs, summary, sections, figures, get_plotlyjs())


def _summary_row(model: str, version: str, task: str, latest: dict[str, Any] | None, chosen: tuple[str, ...],
                 firing: list[str], episodes: int) -> str:
    figures = latest["metrics"] if latest else {}
    errors = latest.get("standard_errors", {}) if latest else {}
    cells = "<br>".join(f"{_e(m)} {_fmt(figures.get(m))}"
                        + (f" ± {_fmt(errors[m])}" if isinstance(errors.get(m), float) else "") for m in chosen)
    window = "" if latest is None else _e(latest["window"]["name"]) + (
        f" from {when(latest['window']['start'])}" if "start" in latest["window"] else "")
    alerts = f'<span class="firing">{_e(", ".join(firing))}</span>' if firing else "none firing"
    return (f'<tr><td class="name">{_e(model)}</td><td class="name">{_e(version)}</td><td class="name">{_e(task)}'
            f'</td><td class="name">{window}</td><td>{latest["n"] if latest else ""}</td><td class="name">{cells}</td>'
            f'<td class="name">{alerts} ({episodes} in all)</td></tr>')


def _page(title: str, inputs: Inputs, summary: list[str], sections: list[str], figures: dict[str, Any],
          plotly_js: str) -> str:
    health = ""
    if inputs.health:
        cells = "".join(f"<td>{inputs.health.get(k, '')}</td>" for k in HEALTH_COLUMNS)
        dead = "" if inputs.dead_letters is None else str(inputs.dead_letters)
        health = (f'<table id="health"><tr>{"".join(f"<th>{_e(k)}</th>" for k in HEALTH_COLUMNS)}'
                  f"<th>dead_letters</th></tr><tr>{cells}<td>{dead}</td></tr></table>")
    problems = ""
    if inputs.skipped:
        named = "".join(f"<li>{_e(p)}</li>" for p in inputs.problems)
        more = inputs.skipped - len(inputs.problems)
        problems = (f'<div class="problems" id="problems">{inputs.skipped} input lines or records could not be '
                    f"used and are left out:<ul>{named}</ul>{f'and {more} more.' if more > 0 else ''}</div>")
    data = orjson.dumps(figures).decode().replace("</", "<\\/")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title><style>{_STYLE}</style>
<script>{_CATCH}</script>
<script>{plotly_js}</script></head>
<body><h1>{_e(title)}</h1>{problems}
<h2>Summary</h2>
<table id="summary"><tr><th>model</th><th>version</th><th>task</th><th>latest final window</th><th>n</th>
<th>its figures</th><th>alerts</th></tr>
{"".join(summary)}</table>
<p>Times are UTC, in event time; shaded spans are alerts, from firing to resolved.</p>{_sampled(inputs)}
{health}
{"".join(sections)}
<script type="application/json" id="mlmon-figures">{data}</script>
<script>{_DRAW}</script>
</body></html>
"""


def _sampled(inputs: Inputs) -> str:
    """What the figures stand for when they are of sampled requests (``sample``)."""
    rates = sorted({r["sample_rate"] for r in inputs.metrics if "sample_rate" in r})
    if not rates:
        return ""
    shares = ", ".join(f"{rate:.4g}" for rate in rates)
    return (f'<p id="sampled">Figures are of the requests sampled by request-id hash (<code>sample</code>: '
            f"{_e(shares)}), not of every request; ± is one standard error as an estimate of every "
            "request's figure.</p>")


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) and not isinstance(value, bool) else "n/a"


def _e(text: Any) -> str:
    return html.escape(str(text))


def write_report(path: Path, inputs: Inputs, metrics: tuple[str, ...] | None = None,
                 title: str = "mlmon report") -> Path:
    """Write the page for ``inputs`` to ``path``; return it."""
    path = Path(path)
    path.write_text(build_html(inputs, metrics, title), encoding="utf-8")
    return path
