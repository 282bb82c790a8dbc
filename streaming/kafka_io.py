"""Thin kafka-python shells: topics, replay, the group consumer, the Kafka sink, and
:class:`KafkaScorer` — :func:`streaming.loop.score_stream` over a ``KafkaConsumer`` and a
:class:`KafkaSink`.

At-least-once: per micro-batch, score → produce scores and dead letters (idempotent producer)
→ ``flush()`` → commit exactly the offsets just processed (streaming/loop.py).
"""

from __future__ import annotations

import threading
import time

from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError
from kafka.structs import TopicPartition
from tqdm.auto import tqdm

from lantern.settings.kafka import KafkaConfig
from streaming.codecs import check_codecs
from streaming.events import dlq_headers
from streaming.loop import LoopOptions, ScoreStats, Stopper, consume_loop, score_stream
from streaming.producers import outputs_producer
from streaming.scoring import ScoredBatch
from streaming.sinks import OutputsNotAcknowledged


def ensure_topics(cfg: KafkaConfig) -> None:
    admin = KafkaAdminClient(**cfg.client_options())
    try:
        existing = set(admin.list_topics())
        wanted = [NewTopic(t, num_partitions=n, replication_factor=1)
                  for t, n in ((cfg.input_topic, cfg.partitions), (cfg.scores_topic, cfg.partitions),
                               (cfg.dlq_topic, 1)) if t not in existing]
        if wanted:
            try:
                admin.create_topics(wanted)
            except TopicAlreadyExistsError:
                pass
    finally:
        admin.close()


def topic_partitions(consumer: KafkaConsumer, topic: str) -> list[TopicPartition]:
    return [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]


def assign_from_start(consumer: KafkaConsumer, topic: str) -> list[TopicPartition]:
    """Read every partition of ``topic`` from its first record, outside any group; returns them."""
    parts = topic_partitions(consumer, topic)
    if parts:
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
    return parts


def replay(cfg: KafkaConfig, events: list[tuple[bytes, bytes]], rate: float | None = None,
           progress: bool = True, sent_ms: list[int] | None = None) -> int:
    """Produce ``events`` to the input topic at ``rate`` events/s (None = as fast as possible).
    Each record's timestamp is its send time; with ``sent_ms`` given, those are appended to it."""
    ensure_topics(cfg)
    producer = KafkaProducer(acks="all", linger_ms=5, **cfg.client_options())
    t0 = time.perf_counter()
    try:
        for i, (key, value) in enumerate(tqdm(events, desc="replay", disable=not progress, mininterval=1.0)):
            if rate:
                ahead = t0 + i / rate - time.perf_counter()
                if ahead > 0:
                    time.sleep(ahead)
            now_ms = time.time_ns() // 1_000_000
            producer.send(cfg.input_topic, key=key, value=value, timestamp_ms=now_ms)
            if sent_ms is not None:
                sent_ms.append(now_ms)
        producer.flush()
    finally:
        producer.close()
    return len(events)


def group_consumer(cfg: KafkaConfig, group_id: str) -> KafkaConsumer:
    """A consumer group member for :func:`streaming.loop.consume_loop`: codecs checked first (a
    batch it cannot decompress must never reach poll()), topics created, nothing auto-committed."""
    check_codecs()
    ensure_topics(cfg)
    return KafkaConsumer(group_id=group_id, enable_auto_commit=False, auto_offset_reset="earliest",
                         max_poll_records=cfg.max_poll_records, **cfg.group_options(), **cfg.client_options())


def run_group(cfg: KafkaConfig, group_id: str, handle, stopper: Stopper | None = None,
              opts: LoopOptions | None = None) -> int:
    """:func:`streaming.loop.consume_loop` as a member of ``group_id``; records committed."""
    return consume_loop(group_consumer(cfg, group_id), cfg, handle, stopper or Stopper(), opts)


class KafkaSink:
    """Scores to the scores topic, dead letters (with their reason headers) to the DLQ topic,
    through the producer ``kafka.producer`` names (streaming/producers.py). ``flush`` waits for
    every send's acknowledgement; a producer that failed is replaced (an idempotent producer whose
    broker lost its state stays failed)."""

    def __init__(self, cfg: KafkaConfig):
        self.cfg, self.producer = cfg, outputs_producer(cfg)

    def write(self, batch: ScoredBatch) -> None:
        try:
            self.producer.send(self.cfg.scores_topic, [(key, value, None) for key, value in batch.scores])
            self.producer.send(self.cfg.dlq_topic, [
                (record.key, record.value, dlq_headers(error, record.topic, record.partition, record.offset,
                                                       record.headers))
                for record, error in batch.dead])
        except OutputsNotAcknowledged:
            self._replace()
            raise

    def flush(self) -> None:
        try:
            self.producer.flush(self.cfg.flush_timeout_s)
        except OutputsNotAcknowledged:
            self._replace()
            raise

    def _replace(self) -> None:
        self.producer.close(timeout_s=0)
        self.producer = outputs_producer(self.cfg)

    def close(self) -> None:
        self.producer.close()


class KafkaScorer:
    """Scores the input topic as a member of ``cfg.group_id`` into a :class:`KafkaSink` (or the
    ``sink`` given), until stopped (SIGTERM in the main thread, or :meth:`stop`)."""

    def __init__(self, scorer, cfg: KafkaConfig, max_events: int | None = None,
                 idle_exit_s: float | None = None, log=lambda msg: None, sink=None, metrics=None):
        self.scorer, self.cfg, self.sink, self.log, self.metrics = scorer, cfg, sink, log, metrics
        self.max_events, self.idle_exit_s = max_events, idle_exit_s
        self.stopper = Stopper()
        self.assigned = threading.Event()  # set once the group gave this consumer partitions

    def stop(self) -> None:
        self.stopper.stop()

    def run(self) -> ScoreStats:
        sink = self.sink or KafkaSink(self.cfg)
        opts = LoopOptions(self.max_events, self.idle_exit_s, log=self.log, on_assigned=self.assigned.set,
                           metrics=self.metrics)
        try:
            return score_stream(group_consumer(self.cfg, self.cfg.group_id), self.scorer, sink, self.cfg,
                                self.stopper, opts)
        finally:
            if self.sink is None:
                sink.close()
