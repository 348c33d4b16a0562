"""The exceptions the core raises on purpose (re-exported with the others by :mod:`stream.errors`)."""

__all__ = ["ConfigError", "InvalidRecord", "MlmonError"]


class MlmonError(Exception):
    """Base class: catch this to handle any mlmon failure."""


class InvalidRecord(MlmonError):
    """An input record broke the contract in ``schemas/``; the message says how, for a dead letter."""


class ConfigError(MlmonError):
    """A config or rules file is wrong; the message names the key and what was expected."""
