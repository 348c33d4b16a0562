"""Exporters at the edge: Prometheus (metrics topic, alerts topic and dead letters live in stream.kafka)."""
