"""The scorer's output producers: two thin shells over Kafka clients with one contract, chosen by
``kafka.producer``. :class:`streaming.kafka_io.KafkaSink` sends a micro-batch's scores and dead
letters through one and replaces it when it fails.

* ``send(topic, records)`` queues ``(key, value, headers)`` records; ``flush(timeout)`` returns
  once every record sent since the last flush is acknowledged by every in-sync replica, or raises
  :class:`OutputsNotAcknowledged` saying how many were not; ``close(timeout)`` (0: drop what is
  queued).
* Both are idempotent producers with ``acks=all`` and place a keyed record where Kafka's default
  partitioner does (murmur2 of the key), so a user's scores keep one partition whichever client
  sent them (tested).
"""

from __future__ import annotations

import logging

from lantern.settings.kafka import KafkaConfig
from streaming.key_partitions import key_partitions
from streaming.sinks import OutputsNotAcknowledged

#: kafka-python's per-partition batch bytes: a micro-batch's scores (~2 KB each) travel in a few
#: requests, not one per 16 KB (its default) — ~1.8x the produce rate here (docs/performance.md)
PRODUCER_BATCH_BYTES = 1 << 20

Record = tuple[bytes | None, bytes, list[tuple[str, bytes]] | None]  # key, value, headers


class LibrdkafkaOutputs:
    """confluent-kafka's producer: each record is handed to librdkafka in C, which batches, sends
    and retries in its own threads; delivery reports are collected until the next flush."""

    def __init__(self, cfg: KafkaConfig):
        from confluent_kafka import Producer

        self.timeout_s = cfg.flush_timeout_s
        self.producer = Producer({
            **cfg.librdkafka_options(), "enable.idempotence": True, "acks": "all", "linger.ms": 2,
            "partitioner": "murmur2_random",  # Kafka's default partitioner (librdkafka's own is crc32)
            "message.timeout.ms": int(cfg.flush_timeout_s * 1000),  # undelivered by then: reported failed
            "reconnect.backoff.max.ms": 1000,  # a restarted broker is found within a second (default 10 s)
            "logger": logging.getLogger("lantern.kafka.librdkafka")})
        self.sent, self.failed = 0, []

    def _delivered(self, err, msg) -> None:
        if err is not None:
            self.failed.append(f"{msg.topic()}: {err.str()}")

    def send(self, topic: str, records: list[Record]) -> None:
        from confluent_kafka import KafkaException

        produce, delivered = self.producer.produce, self._delivered
        try:
            for key, value, headers in records:
                try:
                    produce(topic, value, key, headers=headers, on_delivery=delivered)
                except BufferError:  # librdkafka's queue is full: serve delivery reports, then again
                    self.producer.poll(self.timeout_s)
                    produce(topic, value, key, headers=headers, on_delivery=delivered)
        except (KafkaException, BufferError) as exc:
            raise OutputsNotAcknowledged(f"producing the batch's outputs failed: {exc!r}") from exc
        self.sent += len(records)

    def flush(self, timeout_s: float) -> None:
        left = self.producer.flush(timeout_s)
        sent, failed, self.sent, self.failed = self.sent, self.failed, 0, []
        if left:
            raise OutputsNotAcknowledged(f"{left} of {sent} outputs not acknowledged in {timeout_s:g} s")
        if failed:
            raise OutputsNotAcknowledged(f"{len(failed)} of {sent} outputs failed: {failed[0]}")

    def close(self, timeout_s: float | None = None) -> None:
        if timeout_s == 0:
            self.producer.purge()  # queued and in-flight records are dropped, not sent later
        self.producer.flush(self.timeout_s if timeout_s is None else timeout_s)


class KafkaPythonOutputs:
    """kafka-python's producer. Its partitioner hashes one key at a time in Python, so each
    record's partition is computed for the whole batch (``key_partitions``) and passed along."""

    def __init__(self, cfg: KafkaConfig):
        from kafka import KafkaProducer

        self.producer = KafkaProducer(acks="all", enable_idempotence=True, linger_ms=2,
                                      batch_size=PRODUCER_BATCH_BYTES, max_block_ms=int(cfg.flush_timeout_s * 1000),
                                      **cfg.client_options())
        self.sent = []

    def send(self, topic: str, records: list[Record]) -> None:
        from kafka.errors import KafkaError

        try:
            partitions = self._partitions(topic, [key for key, _, _ in records])
            self.sent += [self.producer.send(topic, key=key, value=value, headers=headers, partition=partition)
                          for (key, value, headers), partition in zip(records, partitions)]
        except KafkaError as exc:  # no metadata / buffer full: the broker is away
            raise OutputsNotAcknowledged(f"producing the batch's outputs failed: {exc!r}") from exc

    def _partitions(self, topic: str, keys: list[bytes | None]) -> list[int | None]:
        if not keys or None in keys:  # a record without a key: the producer's partitioner picks
            return [None] * len(keys)
        partitions = sorted(self.producer.partitions_for(topic))
        return [partitions[i] for i in key_partitions(keys, len(partitions))]

    def flush(self, timeout_s: float) -> None:
        from kafka.errors import KafkaError

        sent, self.sent = self.sent, []
        try:
            self.producer.flush(timeout=timeout_s)
        except KafkaError as exc:  # flush timed out
            raise OutputsNotAcknowledged(f"producing the batch's outputs failed: {exc!r}") from exc
        failed = [f for f in sent if not f.succeeded()]
        if failed:
            first = failed[0].exception if failed[0].is_done else "not acknowledged in time"
            raise OutputsNotAcknowledged(f"{len(failed)} of {len(sent)} outputs failed: {first}")

    def close(self, timeout_s: float | None = None) -> None:
        self.producer.close(timeout=timeout_s)


def outputs_producer(cfg: KafkaConfig) -> LibrdkafkaOutputs | KafkaPythonOutputs:
    """The producer ``kafka.producer`` names."""
    return LibrdkafkaOutputs(cfg) if cfg.producer == "librdkafka" else KafkaPythonOutputs(cfg)
