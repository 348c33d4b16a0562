"""``Engine.receive_many`` (records in batches) against ``receive`` one record at a time, the
reference: on generated streams (several models on a request, scores and none, multiclass and
regression, segments, duplicates and corrections in any order, early, late and too-late labels,
stale predictions, labels a model cannot take, limits reached, rules, every window kind) and any
batch sizes from 1 up, the same metric records (revisions too), alert events, dead letters,
health counts and pending state, in the same order."""

from __future__ import annotations

import contextlib
import math
import random
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream.config import Config
from stream.core import ingest
from stream.core.engine import Engine
from stream.core.ingest import BULK_PAIRS
from stream.core.pending import MAX_LAYOUTS
from stream.core.records import Label, Prediction, parse_label, parse_prediction
from stream.core.windows import WindowSpec
from stream.errors import InvalidRecord

T0 = 1_600_000_000.0
MODELS = ("m", "n", "k", "r")  # binary with scores, binary, multiclass with scores, regression

label = st.fixed_dictionaries({"delay": st.integers(-30, 260),
                               "value": st.sampled_from(["a", "b", "c", "d", 1, 2.5, True])})
request = st.fixed_dictionaries({
    "ts": st.integers(0, 400),
    "models": st.sampled_from([("m",), ("n",), ("k",), ("r",), ("m", "n"), ("m", "k", "r")]),
    "pred": st.sampled_from(["a", "b", "c"]),
    "score": st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.9, 1.0]),
    "segment": st.sampled_from(["x", "y", None]),
    "version": st.sampled_from(["v1", "v1", "v2"]),
    "labels": st.lists(label, max_size=3),
    "again": st.lists(st.integers(-40, 40), max_size=2),  # the same model's prediction again, this much later
})
setting = st.fixed_dictionaries({
    "join_ttl_s": st.sampled_from([60, 100]),
    "watermark_lag_s": st.sampled_from([1, 20, 100_000]),
    "emit_interval_s": st.sampled_from([10, 60]),
    "duplicate_labels": st.sampled_from(["earliest", "latest"]),
    "windows": st.sampled_from([["tumbling 50s", "cumulative"],
                                [{"kind": "hopping", "size": "100s", "hop": "50s"}, "rolling 4"],
                                ["tumbling 1h", "tumbling 1d", "cumulative"]]),
    "max_classes": st.sampled_from([3, 100]),
    "max_models": st.sampled_from([2, 100]),
    "detect": st.booleans(),  # detector rules too (see core.detectors), quick to fire on a short stream
})


def records(requests: list[dict[str, Any]], uuids: bool = False) -> list[dict[str, Any]]:
    """``uuids``: request ids are canonical UUIDs (compacted to numbers), else short strings."""
    out: list[dict[str, Any]] = []
    for i, r in enumerate(requests):
        rid, ts = str(uuid.UUID(int=i * 7919)) if uuids else f"r{i}", T0 + r["ts"]
        for model in r["models"]:
            for delay in (0, *r["again"]):
                pred: dict[str, Any] = {"request_id": rid, "model": model, "model_version": r["version"],
                                        "timestamp": ts + delay, "prediction": r["pred"]}
                if r["segment"]:
                    pred["segment"] = {"region": r["segment"]}
                if model == "m":
                    pred["scores"] = {"a": r["score"], "b": 1.0 - r["score"]}
                elif model == "k":
                    pred["scores"] = {"a": r["score"], "b": (1.0 - r["score"]) / 2, "c": (1.0 - r["score"]) / 2}
                elif model == "r":
                    pred["prediction"] = r["ts"] % 7 + delay / 10
                out.append(pred)
        for lab in r["labels"]:
            out.append({"request_id": rid, "timestamp": ts + lab["delay"], "label": lab["value"]})
    return out


def parsed(raw: list[dict[str, Any]]) -> list[Prediction | Label]:
    out: list[Prediction | Label] = []
    for obj in raw:
        with contextlib.suppress(InvalidRecord):  # else the adapter's dead letter, not the engine's
            out.append(parse_prediction(obj) if "prediction" in obj else parse_label(obj))
    return out


def configured(options: dict[str, Any]) -> Config:
    options = dict(options)
    detect = options.pop("detect", False)
    first, last = (WindowSpec.parse(options["windows"][i]).name for i in (0, -1))
    detectors = [{"name": f"Drop{i}", "metric": metric, "detector": "cusum", "drop": 0.3, "baseline_pairs": 2,
                  "false_alarm_pairs": 10, "segments": ["*"], **({"baseline": 0.9} if given else {})}
                 for i, (metric, given) in enumerate((("accuracy", True), ("recall.a", True),
                                                      ("precision.b", False), ("within.1", True)))]
    return Config.from_mapping({**options, "regression_models": ["r"], "rules": [
        {"name": "Low", "metric": "accuracy", "window": first, "below": 0.6, "min_samples": 1},
        {"name": "Wrong", "metric": "mae", "window": last, "above": 2, "models": ["r"]},
        *(detectors if detect else [])]})


def outcome(engine: Engine) -> dict[str, Any]:
    detectors = sorted((w.rule.name, w.model, w.version, sorted(w.segment.items()), repr(w.state))
                       for w in engine.detectors.watched)  # every judged pair moves a detector's state
    return {"records": engine.metric_records, "alerts": engine.alert_events, "dead": engine.dead_letters,
            "health": engine.health, "pending": engine.pending(), "watermark": engine.watermark,
            "detectors": detectors, "late_pairs": engine.detectors.late_pairs}


def one_by_one(config: Config, events: list[Prediction | Label], revisions: bool) -> dict[str, Any]:
    engine = Engine(config, revisions=revisions)
    for i, record in enumerate(events):
        engine.receive(record, line=i)
    engine.finish()
    return outcome(engine)


def in_batches(config: Config, events: list[Prediction | Label], revisions: bool,
               sizes: list[int]) -> dict[str, Any]:
    engine = Engine(config, revisions=revisions)
    start, turn = 0, 0
    while start < len(events):
        size = sizes[turn % len(sizes)]
        engine.receive_many(events[start:start + size], lambda i, at=start: {"line": at + i})
        start, turn = start + size, turn + 1
    engine.finish()
    return outcome(engine)


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests=st.lists(request, min_size=1, max_size=60), options=setting, seed=st.integers(0, 2**32 - 1),
       order=st.sampled_from(["time", "shuffled", "nearly"]), revisions=st.booleans(),
       sizes=st.lists(st.integers(1, 3 * BULK_PAIRS), min_size=1, max_size=4),
       bulk=st.sampled_from([1, 3, BULK_PAIRS]), uuids=st.booleans())
def test_batches_give_what_one_record_at_a_time_gives(requests: list[dict[str, Any]], options: dict[str, Any],
                                                      seed: int, order: str, revisions: bool,
                                                      sizes: list[int], bulk: int, uuids: bool) -> None:
    """``bulk``: pairs from which they are counted as arrays (``BULK_PAIRS``), low so that
    short streams take that path too."""
    config = configured(options)
    events = parsed(records(requests, uuids))
    rng = random.Random(seed)
    if order == "time":
        events.sort(key=lambda r: r.timestamp)
    elif order == "shuffled":
        rng.shuffle(events)
    else:  # in time order but for a few seconds' jitter
        events.sort(key=lambda r: r.timestamp + rng.uniform(0, 30))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ingest, "BULK_PAIRS", bulk)
        assert in_batches(config, events, revisions, sizes) == one_by_one(config, events, revisions)


@pytest.mark.parametrize("detect", [False, True])
def test_many_pairs_at_once_are_counted_as_arrays_to_the_same_figures(detect: bool,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A long stream in time order, batches far above ``BULK_PAIRS``: the array path, scored
    (binary and multiclass) and not, equal to one record at a time; with detector rules, which
    get the pairs counted as arrays too."""
    rng = random.Random(7)
    requests = [{"ts": i // 3, "models": ("m", "k") if i % 150 == 0 else rng.choice([("m",), ("n",), ("k",)]),
                 "pred": rng.choice("ab"), "score": rng.choice([0.1, 0.3, 0.8]), "segment": rng.choice("xy"),
                 "version": "v1", "labels": [{"delay": rng.randrange(1, 90), "value": rng.choice("ab")}],
                 "again": []} for i in range(3000)]
    bulk: list[int] = []  # pairs counted as arrays (entries of several sizes: two, three and no scores)
    register = ingest.Ingest._register_score_names
    monkeypatch.setattr(ingest.Ingest, "_register_score_names", lambda self, deferred, table: (
        bulk.append(len(deferred)), register(self, deferred, table))[1])
    options = {"join_ttl_s": 100, "watermark_lag_s": 1, "emit_interval_s": 60, "duplicate_labels": "earliest",
               "windows": ["tumbling 50s", "cumulative"], "max_classes": 100, "max_models": 100, "detect": detect}
    config = configured(options)
    events = sorted(parsed(records(requests, uuids=True)), key=lambda r: r.timestamp)
    reference = one_by_one(config, events, revisions=False)
    assert reference["health"].pairs > 2000
    assert sum("detector" in alert for alert in reference["alerts"]) >= (4 if detect else 0)
    assert in_batches(config, events, False, [4096]) == reference
    assert sum(bulk) > reference["health"].pairs / 2, bulk  # most pairs counted as arrays


def test_detectors_judge_pairs_counted_as_arrays_before_the_watermark_passes_them() -> None:
    """With detector rules alone (no threshold rule folds pairs at each emission) and a cumulative
    window (none closes), pairs wait to be counted as arrays: they reach the detectors when they
    form, before the sweep that judges their minute (after it they would be late, and left out);
    labels before their predictions and after them."""
    rng = random.Random(3)
    requests = [{"ts": i // 3, "models": ("m",), "pred": rng.choice("ab"), "score": 0.5, "segment": None,
                 "version": "v1", "labels": [{"delay": rng.randrange(-30, 30), "value": rng.choice("ab")}],
                 "again": []} for i in range(3000)]
    rule = {"name": "Drop", "metric": "accuracy", "detector": "cusum", "drop": 0.1, "baseline_pairs": 100}
    config = Config.from_mapping({"join_ttl_s": 100, "watermark_lag_s": 1, "windows": ["cumulative"],
                                  "rules": [rule]})
    events = sorted(parsed(records(requests, uuids=True)), key=lambda r: r.timestamp)
    reference = one_by_one(config, events, revisions=False)
    assert reference["late_pairs"] == 0 and "baseline_n=0" not in reference["detectors"][0][-1]
    assert in_batches(config, events, False, [4096]) == reference


def test_windows_are_emitted_in_the_order_their_pairs_and_predictions_came() -> None:
    """A pair counted later, with others, still marks its windows changed where it came: between
    two predictions of other segments, its segment's records come between theirs."""
    config = configured({"join_ttl_s": 100, "watermark_lag_s": 1, "emit_interval_s": 60,
                         "duplicate_labels": "earliest", "windows": ["tumbling 1h"], "max_classes": 100,
                         "max_models": 100})
    raw = [{"request_id": f"p{i}", "model": "n", "timestamp": T0 + i, "prediction": "a",
            "segment": {"region": region}} for i, region in enumerate("xyz")]
    raw += [{"request_id": "p1", "timestamp": T0 + 61, "label": "a"},  # segment y's pair
            {"request_id": "q", "model": "n", "timestamp": T0 + 62, "prediction": "a", "segment": {"region": "z"}},
            {"request_id": "p0", "timestamp": T0 + 63, "label": "b"},
            {"request_id": "later", "model": "m", "timestamp": T0 + 125, "prediction": "a"}]  # a flush
    events = parsed(raw)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ingest, "BULK_PAIRS", 1)
        batched = in_batches(config, events, True, [len(events)])
    reference = one_by_one(config, events, True)
    assert [r["segment"] for r in batched["records"]] == [r["segment"] for r in reference["records"]]
    assert batched == reference


def taking(config: Config, events: list[Prediction | Label], sizes: list[int], batched: bool) -> dict[str, Any]:
    """As the Kafka worker feeds its engines: records taken in (``take_many``, or ``prediction``
    and ``label`` one by one) between watermark moves of its own, and what each took in."""
    engine = Engine(config, revisions=True, emit_partials=True)
    taken: list[bool] = []
    start, turn, latest = 0, 0, -math.inf
    while start < len(events):
        batch = events[start:start + sizes[turn % len(sizes)]]
        if batched:
            taken += engine.take_many(batch, lambda i, at=start: {"offset": at + i})
        else:
            for i, record in enumerate(batch, start):
                taken.append(engine.prediction(record, offset=i) if type(record) is Prediction
                             else engine.label(record, offset=i))  # type: ignore[arg-type]
        latest = max([latest, *(r.timestamp for r in batch)])
        engine.observe(latest - 15)
        start, turn = start + len(batch), turn + 1
    engine.finish()
    return {**outcome(engine), "taken": taken}


@pytest.mark.slow
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests=st.lists(request, min_size=1, max_size=60), options=setting, seed=st.integers(0, 2**32 - 1),
       sizes=st.lists(st.integers(1, 3 * BULK_PAIRS), min_size=1, max_size=4),
       bulk=st.sampled_from([1, 3, BULK_PAIRS]), uuids=st.booleans())
def test_taken_in_batches_as_one_by_one(requests: list[dict[str, Any]], options: dict[str, Any], seed: int,
                                        sizes: list[int], bulk: int, uuids: bool) -> None:
    """The worker's way (``take_many``): the same partials, dead letters, health and pending
    state as ``prediction`` and ``label`` one by one, and the same records taken in (stored)."""
    config = configured(options)
    events = parsed(records(requests, uuids))
    random.Random(seed).shuffle(events)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ingest, "BULK_PAIRS", bulk)
        assert taking(config, events, sizes, True) == taking(config, events, sizes, False)


def test_a_record_that_fails_is_not_taken_and_the_others_go_on() -> None:
    config = configured({"join_ttl_s": 100, "watermark_lag_s": 1, "emit_interval_s": 60,
                         "duplicate_labels": "earliest", "windows": ["tumbling 1h"], "max_classes": 100,
                         "max_models": 100})
    events = parsed([{"request_id": f"p{i}", "model": model, "timestamp": T0 + i, "prediction": "a"}
                     for i, model in enumerate("nmn")])  # the second goes the per-record way
    engine = Engine(config)
    failed: list[int] = []

    def where(i: int) -> dict[str, Any]:
        if i == 1:
            raise RuntimeError("a bug")
        return {}

    assert engine.take_many(events, where, lambda i, exc: failed.append(i)) == [True, False, True]
    assert failed == [1] and engine.pending() == (2, 0)


def test_predictions_that_find_their_label_waiting_join_or_come_too_late() -> None:
    """Labels first, then their predictions (as a worker reads two topics): each prediction pairs
    with its waiting label, joined, or late when the label is stamped more than the TTL after it
    (by 1 s, and by 0: joined); the same counts as one record at a time."""
    config = configured({"join_ttl_s": 60, "watermark_lag_s": 100_000, "emit_interval_s": 60,
                         "duplicate_labels": "earliest", "windows": ["tumbling 1h"], "max_classes": 100,
                         "max_models": 100})
    delays = [5, 60, 61, 30, 90, 59]
    raw: list[dict[str, Any]] = [{"request_id": "first", "model": "m", "timestamp": T0, "prediction": "a",
                                  "scores": {"a": 0.5, "b": 0.5}}]
    raw += [{"request_id": f"r{i}", "timestamp": T0 + 100 + delay, "label": "ab"[i % 2]}
            for i, delay in enumerate(delays)]
    raw += [{"request_id": f"r{i}", "model": "m", "timestamp": T0 + 100, "prediction": "a",
             "scores": {"a": 0.25, "b": 0.75}} for i in range(len(delays))]
    events = parsed(raw)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ingest, "BULK_PAIRS", 1)
        batched = in_batches(config, events, False, [len(events)])
    reference = one_by_one(config, events, False)
    assert (reference["health"].late_labels, reference["health"].pairs) == (2, 4)
    assert batched == reference


@pytest.mark.parametrize("width", [2, 4])  # names inline make entries of a head and doubles' size, or not
def test_scores_whose_class_names_come_inline_are_counted_one_by_one(width: int) -> None:
    """Past ``MAX_LAYOUTS`` sets of score names a pending prediction carries its names inline;
    pairs of such predictions, of one size, are counted as the per-record path counts them."""
    config = configured({"join_ttl_s": 1000, "watermark_lag_s": 100_000, "emit_interval_s": 60,
                         "duplicate_labels": "earliest", "windows": ["tumbling 1h"], "max_classes": 100,
                         "max_models": 100})
    n = MAX_LAYOUTS + 40
    raw: list[dict[str, Any]] = [{"request_id": f"r{i}", "model": "m", "timestamp": T0, "prediction": "a",
                                  "scores": {f"{chr(97 + i // 26)}{chr(97 + i % 26)}".ljust(width, "_"): 0.5}}
                                 for i in range(n)]
    raw += [{"request_id": f"r{i}", "timestamp": T0 + 10, "label": "a"} for i in range(n)]
    events = parsed(raw)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ingest, "BULK_PAIRS", 1)
        batched = in_batches(config, events, False, [n + MAX_LAYOUTS, 40])  # the last batch: names inline only
    reference = one_by_one(config, events, False)
    assert reference["health"].pairs == n
    assert batched == reference
