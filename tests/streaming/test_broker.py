"""The broker launcher: embedded Tansu round trip, a given address used as-is, the Docker path
where an engine exists, and `lantern broker` as a process that stops cleanly."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from devtools.broker import docker_reachable, embedded_broker, launch_broker
from lantern.settings.kafka import KafkaConfig


def round_trip(bootstrap: str, n: int = 200) -> int:
    topic = f"t-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic, num_partitions=4, replication_factor=1)])
    admin.close()
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for i in range(n):
        producer.send(topic, key=f"u{i % 17}".encode(), value=f"{i}".encode())
    producer.flush()
    producer.close()
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=f"g-{topic}", auto_offset_reset="earliest",
                             enable_auto_commit=False, **KafkaConfig().group_options())
    seen, deadline = set(), time.monotonic() + 30
    while len(seen) < n and time.monotonic() < deadline:
        for records in consumer.poll(500).values():
            seen.update(int(r.value) for r in records)
    consumer.commit()
    consumer.close()
    return len(seen)


def port_open(address: str) -> bool:
    host, port = address.split(":")
    try:
        socket.create_connection((host, int(port)), timeout=0.5).close()
        return True
    except OSError:
        return False


def test_embedded_broker_round_trips_and_stops_leaving_no_log_behind():
    with embedded_broker() as broker:
        assert broker.kind == "embedded" and broker.bootstrap.startswith("127.0.0.1:")
        assert round_trip(broker.bootstrap) == 200
        assert broker.log.exists()
    assert not port_open(broker.bootstrap)
    assert not broker.log.parent.exists()  # the run directory goes with the broker


def test_a_kept_broker_log_stays_for_reading():
    with embedded_broker(keep_logs=True) as broker:
        pass
    try:
        assert broker.log.exists()
    finally:
        import shutil

        shutil.rmtree(broker.log.parent)


def test_a_given_bootstrap_is_used_as_is():
    with launch_broker("127.0.0.1:1", docker=True) as broker:  # nothing is started
        assert (broker.bootstrap, broker.kind) == ("127.0.0.1:1", "external")


def test_without_docker_the_launcher_falls_back_to_the_embedded_broker():
    with launch_broker(None, docker=False) as broker:
        assert broker.kind == "embedded" and port_open(broker.bootstrap)


@pytest.mark.skipif(not docker_reachable(), reason="no Docker engine reachable: testcontainers' Kafka path "
                    "not exercised on this machine (the embedded broker path is)")
def test_docker_path_runs_real_kafka():
    with launch_broker(None) as broker:
        assert broker.kind == "testcontainers"
        assert round_trip(broker.bootstrap) == 200


def test_lantern_broker_command_prints_the_address_and_stops_on_sigint():
    exe = Path(sys.executable).with_name("lantern")
    env = {k: v for k, v in __import__("os").environ.items() if k != "KAFKA_BOOTSTRAP"}
    proc = subprocess.Popen([str(exe), "broker"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env=env)
    try:
        address = proc.stdout.readline().strip()
        assert address.startswith("127.0.0.1:"), address
        assert round_trip(address, 20) == 20
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
        assert not port_open(address)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_killed_lantern_broker_leaves_no_broker_behind():
    exe = Path(sys.executable).with_name("lantern")
    env = {k: v for k, v in __import__("os").environ.items() if k != "KAFKA_BOOTSTRAP"}
    proc = subprocess.Popen([str(exe), "broker"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env=env)
    address = proc.stdout.readline().strip()
    assert port_open(address)
    proc.kill()  # SIGKILL: no cleanup code runs in the parent
    proc.wait(10)
    deadline = time.monotonic() + 10
    while port_open(address) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not port_open(address)


def test_log_ends_come_from_the_fetch_high_watermark():
    from kafka.structs import TopicPartition

    from streaming.partitions import log_ends

    with embedded_broker() as broker:
        topic = f"ends-{uuid.uuid4().hex[:6]}"
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
        for batch in range(5):  # several record batches: ListOffsets on Tansu counts the last one's start
            for i in range(batch * 15, min(73, (batch + 1) * 15)):
                producer.send(topic, value=str(i).encode(), partition=0)
            producer.flush()
        producer.close()
        consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False)
        tp = TopicPartition(topic, 0)
        listed = consumer.end_offsets([tp])[tp]
        assert log_ends(consumer, [tp]) == {tp: 73}
        consumer.close()
    assert listed <= 73  # the embedded broker answers ListOffsets with the last batch's start + 1
