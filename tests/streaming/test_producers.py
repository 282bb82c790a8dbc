"""The scorer's two output producers (streaming/producers.py) on a real broker: the same records on
the same partitions with the same headers whichever client sends them, and a flush that cannot be
acknowledged raises within its timeout and leaves the sink a fresh producer."""

from __future__ import annotations

import time
import uuid
from dataclasses import replace

import pytest

from devtools.servers import free_port
from lantern.errors import ConfigError
from lantern.settings.kafka import PRODUCERS, KafkaConfig
from streaming.kafka_io import KafkaSink, ensure_topics
from streaming.key_partitions import key_partitions
from streaming.scoring import ScoredBatch
from streaming.sinks import OutputsNotAcknowledged
from tests.streaming.test_kafka_scorer import read_all

KEYS = [f"user-{i}".encode() for i in range(300)] + [b"", "é-ü".encode()]


def written(broker, producer: str) -> dict:
    """What one KafkaSink batch through ``producer`` put on a fresh 4-partition scores topic:
    key → (partition, value, headers)."""
    tag = uuid.uuid4().hex[:8]
    cfg = KafkaConfig(bootstrap=broker.bootstrap, input_topic=f"in-{tag}", scores_topic=f"scores-{tag}",
                      dlq_topic=f"dlq-{tag}", partitions=4, producer=producer)
    ensure_topics(cfg)
    sink = KafkaSink(cfg)
    try:
        sink.write(ScoredBatch(scores=[(key, b"score of " + key) for key in KEYS]))
        sink.flush()
    finally:
        sink.close()
    return {r.key: (r.partition, r.value) for r in read_all(broker.bootstrap, cfg.scores_topic, len(KEYS))}


def test_both_clients_place_every_key_where_kafkas_default_partitioner_does(broker):
    by_client = {producer: written(broker, producer) for producer in PRODUCERS}
    expected = dict(zip(KEYS, key_partitions(KEYS, 4)))
    for producer, records in by_client.items():
        assert len(records) == len(KEYS), producer  # every record once
        assert {key: partition for key, (partition, _) in records.items()} == expected, producer
        assert all(value == b"score of " + key for key, (_, value) in records.items())


def test_an_unacknowledged_flush_raises_in_time_and_the_sink_gets_a_fresh_producer():
    # librdkafka only: kafka-python's producer refuses to start without a broker at all
    cfg = KafkaConfig(bootstrap=f"127.0.0.1:{free_port()}", flush_timeout_s=1.5, producer="librdkafka")
    sink = KafkaSink(cfg)
    first = sink.producer
    sink.write(ScoredBatch(scores=[(b"user-1", b"lost")]))
    t0 = time.monotonic()
    with pytest.raises(OutputsNotAcknowledged, match="1 of 1 outputs"):
        sink.flush()
    assert time.monotonic() - t0 < 1.5 + 2.0  # the flush timeout, not librdkafka's retries
    assert sink.producer is not first
    sink.flush()  # the fresh producer owes nothing: nothing to acknowledge
    sink.close()


def test_an_unknown_producer_is_a_config_error_naming_the_choices():
    with pytest.raises(ConfigError, match="kafka.producer must be one of librdkafka, kafka-python"):
        replace(KafkaConfig(), producer="java")
