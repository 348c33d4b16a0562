"""The pure monitoring core: no Kafka or faust import, shared by every adapter.

The pieces, in the order a record meets them: ``records`` (decode and validate), ``clock`` (broken
producer clocks), ``join`` (pair predictions with labels by request id; ``pending`` packs what
waits), ``windows`` (event-time assignment), ``series`` (a series' windows), ``confusion`` and
``metrics`` (exact figures), ``admission`` (limits on names), ``merge`` (partial states summed),
``rules`` (alerts), ``keys`` (keys that cannot collide), ``health`` (where every record went), and
``engine`` which wires them; ``snapshot`` keeps rolling windows across a worker's rebuild.
"""
