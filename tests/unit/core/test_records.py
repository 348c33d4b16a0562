"""The input contract: the parser and the JSON Schemas in schemas/ agree, and errors say why."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from stream.core.records import (
    MAX_TIMESTAMP_S,
    MIN_TIMESTAMP_S,
    class_name,
    decode,
    parse_label,
    parse_prediction,
    parse_timestamp,
)
from stream.errors import InvalidRecord

SCHEMAS = Path(__file__).resolve().parents[3] / "schemas"


def validator(name: str) -> Draft202012Validator:
    registry: Registry = Registry()
    for path in SCHEMAS.glob("*.json"):
        schema = json.loads(path.read_text())
        registry = registry.with_resource(schema["$id"], Resource.from_contents(schema))
        registry = registry.with_resource(path.name, Resource.from_contents(schema))
    schema = json.loads((SCHEMAS / name).read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, registry=registry, format_checker=Draft202012Validator.FORMAT_CHECKER)


GOOD_PREDICTIONS: list[dict[str, Any]] = [
    {"request_id": "r1", "model": "m", "timestamp": 1.6e9 + 1.5, "prediction": "cat"},
    {"request_id": "r1", "model": "m", "model_version": "2", "timestamp": "2026-11-26T10:00:00Z",
     "prediction": 1, "scores": {"0": 0.2, "1": 0.8}, "segment": {"venue": "home"}},
    {"request_id": "r1", "model": "m", "timestamp": 946684800, "prediction": True, "extra": "ignored"},
]
BAD_PREDICTIONS: list[tuple[dict[str, Any], str]] = [
    ({"model": "m", "timestamp": 1.6e9, "prediction": "a"}, "missing field 'request_id'"),
    ({"request_id": "", "model": "m", "timestamp": 1.6e9, "prediction": "a"}, "'request_id' is empty"),
    ({"request_id": 7, "model": "m", "timestamp": 1.6e9, "prediction": "a"}, "'request_id' must be a string"),
    ({"request_id": "r", "model": "m", "timestamp": "yesterday", "prediction": "a"}, "not an RFC 3339"),
    ({"request_id": "r", "model": "m", "timestamp": "2026-11-26T10:00:00", "prediction": "a"}, "no UTC offset"),
    ({"request_id": "r", "model": "m", "timestamp": -5, "prediction": "a"}, "from 2000 to 9999"),
    ({"request_id": "r", "model": "m", "timestamp": 1_700_000_000_000, "prediction": "a"}, "milliseconds?"),
    ({"request_id": "r", "model": "m", "timestamp": 946684799.9, "prediction": "a"}, "from 2000 to 9999"),
    ({"request_id": "r", "model": "m", "timestamp": 1.6e9}, "missing field 'prediction'"),
    ({"request_id": "r", "model": "m", "timestamp": 1.6e9, "prediction": None}, "'prediction' is null"),
    ({"request_id": "r", "model": "m", "timestamp": 1.6e9, "prediction": [1]}, "must be a string, integer"),
    ({"request_id": "r", "model": "m", "timestamp": 1.6e9, "prediction": "a", "scores": {"a": 1.5}}, "probability"),
    ({"request_id": "r", "model": "m", "timestamp": 1.6e9, "prediction": "a", "segment": {"v": 3}}, "'segment'"),
    ({"request_id": "r", "model": "m" * 200, "timestamp": 1.6e9, "prediction": "a"}, "over the limit"),
    ({"request_id": "r", "model": "m\n", "timestamp": 1.6e9, "prediction": "a"}, "control characters"),
    ({"request_id": "r", "model": "m", "timestamp": 1.6e9, "prediction": "a", "segment": {"k": "\x00"}},
     "control characters"),
    ({"request_id": "r", "model": "m", "timestamp": "2026-11-30 06:00:00Z", "prediction": "a"}, "not an RFC 3339"),
]


@pytest.mark.parametrize("record", GOOD_PREDICTIONS)
def test_good_predictions_pass_parser_and_schema(record: dict[str, Any]) -> None:
    parse_prediction(record)
    validator("prediction.json").validate(record)


@pytest.mark.parametrize(("record", "reason"), BAD_PREDICTIONS)
def test_bad_predictions_fail_parser_and_schema_with_a_reason(record: dict[str, Any], reason: str) -> None:
    with pytest.raises(InvalidRecord, match=reason):
        parse_prediction(record)
    if "no UTC offset" not in reason:  # JSON Schema's date-time format cannot express this one
        assert not validator("prediction.json").is_valid(record)


def test_labels_pass_and_fail_like_the_schema() -> None:
    good = {"request_id": "r", "timestamp": 1.6e9, "label": "cat"}
    parse_label(good)
    validator("label.json").validate(good)
    bad = {"request_id": "r", "timestamp": 1.6e9}
    with pytest.raises(InvalidRecord, match="missing field 'label'"):
        parse_label(bad)
    assert not validator("label.json").is_valid(bad)


def test_decode_refuses_garbage_and_oversized_input() -> None:
    with pytest.raises(InvalidRecord, match="not valid JSON"):
        decode(b"{oops")
    with pytest.raises(InvalidRecord, match="expected a JSON object"):
        decode(b"[1, 2]")
    with pytest.raises(InvalidRecord, match="over the limit"):
        decode(b" " * 100, max_bytes=10)
    with pytest.raises(InvalidRecord, match="not valid JSON"):
        decode(b'{"timestamp": NaN}')


def test_classes_are_compared_as_strings() -> None:
    assert [class_name(v) for v in ("a", 1, True, False, 2.0)] == ["a", "1", "true", "false", "2"]
    with pytest.raises(InvalidRecord, match="regression_models"):
        class_name(0.7)


def test_rfc3339_timestamps() -> None:
    assert parse_timestamp("2000-01-01T00:01:00+00:00") == 946684860.0
    assert parse_timestamp("2000-01-01T01:01:00+01:00") == 946684860.0


@pytest.mark.slow
@pytest.mark.parametrize("sample", [1.0, 0.3])
def test_engine_output_matches_the_output_schemas(tmp_path: Path, sample: float) -> None:
    from stream.config import Config
    from stream.core.engine import Engine
    from stream.demo import DEMO_SETTINGS, demo_scenario
    from stream.simulate import arrivals

    engine = Engine(Config.from_mapping({**DEMO_SETTINGS, "sample": sample}))
    for _, kind, raw in arrivals(demo_scenario(20_000)):
        engine.receive(parse_prediction(raw) if kind == 0 else parse_label(raw))
    engine.dead_letter("labels", "{oops", "not valid JSON", file="x.jsonl", line=3)
    engine.finish()
    assert engine.alert_events, "the demo scenario should fire at least once"
    assert any("detector" in event for event in engine.alert_events), "its detector rule too"
    for name, items in (("metric_record.json", engine.metric_records), ("alert_event.json", engine.alert_events),
                        ("dead_letter.json", engine.dead_letters)):
        check = validator(name)
        for item in items:
            check.validate(json.loads(json.dumps(item)))


@pytest.mark.parametrize("value", ["2026-11-30 06:00:00Z", "20261130T060000Z", "2026-W48-1T06:00:00+00:00",
                                   "9999-12-31T23:59:59-23:59", "2026-13-30T06:00:00Z", "1999-12-31T23:59:59Z"])
def test_timestamps_are_strict_rfc_3339_within_2000_to_9999(value: str) -> None:
    with pytest.raises(InvalidRecord, match="'timestamp'"):
        parse_timestamp(value)


@given(st.text(max_size=40))
def test_no_timestamp_string_raises_past_invalid_record(value: str) -> None:
    try:
        ts = parse_timestamp(value)
    except InvalidRecord:
        return
    assert MIN_TIMESTAMP_S <= ts <= MAX_TIMESTAMP_S


@pytest.mark.parametrize(("field", "value"), [("model", "m\x00"), ("model", "a\nb"), ("model", "   "),
                                              ("model_version", "v\x1b[31m"), ("segment", {"k": "\x07"})])
def test_names_people_read_must_be_printable(field: str, value: object) -> None:
    record = {"request_id": "r", "model": "m", "timestamp": 1.6e9, "prediction": "a", field: value}
    with pytest.raises(InvalidRecord, match="control characters or only spaces"):
        parse_prediction(record)


def test_a_class_beyond_two_to_the_53_is_refused_not_rounded() -> None:
    assert class_name(2**60) == str(2**60)  # an exact JSON integer stays exact
    with pytest.raises(InvalidRecord, match="beyond 2\\^53"):
        class_name(1.2345678901234568e29)  # what 123456789012345678901234567890 decodes to
