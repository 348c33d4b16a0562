"""The partials topic's messages: each kind read back as written, messages of an earlier version
read by their keys, an earlier version's reader served by the keys it knows, and anything else
refused with its reason (then dead-lettered by the merge agent). The merge table's values: stored
as an earlier version stored them, read back, and a later format or another form refused."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream.config import Config
from stream.kafka.formats import (
    VERSION,
    Ask,
    CumulativeBase,
    Decided,
    DetectorsEntry,
    Forget,
    Heartbeat,
    Message,
    MessageError,
    Pairs,
    PairsEntry,
    Partial,
    RuleEntry,
    TableError,
    decode,
    encode,
    entry_home,
    entry_partials,
    final_entry,
    is_final,
    open_entry,
    partial_slot,
    read_registry,
    read_value,
    registry_value,
    stored,
)
from stream.kafka.merge_agent import Merge

names = st.text(min_size=1, max_size=8)
values = st.recursive(st.none() | st.booleans() | st.integers(-(2**80), 2**80)
                      | st.floats(allow_nan=False, allow_infinity=False)  # JSON has neither: both write null
                      | st.text(max_size=5), lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=8)
bodies = st.dictionaries(st.text(max_size=6), values, max_size=4)
messages = st.one_of(
    st.builds(Partial, partition=st.integers(0, 2**31), partial=bodies),
    st.builds(Pairs, partition=st.integers(0, 2**31), model=names, pairs=bodies),
    st.builds(Heartbeat, watermarks=st.dictionaries(st.integers(0, 99).map(str), st.none()
                                                    | st.floats(allow_nan=False, allow_infinity=False)),
              idle=st.lists(st.integers(0, 99))),
    st.builds(Ask, ask=names, home=st.integers(0, 99), ts=st.floats(allow_nan=False, allow_infinity=False)),
    st.builds(Decided, decided=names, admitted=st.booleans()),
    st.builds(Forget, forget=names))

# How an earlier version wrote each kind, and the message it is read as now.
EARLIER: list[tuple[dict[str, Any], Message]] = [
    ({"partition": 3, "partial": {"model": "m"}}, Partial(partition=3, partial={"model": "m"})),
    ({"partition": 1, "model": "m", "pairs": {"pairs": []}}, Pairs(partition=1, model="m", pairs={"pairs": []})),
    ({"watermarks": {"0": 5, "1": None}, "idle": [1]}, Heartbeat(watermarks={"0": 5.0, "1": None}, idle=[1])),
    ({"watermarks": {}}, Heartbeat(watermarks={})),
    ({"ask": "m", "home": 2, "ts": 7.5}, Ask(ask="m", home=2, ts=7.5)),
    ({"decided": "m", "admitted": False}, Decided(decided="m", admitted=False)),
    ({"forget": "m"}, Forget(forget="m")),
]


@given(messages)
def test_every_message_is_read_back_as_written(message: Message) -> None:
    assert decode(encode(message)) == message


@pytest.mark.parametrize(("written", "read"), EARLIER)
def test_messages_of_an_earlier_version_are_read_by_their_keys(written: dict[str, Any], read: Message) -> None:
    assert decode(orjson.dumps(written)) == read


@pytest.mark.parametrize(("written", "read"), EARLIER)
def test_an_earlier_reader_finds_the_keys_it_knows(written: dict[str, Any], read: Message) -> None:
    body = orjson.loads(encode(read))
    assert (body.pop("kind"), body.pop("v")) == (type(read).__struct_config__.tag, VERSION)
    assert body == {**written, **({"idle": []} if "watermarks" in written and "idle" not in written else {})}


@pytest.mark.parametrize(("value", "reason"), [
    (b'{"kind":"ask","v":2,"ask":"m","home":0,"ts":1}', "'ask' message of format 2, from a later mlmon"),
    (b'{"kind":"ask","v":9,"question":"m"}', "of format 9, from a later mlmon"),
    (b'{"kind":"merge please"}', "no message of kind 'merge please'"),
    (b'{"kind":"decided","decided":"m","admitted":"yes"}', "a 'decided' message: Expected `bool`"),
    (b'{"partition":"0","partial":{}}', "a 'partial' message: Expected `int`"),
    (b'{"watermarks":{"zero":"5"}}', "a 'heartbeat' message"),
    (b"[1, 2]", "expected a JSON object, got list"),
    (b'{"ask":', "not JSON"),
])
def test_anything_else_is_refused_with_its_reason(value: bytes, reason: str) -> None:
    with pytest.raises(MessageError, match=reason.replace("(", r"\(").replace(")", r"\)").replace("`", ".")):
        decode(value)


def test_the_merge_agent_dead_letters_a_message_of_a_later_version_with_the_reason() -> None:
    config = Config.from_mapping({"partitions": 2})
    merge = Merge(config)
    merge.stale = False
    value = b'{"kind":"partial","v":2,"partition":0,"window":{}}'
    [(topic, _, dead)] = merge.handle({}, 1, 7, value)
    assert topic == config.dead_letters_topic
    assert "from a later mlmon (this one reads up to 1)" in orjson.loads(dead)["reason"]


# ------------------------------------------------------------------ the merge table

HEAD = {"model": "m", "model_version": "v1", "segment": {}}
TABLE_VALUES = [  # (as an earlier version stored it, the typed value that stores the same)
    ({"through": 1767225600, "head": HEAD, "state": {"n": 3}},
     CumulativeBase(through=1767225600, head=HEAD, state={"n": 3})),
    ({"rule": "Low", "series": ["m", "v1", ""], "state": {"firing": True}},
     RuleEntry(rule="Low", series=["m", "v1", ""], state={"firing": True})),
    ({"here": 3, "judged_to": None, "detectors": [["cusum", "v1", {}, {"s": 0.5}]]},
     DetectorsEntry(here=3, judged_to=None, detectors=[["cusum", "v1", {}, {"s": 0.5}]])),
    ({"here": 1, "pairs": {"pairs": [[1.5, 1]]}}, PairsEntry(here=1, pairs={"pairs": [[1.5, 1]]})),
]


@pytest.mark.parametrize(("earlier", "value"), TABLE_VALUES)
def test_table_values_are_stored_as_an_earlier_version_stored_them_and_read_back(earlier: dict[str, Any],
                                                                                  value: Any) -> None:
    assert orjson.dumps(stored(value)) == orjson.dumps(earlier)  # the same JSON, key for key
    assert read_value(orjson.loads(orjson.dumps(earlier)), type(value)) == value


@pytest.mark.parametrize(("earlier", "value"), TABLE_VALUES)
def test_a_table_value_of_a_later_format_or_another_form_is_refused(earlier: dict[str, Any], value: Any) -> None:
    with pytest.raises(TableError, match="of format 2, from a later mlmon"):
        read_value({**earlier, "v": 2}, type(value))
    with pytest.raises(TableError, match=f"a stored {type(value).__name__}"):
        read_value({k: v for k, v in earlier.items() if k != next(iter(earlier))}, type(value))


def test_window_entries_and_the_registry_map_read_back_as_written() -> None:
    partial = {"model": "m", "n": 2}
    entry = open_entry(None, partial_slot(3, ""), partial, 5)
    entry = open_entry(entry, partial_slot(1, '["v9",{}]'), {**partial, "n": 1}, 5)
    assert entry == {"3": partial, "_mp": 5, '1|["v9",{}]': {**partial, "n": 1}}
    assert (entry_partials(entry), entry_home(entry), is_final(entry)) == ([partial, {**partial, "n": 1}], 5, False)
    assert final_entry(5) == {"_final": True, "_mp": 5} and is_final(final_entry(5))
    value = registry_value({"a": 10.0, "b": 20.5}, {"a": 2}, 7)
    assert value == {"a": [10.0, 2], "b": [20.5, 7]}
    assert read_registry(orjson.loads(orjson.dumps(value))) == {"a": (10.0, 2), "b": (20.5, 7)}
