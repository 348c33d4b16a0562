"""Limits on models, versions and segments: what they admit, fold and forget, alone and in the engine."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from stream.config import Config
from stream.core.admission import OTHER, Admission, Limits, Slots
from stream.core.engine import Engine
from stream.core.records import parse_label, parse_prediction


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abcdefgh"), st.integers(0, 30)), max_size=80),
       st.integers(1, 4), st.integers(1, 10))
def test_slots_never_hold_more_than_the_limit_and_keep_every_name_seen_within_the_ttl(
        events: list[tuple[str, int]], limit: int, ttl: int) -> None:
    slots = Slots(limit, ttl)
    now = 0
    for name, step in events:
        now += step
        admitted = slots.admit(name, now)
        assert len(slots.seen) <= limit
        busy = {n for n, t in slots.seen.items() if t + ttl > now}
        if admitted:
            assert name in slots.seen
        else:  # refused only when every slot is held by a name seen within the ttl
            assert len(busy) == limit and name not in slots.seen


def test_versions_and_segments_fold_into_other_per_model() -> None:
    admission = Admission(Limits(max_models=2, max_versions_per_model=2, max_segment_keys=1, max_segment_values=2))
    assert admission.model("a", 0) and admission.model("b", 0) and not admission.model("c", 0)
    assert [admission.version("a", v, 0) for v in ("1", "2", "3", "1")] == ["1", "2", OTHER, "1"]
    assert admission.version("b", "3", 0) == "3"  # per model
    assert [admission.segment("a", "k", v, 0) for v in "xyz"] == [("k", "x"), ("k", "y"), ("k", OTHER)]
    assert admission.segment("a", "j", "x", 0) == (OTHER, OTHER)


def run(config: Config, predictions: list[dict[str, object]]) -> Engine:
    engine = Engine(config)
    for i, p in enumerate(predictions):
        engine.receive(parse_prediction(p), line=i)
        engine.receive(parse_label({"request_id": p["request_id"], "timestamp": p["timestamp"], "label": "1"}))
    engine.finish()
    return engine


def test_a_flood_of_names_stays_within_the_bound_the_settings_imply() -> None:
    config = Config.from_mapping({"max_models": 5, "max_versions_per_model": 3, "max_segment_keys": 2,
                                  "max_segment_values": 4, "windows": ["cumulative"]})
    flood = [{"request_id": f"r{i}", "model": f"m{i % 50}", "model_version": f"v{i % 40}", "timestamp": 1e9 + i,
              "prediction": "1", "segment": {f"k{i % 7}": f"x{i % 30}"}} for i in range(20_000)]
    engine = run(config, flood)
    series = {(r["model"], r["model_version"], tuple(sorted(r["segment"].items()))) for r in engine.metric_records}
    assert len(series) <= Limits.of(config).max_series()
    models = {m for m, _, _ in series}
    assert len(models) == 5
    for model in models:
        versions = {v for m, v, _ in series if m == model}
        keys = Counter(k for m, _, seg in series if m == model for k, _ in seg)
        assert len(versions) <= 4 and OTHER in versions
        assert len(keys) <= 3
        assert all(len({v for m, _, seg in series if m == model for k2, v in seg if k2 == k}) <= 5 for k in keys)
    # every refused prediction counted; one dead letter per refused model and hour (20,000 s: 6)
    assert engine.health.refused_models == 45 * 400
    notes = Counter(d["reason"].split("'")[1] for d in engine.dead_letters)
    assert notes == {f"m{i}": 6 for i in range(5, 50)}
    assert engine.balance() == {"predictions": 0, "labels": engine.balance()["labels"]}
    assert engine.health.folded_versions > 0 and engine.health.folded_segments > 0


def test_a_model_idle_for_the_series_ttl_frees_its_slot_for_a_new_one() -> None:
    config = Config.from_mapping({"max_models": 1, "series_ttl": "2h", "join_ttl": "10m", "windows": ["tumbling 1h"]})
    day = 86400.0
    records = [{"request_id": f"a{i}", "model": "old", "timestamp": 1e9 + i, "prediction": "1"} for i in range(10)]
    records += [{"request_id": f"b{i}", "model": "new", "timestamp": 1e9 + 3600 + i, "prediction": "1"}
                for i in range(10)]  # within the TTL: refused
    records += [{"request_id": f"c{i}", "model": "new", "timestamp": 1e9 + day + i, "prediction": "1"}
                for i in range(10)]  # a day later: admitted
    engine = run(config, records)
    finals = {(r["model"], r["window"]["start"]): r["n"] for r in engine.metric_records if r["final"]}
    assert finals == {("old", int((1e9 // 3600) * 3600)): 10, ("new", int(((1e9 + day) // 3600) * 3600)): 10}
    assert engine.health.refused_models == 10 and len(engine.dead_letters) == 1
    assert "refused: already monitoring 1 models" in engine.dead_letters[0]["reason"]
