from __future__ import annotations

import pytest

from stream.config import Config
from stream.errors import ConfigError
from stream.kafka.worker import check_worker_config


def test_default_windows_are_narrowed_to_what_the_worker_supports() -> None:
    config = Config()
    check_worker_config(config)
    assert [w.name for w in config.windows] == ["tumbling_1h", "tumbling_1d"]


def test_configured_cumulative_windows_are_refused_with_a_reason() -> None:
    with pytest.raises(ConfigError, match="does not support cumulative"):
        check_worker_config(Config.from_mapping({"windows": ["tumbling 1h", "cumulative"]}))
