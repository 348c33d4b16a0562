"""Every exception mlmon raises on purpose, in one place."""

from stream.core.errors import ConfigError, InvalidRecord, MlmonError

__all__ = ["ConfigError", "InvalidRecord", "MlmonError", "TopologyError"]


class TopologyError(MlmonError):
    """Kafka topics are missing or disagree (e.g. partition counts differ)."""
