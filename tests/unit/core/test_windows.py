from __future__ import annotations

import pytest

from stream.core.windows import WindowSpec, parse_duration_s
from stream.errors import ConfigError


def test_tumbling_windows_align_to_the_epoch() -> None:
    spec = WindowSpec.parse("tumbling 1h")
    assert spec.starts(7199.9) == [3600]
    assert spec.starts(7200.0) == [7200]
    assert spec.describe(3600) == {"kind": "tumbling", "name": "tumbling_1h", "size_s": 3600,
                                   "start": 3600, "end": 7200}


def test_hopping_windows_cover_every_instant_size_over_hop_times() -> None:
    spec = WindowSpec.parse({"kind": "hopping", "size": "1h", "hop": "15m"})
    for ts in (0.0, 899.9, 900.0, 5000.5, 86399.0):
        starts = spec.starts(ts)
        assert len(starts) == 4
        assert all(s <= ts < s + 3600 and s % 900 == 0 for s in starts)


def test_rolling_and_cumulative() -> None:
    assert WindowSpec.parse("rolling 500").name == "rolling_500"
    assert WindowSpec.parse({"kind": "rolling", "size_n": 10}).timed is False
    assert WindowSpec.parse("cumulative").starts(123.0) == [0]


@pytest.mark.parametrize("bad", ["weekly", {"kind": "tumbling"}, {"kind": "rolling", "size_n": 0},
                                 {"kind": "hopping", "size": "1h", "hop": "7m"}, {"kind": "tumbling", "size": "-1h"}])
def test_bad_windows_are_config_errors(bad: object) -> None:
    with pytest.raises(ConfigError):
        WindowSpec.parse(bad)


def test_durations() -> None:
    assert [parse_duration_s(v) for v in ("90s", "15m", "1h", "1d", "2w", 30, "45")] == [
        90, 900, 3600, 86400, 1209600, 30, 45]
    with pytest.raises(ConfigError):
        parse_duration_s("1.5h")
