"""Every exception mlmon raises on purpose, in one place."""


class MlmonError(Exception):
    """Base class: catch this to handle any mlmon failure."""


class InvalidRecord(MlmonError):
    """An input record broke the contract in ``schemas/``; the message says how, for a dead letter."""


class ConfigError(MlmonError):
    """A config or rules file is wrong; the message names the key and what was expected."""


class TopologyError(MlmonError):
    """Kafka topics are missing or disagree (e.g. partition counts differ)."""
