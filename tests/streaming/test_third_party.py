"""A third-party client against the scorer: librdkafka (confluent-kafka) produces in every codec
Kafka defines, with its own default partitioner and its own headers, 300 valid sessions and a
dozen kinds of bad input; the scorer (kafka-python) scores and dead-letters them; librdkafka
reads everything back. No partition stalls: the group's committed offsets reach every log end."""

from __future__ import annotations

import json
import uuid

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition
from kafka import KafkaConsumer
from kafka.structs import TopicPartition as KpTopicPartition

from streaming.events import sessions_to_events
from streaming.kafka_io import KafkaConfig, KafkaScorer, ensure_topics

TRACE = ("traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")


def bad_inputs(events: list[tuple[bytes, bytes]]) -> list[tuple[bytes | None, bytes, str]]:
    """(key, value, the class it must be dead-lettered with): 13 kinds."""
    key, raw = events[0]
    good = json.loads(raw)

    def session(**change) -> bytes:
        sid = "bad-" + uuid.uuid4().hex[:6]
        return json.dumps({**good, "session_id": sid, "event_id": sid, **change}).encode()

    return [
        (key, b"{not json", "bad_json"),
        (key, "\ufeff".encode() + raw, "bad_json"),
        (key, raw.decode().encode("utf-16"), "bad_json"),
        (key, raw.replace(b'"schema_version":1', b'"schema_version":1,"x":NaN'), "bad_json"),
        (key, session(schema_version=True), "wrong_types"),
        (key, session(schema_version=2), "unknown_schema_version"),
        (key, session(event_id="not-the-session"), "wrong_types"),
        (key, session(answers=[]), "empty_answers"),
        (key, session(answers=[{"question_id": "nope", "option_ids": ["o1"]}]), "unknown_question"),
        (key, session(answers=[{"question_id": "q01", "option_ids": ["o99"]}]), "unknown_option"),
        (key, session(answers=[{"question_id": "q01", "option_ids": ["o1", "o2"]}]), "single_select"),
        (key, raw + b" " * 70_000, "oversized"),
        (b"somebody-else", session(), "key_mismatch"),
    ]


def produce(bootstrap: str, topic: str, items, codec: str) -> dict[int, int]:
    """librdkafka with its defaults (partitioner consistent_random: CRC32 of the key) and the
    given codec; returns each partition's log end from the delivery reports."""
    ends: dict[int, int] = {}
    errors: list = []

    def delivered(err, msg):
        if err is not None:
            errors.append(err)
        else:
            ends[msg.partition()] = max(ends.get(msg.partition(), 0), msg.offset() + 1)

    producer = Producer({"bootstrap.servers": bootstrap, "compression.type": codec, "linger.ms": 20})
    for key, value in items:
        producer.produce(topic, key=key, value=value, headers=[TRACE], on_delivery=delivered)
    assert producer.flush(30) == 0 and not errors, errors
    return ends


def read_back(bootstrap: str, topic: str, partitions: int, expect: int) -> list:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "reader-" + uuid.uuid4().hex[:6],
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    got, empty = [], 0
    while len(got) < expect and empty < 20:
        msg = consumer.poll(1.0)
        if msg is None:
            empty += 1
        elif msg.error():
            raise KafkaException(msg.error())
        else:
            got.append(msg)
    consumer.close()
    return got


def committed(bootstrap: str, cfg: KafkaConfig, partitions: int) -> dict[int, int]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=cfg.group_id, enable_auto_commit=False)
    try:
        return {p: consumer.committed(KpTopicPartition(cfg.input_topic, p)) or 0 for p in range(partitions)}
    finally:
        consumer.close()


@pytest.mark.slow
@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_librdkafka_in_every_codec_scored_dead_lettered_and_committed(small_ds, broker, scorer, codec):
    tag = uuid.uuid4().hex[:8]
    cfg = KafkaConfig(bootstrap=broker.bootstrap, input_topic=f"in-{tag}", scores_topic=f"scores-{tag}",
                      dlq_topic=f"dlq-{tag}", group_id=f"scorer-{tag}", partitions=4, max_poll_records=64)
    ensure_topics(cfg)
    events = sessions_to_events(small_ds.sessions.slice(0, 300))
    bad = bad_inputs(events)
    items = events[:150] + [(k, v) for k, v, _ in bad] + events[150:]
    ends = produce(broker.bootstrap, cfg.input_topic, items, codec)
    assert len(ends) > 1  # librdkafka's partitioner spread the users

    stats = KafkaScorer(scorer, cfg, max_events=len(items), idle_exit_s=30).run()
    assert (stats.consumed, stats.scored, stats.dead_lettered) == (len(items), 300, len(bad))

    scores = read_back(broker.bootstrap, cfg.scores_topic, cfg.partitions, 300)
    assert sorted(json.loads(m.value())["session_id"] for m in scores) == sorted(
        json.loads(v)["session_id"] for _, v in events)
    dead = read_back(broker.bootstrap, cfg.dlq_topic, 1, len(bad))
    assert sorted(dict(m.headers())["lantern.error.class"].decode() for m in dead) == sorted(c for _, _, c in bad)
    assert all(m.headers()[0] == TRACE for m in dead)  # the producer's own header, first
    assert sorted(m.value() for m in dead) == sorted(v for _, v, _ in bad)  # the original bytes
    assert committed(broker.bootstrap, cfg, cfg.partitions) == {p: ends.get(p, 0) for p in range(cfg.partitions)}


@pytest.mark.slow
def test_an_unreadable_batch_at_the_head_is_moved_past_after_a_restart(small_ds, broker, scorer, monkeypatch):
    """gzip, then an lz4 batch this process cannot decompress, then gzip, on one partition: a scorer
    set to stop halts at it (the old behaviour: stuck on every restart); restarted with the default
    policy it skips exactly that batch's offsets, commits past them and scores the rest."""
    from dataclasses import replace

    from kafka import codec

    import streaming.kafka_io as kafka_io

    tag = uuid.uuid4().hex[:8]
    cfg = KafkaConfig(bootstrap=broker.bootstrap, input_topic=f"in-{tag}", scores_topic=f"scores-{tag}",
                      dlq_topic=f"dlq-{tag}", group_id=f"scorer-{tag}", partitions=1, max_poll_records=64)
    ensure_topics(cfg)
    events = sessions_to_events(small_ds.sessions.slice(0, 50))
    produce(broker.bootstrap, cfg.input_topic, events[:20], "gzip")
    produce(broker.bootstrap, cfg.input_topic, events[20:30], "lz4")
    ends = produce(broker.bootstrap, cfg.input_topic, events[30:], "gzip")
    monkeypatch.setattr(codec, "has_lz4", lambda: False)  # as if its library broke: lz4 batches are unreadable
    monkeypatch.setattr(kafka_io, "check_codecs", lambda: None)

    from streaming.partitions import UNREADABLE

    with pytest.raises(UNREADABLE):
        KafkaScorer(scorer, replace(cfg, unreadable_batches="stop"), max_events=50, idle_exit_s=20).run()
    assert committed(broker.bootstrap, cfg, 1)[0] == 20  # the first batch went through, then it stopped

    stats = KafkaScorer(scorer, cfg, max_events=30, idle_exit_s=20).run()
    assert (stats.scored, stats.skipped_unreadable, stats.consumed) == (20, 10, 30)
    assert committed(broker.bootstrap, cfg, 1) == {0: ends[0]} == {0: 50}
    scored = {json.loads(m.value())["session_id"] for m in read_back(broker.bootstrap, cfg.scores_topic, 1, 40)}
    assert scored == {json.loads(v)["session_id"] for _, v in events[:20] + events[30:]}
