"""Shared fixtures: a session-scoped real Kafka broker, and markers by folder."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from kafka_broker import Broker, broker_address  # noqa: E402


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).parts
        if "unit" in parts:
            item.add_marker(pytest.mark.unit)
        elif "integration" in parts:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def kafka() -> Iterator[Broker]:
    """A real broker (see tests/kafka_broker.py for the order of choice), shared by the session."""
    with broker_address() as broker:
        print(f"\n[mlmon tests] Kafka broker at {broker.bootstrap} ({broker.origin})", file=sys.stderr)
        yield broker


def pytest_report_header(config: pytest.Config) -> str:
    from kafka_broker import kafka_version

    return f"mlmon: integration tests use a real Kafka broker (default from jars, version {kafka_version()})"
