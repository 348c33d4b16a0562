"""A real Apache Kafka broker for the test suite, without Docker.

Order of choice (see ``broker_address``): ``KAFKA_BOOTSTRAP_SERVERS`` if set; testcontainers'
Kafka if a Docker engine answers; otherwise Kafka's own jars, fetched once by Maven from
Maven Central into ``.cache/kafka/<version>/`` (git-ignored) and started in KRaft combined
mode on free loopback ports, with its data and logs in a temporary folder.
"""

from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
POM = ROOT / "tests" / "kafka" / "pom.xml"
CACHE = ROOT / ".cache" / "kafka"
DEFAULT_KAFKA_VERSION = "4.4.0"
START_TIMEOUT_S = 90.0


class BrokerStartError(RuntimeError):
    """The broker did not come up; the message carries the tail of its log."""


@dataclass(frozen=True)
class Broker:
    bootstrap: str
    origin: str  # "env", "testcontainers" or "jars <version>"


def kafka_version() -> str:
    return os.environ.get("KAFKA_VERSION", DEFAULT_KAFKA_VERSION)


def fetch_jars(version: str) -> Path:
    """Download Kafka's jars once; later runs find the marker and skip Maven entirely."""
    libs = CACHE / version / "libs"
    marker = CACHE / version / ".complete"
    if marker.exists():
        return libs
    shutil.rmtree(libs, ignore_errors=True)
    cmd = [
        "mvn", "-q", "-B", "-f", str(POM), f"-Dkafka.version={version}",
        "dependency:copy-dependencies", f"-DoutputDirectory={libs}",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BrokerStartError(
            f"Maven could not fetch Kafka {version}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
        )
    marker.write_text(version)
    return libs


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _server_properties(data_dir: Path, broker_port: int, controller_port: int) -> str:
    return "\n".join([
        "process.roles=broker,controller",
        "node.id=1",
        f"controller.quorum.voters=1@127.0.0.1:{controller_port}",
        f"listeners=PLAINTEXT://127.0.0.1:{broker_port},CONTROLLER://127.0.0.1:{controller_port}",
        f"advertised.listeners=PLAINTEXT://127.0.0.1:{broker_port}",
        "controller.listener.names=CONTROLLER",
        "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name=PLAINTEXT",
        f"log.dirs={data_dir}",
        "num.partitions=1",
        "offsets.topic.replication.factor=1",
        "offsets.topic.num.partitions=4",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "share.coordinator.state.topic.replication.factor=1",
        "group.initial.rebalance.delay.ms=0",
        "auto.create.topics.enable=true",
        "log.flush.interval.messages=100000",
        "",
    ])


_LOG4J2 = """\
status = error
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.apache.name = org.apache
logger.apache.level = WARN
"""


def _tail(path: Path, lines: int = 40) -> str:
    if not path.exists():
        return "(no log written)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _java(libs: Path, work: Path, main: str, *args: str) -> list[str]:
    return [
        "java", "-Xms256m", "-Xmx1g", "-XX:+UseG1GC",
        f"-Dlog4j2.configurationFile={work / 'log4j2.properties'}",
        f"-Dkafka.logs.dir={work}", "-cp", f"{libs}/*", main, *args,
    ]


def _wait_until_ready(proc: subprocess.Popen[bytes], port: int, log: Path, log_from: int, timeout_s: float) -> None:
    """Until the broker's port answers and its log, past ``log_from`` bytes, says it started."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BrokerStartError(f"Kafka exited with code {proc.returncode}; log tail:\n{_tail(log)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1), log.open("rb") as text:
                text.seek(log_from)
                if b"Kafka Server started" in text.read():
                    return
        except OSError:
            pass
        time.sleep(0.25)
    proc.kill()
    raise BrokerStartError(f"Kafka did not start within {timeout_s:.0f} s; log tail:\n{_tail(log)}")


class JarBroker:
    """Kafka from its jars in KRaft combined mode, in a folder of its own. ``stop()`` then
    ``start()`` keeps its data and ports: the fault tests stop the broker under load."""

    def __init__(self, version: str | None = None, extra_properties: str = "",
                 ports: tuple[int, int] | None = None) -> None:
        self.version = version or kafka_version()
        self.libs = fetch_jars(self.version)
        self.work = Path(tempfile.mkdtemp(prefix="mlmon-kafka-"))
        self.log = self.work / "server.log"
        (self.work / "log4j2.properties").write_text(_LOG4J2.format(log=self.log))
        self.port, controller_port = ports or (free_port(), free_port())
        self.props = self.work / "server.properties"
        self.props.write_text(_server_properties(self.work / "data", self.port, controller_port) + extra_properties)
        self.proc: subprocess.Popen[bytes] | None = None
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        cluster = f"--cluster-id={cluster_id}"  # one argument: an id may start with "-" (1 in 64 did, in CI)
        fmt = subprocess.run(
            _java(self.libs, self.work, "kafka.tools.StorageTool", "format", cluster, "-c", str(self.props)),
            capture_output=True, text=True, check=False,
        )
        if fmt.returncode != 0:
            self.remove()
            raise BrokerStartError(f"kafka.tools.StorageTool format failed:\n{fmt.stdout[-3000:]}{fmt.stderr[-3000:]}")

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = START_TIMEOUT_S) -> Broker:
        log_from = self.log.stat().st_size if self.log.exists() else 0
        with open(self.work / "stdout.log", "ab") as out:
            self.proc = subprocess.Popen(
                _java(self.libs, self.work, "kafka.Kafka", str(self.props)), stdout=out, stderr=subprocess.STDOUT,
            )
        _wait_until_ready(self.proc, self.port, self.log, log_from, timeout_s)
        return Broker(self.bootstrap, f"jars {self.version}")

    def stop(self, timeout_s: float = 30.0) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.work, ignore_errors=True)


@contextmanager
def jar_broker(
    version: str | None = None, timeout_s: float = START_TIMEOUT_S, extra_properties: str = "",
    ports: tuple[int, int] | None = None,
) -> Iterator[Broker]:
    """Start Kafka from its jars in KRaft combined mode; stop it and remove its files at exit."""
    broker = JarBroker(version, extra_properties, ports)
    try:
        yield broker.start(timeout_s)
    finally:
        broker.remove()


def docker_answers() -> bool:
    try:
        import docker  # type: ignore[import-untyped]

        docker.from_env(timeout=3).ping()
        return True
    except Exception:  # any failure means: no usable engine
        return False


@contextmanager
def broker_address() -> Iterator[Broker]:
    """Yield a real broker, chosen as the module docstring says."""
    env = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if env:
        yield Broker(env, "env")
        return
    if docker_answers():
        from testcontainers.kafka import KafkaContainer  # type: ignore[import-untyped]

        with KafkaContainer(f"apache/kafka:{kafka_version()}").with_kraft() as kafka:
            yield Broker(kafka.get_bootstrap_server(), "testcontainers")
        return
    with jar_broker() as broker:
        yield broker
