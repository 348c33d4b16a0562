"""The partials topic's messages: each kind read back as written, messages of an earlier version
read by their keys, an earlier version's reader served by the keys it knows, and anything else
refused with its reason (then dead-lettered by the merge agent)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream.config import Config
from stream.kafka.merge_agent import Merge
from stream.kafka.messages import (
    VERSION,
    Ask,
    Decided,
    Forget,
    Heartbeat,
    Message,
    MessageError,
    Pairs,
    Partial,
    decode,
    encode,
)

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
