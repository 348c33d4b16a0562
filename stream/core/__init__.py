"""The pure monitoring core: no Kafka or faust import, shared by every adapter.

The pieces, in the order a record meets them: ``records`` (decode and validate),
``join`` (pair predictions with labels by request id), ``windows`` (event-time assignment),
``confusion`` and ``metrics`` (exact figures), ``rules`` (alerts), and ``engine`` which wires them.
"""
