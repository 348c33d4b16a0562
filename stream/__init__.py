"""mlmon: a Kafka-native monitor of production ML model quality.

The public surface is small: :class:`Monitor` for programs and notebooks, :class:`Reporter` for
model services (predictions and labels to Kafka), the ``mlmon`` command, and the records in
``schemas/``. The pure core lives in ``stream.core``.
"""

from stream.api import Monitor, MonitorResult
from stream.reporter import Reporter, ReporterStats

__all__ = ["Monitor", "MonitorResult", "Reporter", "ReporterStats"]
