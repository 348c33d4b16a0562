"""Kafka adapters: topic administration, the load generator, output tails (and the faust worker)."""
