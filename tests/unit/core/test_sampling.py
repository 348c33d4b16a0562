"""Sampling by request (``sample``): an engine given every record counts what an engine without
sampling counts of the sampled requests' records alone, in every path (one record at a time, in
batches, the worker's ``take_many``, the settled requests as columns); the figures of the sampled
requests equal scikit-learn's; the standard errors are the ratio estimator's and match the spread
of sampled figures around every request's."""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from murmurhash2 import murmurhash2
from sklearn import metrics as skm

from stream.config import Config
from stream.core.columns import labels_from_json, predictions_from_json
from stream.core.engine import Engine
from stream.core.health import Health
from stream.core.records import Label, Prediction
from stream.core.sampling import Sampler, standard_errors
from tests.unit.core.test_ingest import configured, outcome, parsed, records, request, setting

SAMPLED_FIELDS = ("sample_rate", "standard_errors")


def without_sampling(found: dict[str, Any]) -> dict[str, Any]:
    """An outcome with what only sampling adds taken out: the rate and standard errors of records,
    and the unsampled counts (checked against the records left out)."""
    records = [{k: v for k, v in r.items() if k not in SAMPLED_FIELDS} if "n" in r else r for r in found["records"]]
    h = found["health"]
    health = dataclasses.replace(h, predictions=h.predictions - h.unsampled_predictions,
                                 labels=h.labels - h.unsampled_labels, unsampled_predictions=0, unsampled_labels=0)
    return {**found, "records": records, "health": health}


def fed(config: Config, events: list[Prediction | Label], how: str, line: dict[int, int],
        keep: Callable[[str], bool] | None = None) -> dict[str, Any]:
    """The outcome of ``events`` fed ``how``; ``line``: each record's number (by ``id``), where
    its dead letter says it came from; ``keep``: which request ids' records the engine is given
    (the reference), while event time moves with every record, as the adapters move it."""
    engine = Engine(config, revisions=True, emit_partials=how == "taken")
    taken: list[bool] = []
    latest = -math.inf
    size = 1 if how == "one by one" else 7
    for start in range(0, len(events), size):
        batch = [r for r in events[start:start + size] if keep is None or keep(r.request_id)]
        if how == "one by one":
            for record in batch:
                engine.receive(record, line=line[id(record)])
        elif how == "in batches":
            engine.receive_many(batch, lambda i, b=batch: {"line": line[id(b[i])]})  # type: ignore[misc]
        else:  # the worker's way: records taken in, event time moved by the adapter over all records
            taken += engine.take_many(batch, lambda i, b=batch: {"line": line[id(b[i])]})  # type: ignore[misc]
            latest = max([latest, *(r.timestamp for r in events[start:start + size])])
            engine.observe(latest - 15)
    engine.finish()
    return {**outcome(engine), "taken": taken}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests=st.lists(request, min_size=1, max_size=50), options=setting, seed=st.integers(0, 2**32 - 1),
       rate=st.sampled_from([0.1, 0.5, 0.9]), how=st.sampled_from(["one by one", "in batches", "taken"]))
def test_an_engine_counts_the_sampled_requests_records_as_if_given_them_alone(
        requests: list[dict[str, Any]], options: dict[str, Any], seed: int, rate: float, how: str) -> None:
    config = configured(options)
    sampled = dataclasses.replace(config, sample=rate)
    events = parsed(records(requests))
    random.Random(seed).shuffle(events)
    sampler = Sampler(rate)
    line = {id(r): i for i, r in enumerate(events)}
    found, reference = fed(sampled, events, how, line), fed(config, events, how, line, sampler.keeps)
    if how == "taken":  # a record left out is not taken in (not stored)
        keep = iter(reference["taken"])
        assert found["taken"] == [sampler.keeps(r.request_id) and next(keep) for r in events]
        found["taken"] = reference["taken"]
    assert without_sampling(found) == reference
    left_out = [r for r in events if not sampler.keeps(r.request_id)]
    assert found["health"].unsampled_predictions == sum(type(r) is Prediction for r in left_out)
    assert found["health"].unsampled_labels == sum(type(r) is Label for r in left_out)
    metric = [r for r in found["records"] if "n" in r]  # partials (taken) carry no rate: the merger's records do
    assert all(r["sample_rate"] == rate and "standard_errors" in r for r in metric)
    assert found["health"].balance(*found["pending"]) == {"predictions": 0, "labels": 0}


def test_settled_requests_as_columns_leave_the_same_requests_out() -> None:
    """``Engine.sampled``, as replay calls it before counting settled requests as arrays."""
    lines = [f'{{"request_id":"r{i}","model":"m","timestamp":1767225600,"prediction":"a"}}'.encode()
             for i in range(200)]
    label_lines = [f'{{"request_id":"r{i}","timestamp":1767225700,"label":"a"}}'.encode() for i in range(0, 200, 2)]
    engine = Engine(Config.from_mapping({"sample": 0.3}))
    predictions, labels = engine.sampled(predictions_from_json(lines)[0], labels_from_json(label_lines)[0])
    sampler = Sampler(0.3)
    assert predictions.request_ids == [f"r{i}" for i in range(200) if sampler.keeps(f"r{i}")]
    assert labels.request_ids == [f"r{i}" for i in range(0, 200, 2) if sampler.keeps(f"r{i}")]
    assert labels.rows == [i for i, r in enumerate(range(0, 200, 2)) if sampler.keeps(f"r{r}")]
    assert engine.health.unsampled_predictions == 200 - len(predictions)
    assert engine.health.unsampled_labels == 100 - len(labels)


def test_the_decision_is_the_request_id_s_murmur2_hash_below_the_rate() -> None:
    ids = [f"request-{i}" for i in range(20_000)]
    for rate in (0.01, 0.1, 0.5):
        sampler = Sampler(rate)
        keeps = sampler.keeps_many(ids)
        assert keeps == [murmurhash2(r.encode(), 0) < rate * 2 ** 32 for r in ids] == [sampler.keeps(r) for r in ids]
        assert abs(sum(keeps) / len(ids) - rate) < 4 * math.sqrt(rate * (1 - rate) / len(ids))
    assert Sampler(1.0).keeps_many(ids) == [True] * len(ids) and Sampler(1.0).kept([], Health()) is None
    assert Sampler(0.5).keeps_many(["a\ud800", "a\ud800"]) in ([True] * 2, [False] * 2)  # a Python caller's id
    for bad in (0.0, -0.1, 1.5, math.nan):
        with pytest.raises(ValueError):
            Sampler(bad)


def ratio_error(y: np.ndarray, x: np.ndarray, rate: float) -> float:
    """The ratio estimator's standard error, from every pair's terms."""
    r = y.sum() / x.sum()
    n = len(y)
    return float(math.sqrt((1 - rate) * n / (n - 1) * ((y - r * x) ** 2).sum()) / x.sum())


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 300), classes=st.integers(2, 4),
       rate=st.sampled_from([0.05, 0.5, 0.99]))
def test_standard_errors_are_the_ratio_estimator_s_over_every_pair(seed: int, n: int, classes: int,
                                                                   rate: float) -> None:
    rng = np.random.default_rng(seed)
    truth, guess = rng.integers(0, classes, n), rng.integers(0, classes, n)
    names = [str(c) for c in range(classes)]
    cells = skm.confusion_matrix(truth, guess, labels=range(classes)).tolist()
    errors = standard_errors({"classes": names, "confusion_matrix": cells, "metrics": {}}, n, rate)
    assert errors["accuracy"] == pytest.approx(ratio_error((truth == guess) * 1.0, np.ones(n), rate), abs=1e-12)
    for c, name in enumerate(names):
        tp, t, g = ((truth == c) & (guess == c)) * 1.0, (truth == c) * 1.0, (guess == c) * 1.0
        for figure, x, y in (("precision", g, tp), ("recall", t, tp), ("f1", t + g, 2 * tp)):
            want = ratio_error(y, x, rate) if x.sum() else None
            assert errors[figure][name] == (want if want is None else pytest.approx(want, abs=1e-12)), (figure, c)
    e = rng.normal(0, 2, n)
    regression = standard_errors({"metrics": {"mae": np.abs(e).mean(), "mean_error": e.mean(),
                                              "rmse": math.sqrt((e ** 2).mean())}}, n, rate)
    assert regression["mae"] == pytest.approx(ratio_error(np.abs(e), np.ones(n), rate), rel=1e-9, abs=1e-12)
    assert regression["mean_error"] == pytest.approx(ratio_error(e, np.ones(n), rate), rel=1e-9, abs=1e-12)


@pytest.mark.slow
def test_the_standard_error_matches_the_spread_of_sampled_figures() -> None:
    """Samples of 10% of 20,000 requests under 200 hash seeds (other request ids): sampled
    accuracy and F1 around every request's spread as their standard errors say (within 15%)."""
    rng = np.random.default_rng(5)
    n, rate = 20_000, 0.1
    truth = rng.integers(0, 2, n)
    guess = np.where(rng.random(n) < 0.8, truth, 1 - truth)
    full = {"accuracy": skm.accuracy_score(truth, guess), "f1": skm.f1_score(truth, guess, pos_label=1)}
    deviations: dict[str, list[float]] = {"accuracy": [], "f1": []}
    sampler = Sampler(rate)
    for salt in range(200):
        keep = np.array(sampler.keeps_many([f"{salt}-{i}" for i in range(n)]))
        t, g = truth[keep], guess[keep]
        cells = skm.confusion_matrix(t, g, labels=[0, 1]).tolist()
        errors = standard_errors({"classes": ["0", "1"], "confusion_matrix": cells, "metrics": {}}, len(t), rate)
        deviations["accuracy"].append((skm.accuracy_score(t, g) - full["accuracy"]) / errors["accuracy"])
        deviations["f1"].append((skm.f1_score(t, g, pos_label=1) - full["f1"]) / errors["f1"]["1"])
    for name, z in deviations.items():
        assert 0.85 < float(np.std(z)) < 1.15, name
        assert abs(float(np.mean(z))) < 0.25, name
