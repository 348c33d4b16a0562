"""Topics the monitor needs: created with the right partition counts, or a clear refusal."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic  # type: ignore[attr-defined]

from stream.config import Config
from stream.errors import TopologyError

COMPACTED = {"cleanup.policy": "compact"}


def client_settings(config: Config) -> dict[str, Any]:
    """librdkafka settings shared by every confluent-kafka client (admin, producer, consumer)."""
    return {"bootstrap.servers": config.broker, **config.kafka_options}


def planned_topics(config: Config) -> dict[str, tuple[int, dict[str, str]]]:
    """name -> (partitions, topic configs). Inputs are co-partitioned; outputs are compacted upserts."""
    return {
        config.predictions_topic: (config.partitions, {}),
        config.labels_topic: (config.partitions, {}),
        config.metrics_topic: (config.partitions, COMPACTED),
        config.alerts_topic: (config.partitions, {}),
        config.dead_letters_topic: (1, {}),
        config.health_topic: (1, COMPACTED),
        config.partials_topic: (config.partitions, {}),
    }


def partition_counts(admin: AdminClient, timeout_s: float = 15.0) -> dict[str, int]:
    try:
        metadata = admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise TopologyError(f"cannot reach Kafka to read topic metadata: {exc}") from None
    return {name: len(topic.partitions) for name, topic in metadata.topics.items() if not topic.error}


def _wait_for_topics(admin: AdminClient, names: Iterable[str], timeout_s: float) -> dict[str, int]:
    """Metadata can lag a moment behind topic creation: read it until every topic shows."""
    deadline = time.monotonic() + timeout_s
    while True:
        existing = partition_counts(admin)
        missing = [name for name in names if name not in existing]
        if not missing:
            return existing
        if time.monotonic() > deadline:
            raise TopologyError(f"topics {missing} were created but do not show in the broker's metadata")
        time.sleep(0.2)


def ensure_topics(config: Config, timeout_s: float = 30.0) -> dict[str, int]:
    """Create missing topics; refuse input topics whose partition counts differ (a join needs
    co-partitioned inputs: same count, same key bytes, same partitioner)."""
    admin = AdminClient(client_settings(config))
    existing = partition_counts(admin)
    missing = [
        NewTopic(name, num_partitions=partitions, replication_factor=config.replication_factor, config=settings)
        for name, (partitions, settings) in planned_topics(config).items() if name not in existing
    ]
    if missing:
        for name, future in admin.create_topics(missing, request_timeout=timeout_s).items():
            try:
                future.result(timeout=timeout_s)
            except KafkaException as exc:
                if "TOPIC_ALREADY_EXISTS" not in str(exc):
                    raise TopologyError(f"cannot create topic '{name}': {exc}") from None
        existing = _wait_for_topics(admin, planned_topics(config), timeout_s)
    inputs = {t: existing.get(t) for t in (config.predictions_topic, config.labels_topic)}
    if len(set(inputs.values())) != 1:
        detail = ", ".join(f"'{t}' has {n} partitions" for t, n in inputs.items())
        raise TopologyError(
            f"the input topics must be co-partitioned to be joined by request_id, but {detail}; "
            "recreate one of them with the same partition count"
        )
    return existing


def describe_config(config: Config, topic: str) -> dict[str, str]:
    admin = AdminClient(client_settings(config))
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    found = admin.describe_configs([resource])[resource].result(timeout=15)
    return {name: entry.value for name, entry in found.items()}
