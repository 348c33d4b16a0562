"""Shared fixtures: a session-scoped real Kafka broker, and markers by folder."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from kafka_broker import Broker, broker_address

# A faust app run by a test, and the churn soak run by hand: scripts, not test modules.
collect_ignore = ["integration/faust_counter_app.py", "integration/chaos/churn.py"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).parts
        if "integration" in parts:
            item.add_marker(pytest.mark.integration)
            if "chaos" in parts:
                item.add_marker(pytest.mark.chaos)
        elif item.get_closest_marker("slow") is None:  # tests/unit and the doctests in stream/
            item.add_marker(pytest.mark.unit)


_BROKERS: list[Broker] = []


@pytest.fixture(scope="session")
def kafka() -> Iterator[Broker]:
    """A real broker (see tests/kafka_broker.py for the order of choice), shared by the session."""
    with broker_address() as broker:
        _BROKERS.append(broker)
        yield broker


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for broker in _BROKERS:
        terminalreporter.write_line(
            f"integration tests ran against a real Kafka broker at {broker.bootstrap} ({broker.origin})"
        )


def pytest_report_header(config: pytest.Config) -> str:
    from kafka_broker import kafka_version

    return f"mlmon: integration tests use a real Kafka broker (default from jars, version {kafka_version()})"
