"""Topics the monitor needs: created with the right partition counts, or a clear refusal."""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterable
from typing import Any

import faust
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic  # type: ignore[attr-defined]

from stream.config import Config
from stream.errors import ConfigError, TopologyError

__all__ = [
    "COMPACTED",
    "FAUST_SECURITY_KEYS",
    "client_settings",
    "describe_config",
    "ensure_topics",
    "faust_credentials",
    "partition_counts",
    "planned_topics",
]

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
        config.repartition_topic: (config.partitions, {}),
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
    """Create missing topics; return every topic's partition count. Input topics may have any
    count: an input with another count than ``partitions`` has all its records forwarded to their
    request's partition (see :mod:`stream.kafka.routing`)."""
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
    for name in (config.partials_topic, config.repartition_topic):  # mlmon's own: one partition per join partition
        if existing.get(name, config.partitions) != config.partitions:
            raise TopologyError(f"topic '{name}' has {existing[name]} partitions and this worker is configured for "
                                f"{config.partitions} (partitions): give the internal topics names of their own "
                                "(partials_topic, repartition_topic), or set partitions to match")
    return existing


def describe_config(config: Config, topic: str) -> dict[str, str]:
    admin = AdminClient(client_settings(config))
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    found = admin.describe_configs([resource])[resource].result(timeout=15)
    return {name: entry.value for name, entry in found.items()}


# librdkafka security settings that have a faust (aiokafka) equivalent; see docs/worker.md.
FAUST_SECURITY_KEYS = frozenset({
    "security.protocol", "sasl.mechanism", "sasl.mechanisms", "sasl.username", "sasl.password",
    "ssl.ca.location", "ssl.certificate.location", "ssl.key.location", "ssl.key.password",
    "ssl.endpoint.identification.algorithm",
})


def faust_credentials(config: Config) -> faust.types.auth.CredentialsT | None:
    """The same ``kafka_options`` (librdkafka names) as faust credentials, so the worker's faust
    clients connect the way the confluent-kafka clients do. Refuses what faust cannot do."""
    options = config.kafka_options
    security = (k for k in options if k.startswith(("security.", "sasl.", "ssl.")))
    unsupported = sorted(k for k in security if k not in FAUST_SECURITY_KEYS)
    if unsupported:
        raise ConfigError(f"kafka_options {', '.join(unsupported)} cannot be passed on to the faust worker; "
                          f"supported security settings: {', '.join(sorted(FAUST_SECURITY_KEYS))}")
    protocol = options.get("security.protocol", "PLAINTEXT").upper()
    if protocol not in ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"):
        raise ConfigError(f"kafka_options security.protocol {protocol!r} is not one of PLAINTEXT, SSL, "
                          "SASL_PLAINTEXT, SASL_SSL")
    context = None
    if protocol.endswith("SSL"):
        context = ssl.create_default_context(cafile=options.get("ssl.ca.location"))
        if "ssl.certificate.location" in options:
            context.load_cert_chain(options["ssl.certificate.location"], options.get("ssl.key.location"),
                                    options.get("ssl.key.password"))
        if options.get("ssl.endpoint.identification.algorithm", "https").lower() == "none":
            context.check_hostname = False
    if protocol.startswith("SASL"):
        mechanism = options.get("sasl.mechanism", options.get("sasl.mechanisms", "PLAIN")).upper()
        if mechanism not in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
            raise ConfigError(f"kafka_options sasl.mechanism {mechanism!r}: the worker supports PLAIN, "
                              "SCRAM-SHA-256 and SCRAM-SHA-512")
        return faust.SASLCredentials(username=options.get("sasl.username"), password=options.get("sasl.password"),
                                     mechanism=mechanism, ssl_context=context)
    if context is not None:
        return faust.SSLCredentials(context)
    return None
