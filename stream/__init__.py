"""mlmon: a Kafka-native monitor of production ML model quality.

The public surface is small: :class:`Monitor` for programs and notebooks, the ``mlmon`` command,
and the records in ``schemas/``. The pure core lives in ``stream.core``.
"""

from stream.api import Monitor, MonitorResult

__all__ = ["Monitor", "MonitorResult"]
