"""Keys built from series and windows never collide, whatever the names hold."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from stream.core.keys import fingerprint, record_key, segment_label

# Names made mostly of the characters the encodings use as separators or escapes.
names = st.text(alphabet=st.sampled_from(["a", "|", ",", "=", "\\", "\x00", '"', "[", "]", " "]), min_size=1,
                max_size=6)
segments = st.dictionaries(names, names, max_size=3)
series = st.tuples(names, names, segments, st.sampled_from(["tumbling_1h", "cumulative"]), st.integers(0, 2))


def record(s: tuple[str, str, dict[str, str], str, int]) -> dict[str, object]:
    return {"model": s[0], "model_version": s[1], "segment": s[2], "window": {"name": s[3], "start": s[4]}}


@given(series, series)
def test_two_record_keys_are_equal_only_for_one_series_and_window(a: tuple, b: tuple) -> None:  # type: ignore[type-arg]
    assert (record_key(record(a)) == record_key(record(b))) == (a == b)


@given(segments, segments)
def test_two_segment_labels_are_equal_only_for_one_segment(a: dict[str, str], b: dict[str, str]) -> None:
    assert (segment_label(a) == segment_label(b)) == (a == b)


@given(st.dictionaries(names, names, max_size=4), st.dictionaries(names, names, max_size=4))
def test_two_fingerprints_are_equal_only_for_one_label_set(a: dict[str, str], b: dict[str, str]) -> None:
    assert (fingerprint(a) == fingerprint(b)) == (a == b)


def test_the_reported_collision_is_two_keys() -> None:
    one = {"model": "hc|x", "model_version": "y", "segment": {}, "window": {"name": "tumbling_1h", "start": 0}}
    other = {**one, "model": "hc", "model_version": "x|y"}
    assert record_key(one) != record_key(other)
