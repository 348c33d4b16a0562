"""The jar-started broker fails loudly, with its output or log, instead of hanging."""

from __future__ import annotations

import socket
import time

import pytest

from kafka_broker import BrokerStartError, free_port, jar_broker


def test_a_bad_setting_fails_at_format_with_kafkas_own_message() -> None:
    with pytest.raises(BrokerStartError, match=r"num\.network\.threads"), \
            jar_broker(extra_properties="num.network.threads=0\n"):
        pass


def test_a_broker_that_cannot_bind_exits_and_raises_with_the_tail_of_its_log() -> None:
    started = time.monotonic()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(BrokerStartError, match="log tail") as failure, \
                jar_broker(ports=(taken.getsockname()[1], free_port()), timeout_s=60):
            pass
    assert time.monotonic() - started < 70
    assert "Address already in use" in str(failure.value) or "exited with code" in str(failure.value)
