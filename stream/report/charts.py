"""Plotly figures (as the JSON plotly.js draws) of one model version's metric records.

Each figure is a plain ``{"data": [...], "layout": {...}}`` mapping: plotly.js draws it in the
browser, so building a report costs no more than writing its JSON. The values plotted are the
records' own, unrounded (``tests/unit/report`` checks every plotted point against its record).
"""

from __future__ import annotations

import math
from collections import defaultdict
from datetime import UTC, datetime
from html import escape  # plotly.js reads a subset of HTML in text: names from inputs are escaped
from typing import Any

from stream.core.keys import segment_label

__all__ = ["DEFAULT_METRICS", "Episode", "alert_episodes", "confusion_figure", "default_metrics", "epoch_s",
           "latest_final", "reliability_figure", "series_figure", "timed_finals", "when"]

DEFAULT_METRICS = {"classification": ("accuracy", "f1_macro", "roc_auc"), "regression": ("mae", "rmse", "r2")}
MULTICLASS_AUC = "roc_auc_ovr_macro"  # what a model of more than two classes has instead of roc_auc
MAX_PANELS = 8  # segment columns per model version: the overall series, then the segments with most pairs
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#17becf")
ALERT_COLOR = "rgba(214, 39, 40, 0.18)"
# Points of a line drawn as markers too, up to this many: a month of hourly windows in each of 32
# small multiples would be 24,000 SVG markers a version, which took a browser seconds to draw.
MARKERS_UP_TO = 200

Episode = dict[str, Any]  # {"name", "segment", "start", "end", "firing", "text"}


def epoch_s(value: float | str) -> float:
    """An epoch second, or an RFC 3339 time as mlmon writes it (alert events), as an epoch second."""
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() if isinstance(value, str) else value


def when(value: float | str) -> str:
    """An epoch second or an RFC 3339 time as plotly.js reads dates (UTC, no offset); the series
    give their times as epoch milliseconds, shorter in the page."""
    return datetime.fromtimestamp(epoch_s(value), UTC).strftime("%Y-%m-%d %H:%M:%S")


def timed_finals(records: list[dict[str, Any]]) -> dict[tuple[str, str, int], dict[str, Any]]:
    """The record of each window with a start and an end, by (window name, segment, start): its
    final record, else its latest revision."""
    out: dict[tuple[str, str, int], dict[str, Any]] = {}
    for record in records:
        window = record["window"]
        if "start" not in window or "end" not in window:
            continue
        key = (window["name"], segment_label(record["segment"]), int(window["start"]))
        if record["final"] or not out.get(key, {}).get("final"):
            out[key] = record
    return out


def latest_final(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The overall record to show a model version's latest state by: the latest final window of
    its smallest timed window kind, else its latest record of any kind."""
    overall = [r for r in records if not r["segment"]]
    timed = [r for r in overall if r["final"] and "end" in r["window"]]
    if timed:
        size = min(r["window"].get("size_s", 0) for r in timed)
        return max((r for r in timed if r["window"].get("size_s", 0) == size), key=lambda r: r["window"]["end"])
    return overall[-1] if overall else None


def alert_episodes(alerts: list[dict[str, Any]], model: str, version: str, end: str) -> list[Episode]:
    """Each firing of a rule on this model version, to its resolution (or ``end``, still firing)."""
    open_: dict[str, Episode] = {}
    done: list[Episode] = []
    for event in alerts:
        labels = event["labels"]
        if labels.get("model") != model or labels.get("model_version") != version:
            continue
        key = str(event.get("fingerprint", labels))
        if event["status"] == "firing" and key not in open_:
            annotations = event.get("annotations", {})
            open_[key] = {"name": event["alertname"], "segment": labels.get("segment", ""),
                          "start": when(event["starts_at"]), "end": end, "firing": True,
                          "text": f"{escape(event['alertname'])}: {escape(annotations.get('summary', ''))}<br>"
                                  f"{escape(annotations.get('description', ''))}"}
        elif event["status"] == "resolved" and key in open_:
            episode = open_.pop(key)
            episode.update(end=when(event.get("ends_at") or event["starts_at"]), firing=False)
            done.append(episode)
    return done + list(open_.values())


def default_metrics(task: str, records: list[dict[str, Any]]) -> tuple[str, ...]:
    """The figures a model's page plots when none are chosen: ``DEFAULT_METRICS`` of its task, a
    multiclass model's one-vs-rest AUC for its ROC AUC, and none that its records never carry (no
    scores, no AUC)."""
    carried = {name for record in records for name in record["metrics"]}
    chosen = [MULTICLASS_AUC if m == "roc_auc" and MULTICLASS_AUC in carried else m
              for m in DEFAULT_METRICS.get(task, DEFAULT_METRICS["classification"])]
    return tuple(m for m in chosen if m in carried)


def _number(value: Any) -> float | None:
    return value if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) else None


def series_figure(records: list[dict[str, Any]], metrics: tuple[str, ...], episodes: list[Episode]
                  ) -> dict[str, Any] | None:
    """The chosen metrics over event time (one row each, then label coverage), one line per timed
    window kind, segments as small multiples (columns), alerts as shaded spans."""
    finals = timed_finals(records)
    if not finals:
        return None
    pairs: dict[str, int] = defaultdict(int)
    for (_, segment, _), record in finals.items():
        pairs[segment] += record["n"]
    panels = ["", *sorted((s for s in pairs if s), key=lambda s: (-pairs[s], s))[:MAX_PANELS - 1]]
    window_names = sorted({name for name, _, _ in finals}, key=lambda n: min(
        r["window"].get("size_s", 0) for (w, _, _), r in finals.items() if w == n))
    rows = [*metrics, "label_coverage"]
    segments = len(pairs) - ("" in pairs)
    shown = f"overall and {len(panels) - 1} of {segments} segment values, those with most pairs" if (
        segments > len(panels) - 1) else ""
    data: list[dict[str, Any]] = []
    layout: dict[str, Any] = {"height": 170 * len(rows) + 80, "margin": {"l": 60, "r": 20, "t": 40, "b": 40},
                              "hovermode": "closest", "legend": {"orientation": "h", "y": 1.02, "yanchor": "bottom"},
                              "shapes": [], "annotations": [], "title": {"text": shown, "font": {"size": 12}}}
    gap_x, gap_y = 0.02, 0.04
    for c, segment in enumerate(panels):
        for r, metric in enumerate(rows):
            axis = r * len(panels) + c + 1
            xa, ya = f"xaxis{axis}", f"yaxis{axis}"
            layout[xa] = {"domain": [c / len(panels) + gap_x, (c + 1) / len(panels) - gap_x], "anchor": f"y{axis}",
                          "matches": "x", "showticklabels": r == len(rows) - 1, "type": "date"}
            top = 1 - r / len(rows)
            layout[ya] = {"domain": [top - 1 / len(rows) + gap_y, top - gap_y], "anchor": f"x{axis}",
                          "title": {"text": metric if c == 0 else ""}, "rangemode": "tozero" if metric in (
                              "mae", "rmse", "label_coverage") else "normal"}
            if r == 0:
                layout["annotations"].append({"text": f"<b>{escape(segment or 'all')}</b>", "showarrow": False,
                                              "xref": f"x{axis} domain", "yref": f"y{axis} domain", "x": 0.5,
                                              "y": 1.12, "xanchor": "center"})
            for w, name in enumerate(window_names):
                points = sorted((start, rec) for (n, s, start), rec in finals.items() if n == name and s == segment)
                values = [_number(rec["label_coverage"] if metric == "label_coverage" else rec["metrics"].get(metric))
                          for _, rec in points]
                data.append({
                    "type": "scatter", "mode": "lines+markers" if len(points) <= MARKERS_UP_TO else "lines",
                    "name": name, "legendgroup": name, "showlegend": c == 0 and r == 0,
                    "xaxis": f"x{axis}", "yaxis": f"y{axis}", "x": [start * 1000 for start, _ in points],
                    "y": values, "customdata": [rec["n"] for _, rec in points],
                    "line": {"color": COLORS[w % len(COLORS)], "width": 1.5}, "marker": {"size": 4},
                    "hovertemplate": f"{name} from %{{x|%Y-%m-%d %H:%M}}<br>{metric} %{{y:.4f}}"
                                     "<br>n=%{customdata}<extra></extra>",
                })
            for episode in episodes:
                if episode["segment"] and episode["segment"] != segment:
                    continue
                layout["shapes"].append({"type": "rect", "xref": f"x{axis}", "yref": f"y{axis} domain",
                                         "x0": episode["start"], "x1": episode["end"], "y0": 0, "y1": 1,
                                         "fillcolor": ALERT_COLOR, "line": {"width": 0}, "layer": "below"})
                if r == 0:
                    layout["annotations"].append({
                        "text": episode["name"] + (" (firing)" if episode["firing"] else ""), "hovertext":
                        episode["text"], "showarrow": False, "xref": f"x{axis}", "yref": f"y{axis} domain",
                        "x": episode["start"], "y": 1.0, "xanchor": "left", "yanchor": "top",
                        "font": {"color": "#b22222", "size": 10}, "bgcolor": "rgba(255,255,255,0.7)"})
    return {"data": data, "layout": layout}


def confusion_figure(record: dict[str, Any]) -> dict[str, Any] | None:
    """The record's confusion matrix as heat maps: counts, and each true class's row as shares."""
    classes, matrix = record.get("classes"), record.get("confusion_matrix")
    if not classes or not matrix:
        return None
    shares = [[(cell / sum(row)) if sum(row) else 0.0 for cell in row] for row in matrix]
    common = {"type": "heatmap", "x": classes, "y": classes, "colorscale": "Blues", "reversescale": True,
              "showscale": False, "texttemplate": "%{text}",
              "hovertemplate": "true %{y}, predicted %{x}: %{text}<extra></extra>"}
    axes = {"xaxis": {"domain": [0, 0.46], "title": {"text": "predicted"}, "type": "category"},
            "yaxis": {"title": {"text": "true"}, "autorange": "reversed", "type": "category"},
            "xaxis2": {"domain": [0.54, 1], "anchor": "y2", "title": {"text": "predicted"}, "type": "category"},
            "yaxis2": {"anchor": "x2", "autorange": "reversed", "type": "category", "showticklabels": False}}
    window = record["window"]
    title = f"confusion matrix, {window['name']}" + (f" from {when(window['start'])}" if "start" in window else "")
    return {"data": [{**common, "z": matrix, "text": [[str(c) for c in row] for row in matrix]},
                     {**common, "z": shares, "text": [[f"{s:.1%}" for s in row] for row in shares],
                      "xaxis": "x2", "yaxis": "y2"}],
            "layout": {**axes, "height": 120 + 40 * len(classes), "title": {"text": title, "font": {"size": 13}},
                       "margin": {"l": 80, "r": 20, "t": 50, "b": 50}}}


def reliability_figure(record: dict[str, Any]) -> dict[str, Any] | None:
    """The record's calibration bins: the fraction positive against the mean score, by count."""
    bins = record["metrics"].get("calibration")
    if not bins:
        return None
    bins = [b for b in bins if b.get("count")]
    return {"data": [
        {"type": "scatter", "mode": "lines", "x": [0, 1], "y": [0, 1], "name": "perfectly calibrated",
         "line": {"dash": "dot", "color": "#999"}, "hoverinfo": "skip"},
        {"type": "scatter", "mode": "lines+markers", "name": "model", "x": [b["mean_score"] for b in bins],
         "y": [b["fraction_positive"] for b in bins], "customdata": [b["count"] for b in bins],
         "marker": {"size": [6 + 14 * math.sqrt(b["count"] / max(x["count"] for x in bins)) for b in bins]},
         "hovertemplate": "mean score %{x:.3f}<br>fraction positive %{y:.3f}<br>n=%{customdata}<extra></extra>"}],
        "layout": {"height": 320, "title": {"text": f"reliability, ECE {_ece(record)}", "font": {"size": 13}},
                   "xaxis": {"title": {"text": "mean score"}, "range": [0, 1]},
                   "yaxis": {"title": {"text": "fraction positive"}, "range": [0, 1]},
                   "margin": {"l": 60, "r": 20, "t": 50, "b": 50}, "showlegend": False}}


def _ece(record: dict[str, Any]) -> str:
    ece = _number(record["metrics"].get("ece"))
    return "n/a" if ece is None else f"{ece:.3f}"
