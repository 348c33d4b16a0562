from __future__ import annotations

import ctypes
import os
from pathlib import Path

import faust
import pytest

from stream.config import Config
from stream.core.windows import WindowSpec
from stream.errors import ConfigError
from stream.kafka.admin import faust_credentials
from stream.kafka.cumulative import engine_windows
from stream.kafka.memory import glibc, return_free_memory


def test_a_cumulative_window_is_counted_from_the_smallest_tumbling_one_or_a_hidden_hour() -> None:
    def engines(*windows: str) -> list[str]:
        return [w.name for w in engine_windows([WindowSpec.parse(w) for w in windows])]

    assert engines("tumbling 1d", "tumbling 1h", "cumulative") == ["tumbling_1d", "tumbling_1h"]
    assert engines("tumbling 1h", "cumulative") == ["tumbling_1h"]
    hopping = WindowSpec.parse({"kind": "hopping", "size": "1h", "hop": "15m"})
    assert [w.name for w in engine_windows([hopping, WindowSpec("cumulative")])] == ["hopping_1h_15m", "tumbling_1h"]
    assert engines("tumbling 5m") == ["tumbling_5m"]


def test_sasl_options_become_faust_credentials() -> None:
    config = Config()
    config.kafka_options = {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "SCRAM-SHA-512",
                            "sasl.username": "mlmon", "sasl.password": "pw"}
    credentials = faust_credentials(config)
    assert isinstance(credentials, faust.SASLCredentials)
    assert (credentials.username, credentials.password, credentials.mechanism.value) == ("mlmon", "pw", "SCRAM-SHA-512")
    assert credentials.ssl_context is None
    config.kafka_options["security.protocol"] = "SASL_SSL"
    assert faust_credentials(config).ssl_context is not None  # type: ignore[union-attr]
    assert faust_credentials(Config()) is None


def test_security_options_faust_cannot_honour_are_refused_by_name() -> None:
    config = Config()
    config.kafka_options = {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "GSSAPI"}
    with pytest.raises(ConfigError, match="GSSAPI"):
        faust_credentials(config)
    config.kafka_options = {"sasl.oauthbearer.config": "x"}
    with pytest.raises(ConfigError, match=r"sasl\.oauthbearer\.config"):
        faust_credentials(config)


def resident_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(glibc() is None, reason="glibc's malloc only")
def test_free_pages_inside_the_heap_go_back_to_the_system() -> None:
    libc = glibc()
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    blocks = [libc.malloc(64 * 1024) for _ in range(2000)]  # under the mmap threshold: on the heap
    for block in blocks:
        ctypes.memset(block, 1, 64 * 1024)
    for block in blocks[::2]:  # holes between live blocks, as live objects pin a heap's pages
        libc.free(block)
    before = resident_bytes()
    return_free_memory()
    assert before - resident_bytes() > 40 << 20  # of the 62.5 MiB freed
    for block in blocks[1::2]:
        libc.free(block)


def test_the_broker_may_be_given_as_faust_users_write_it() -> None:
    assert Config.from_mapping({"broker": "kafka://k1:9092, kafka://k2:9092"}).broker == "k1:9092,k2:9092"
    assert Config.from_mapping({"broker": "k1:9092"}).broker == "k1:9092"
    with pytest.raises(ConfigError, match="expected host:port"):
        Config.from_mapping({"broker": "http://k1:9092"})


def test_the_consumer_refreshes_metadata_every_few_seconds() -> None:
    """A changelog counted as 0 partitions blocks table writes until the next metadata refresh
    (see worker.METADATA_MAX_AGE_MS): the worker's consumer refreshes every 5 s, not every 5 min."""
    from stream.kafka.worker import METADATA_MAX_AGE_MS, build_app

    assert build_app(Config()).conf.consumer_metadata_max_age_ms == METADATA_MAX_AGE_MS <= 5_000


def test_resident_memory_is_what_the_kernel_reports() -> None:
    from stream.kafka.memory import resident_bytes

    [line] = [line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmRSS:")]
    assert abs(resident_bytes() - int(line.split()[1]) * 1024) < 8 << 20
