"""Partition-level facts the consumer needs on any broker: where each log ends (from a fetch's
high watermark), and moving past a record batch that cannot be read at all."""

from __future__ import annotations

import time

from kafka import KafkaConsumer
from kafka.errors import CommitFailedError, CorruptRecordError, UnsupportedCodecError
from kafka.structs import OffsetAndMetadata, TopicPartition

#: what poll raises for a record batch it cannot read at all: no bytes to dead-letter
UNREADABLE = (CorruptRecordError, UnsupportedCodecError)


def log_ends(consumer: KafkaConsumer, parts: list[TopicPartition], timeout_s: float = 5.0) -> dict[TopicPartition, int]:
    """Each partition's log end from a fetch response's high watermark, right on any broker (the
    embedded Tansu broker's ``ListOffsets(latest)`` answers the last batch's start + 1). Leaves
    ``consumer`` assigned to ``parts``; where no fetch answers in time, ``ListOffsets`` is used."""
    listed = consumer.end_offsets(parts)
    consumer.assign(parts)
    for tp in parts:
        consumer.seek(tp, max(listed[tp] - 1, 0))  # inside the last batch: one small fetch
    deadline = time.monotonic() + timeout_s
    while any(consumer.highwater(tp) is None for tp in parts) and time.monotonic() < deadline:
        consumer.poll(timeout_ms=200, max_records=1)
    return {tp: max(consumer.highwater(tp) or 0, listed[tp]) for tp in parts}


def _readable(probe: KafkaConsumer, tp: TopicPartition, offset: int, polls: int = 3) -> bool:
    """Whether ``tp`` can be read from ``offset`` (True too when nothing is there to read)."""
    probe.assign([tp])
    probe.seek(tp, offset)
    for _ in range(polls):
        try:
            if probe.poll(timeout_ms=300, max_records=1):
                return True
        except UNREADABLE:
            return False
    return True


def skip_unreadable(consumer: KafkaConsumer, client_options: dict, log) -> int:
    """Find the assigned partition whose next record cannot be read, move ``consumer`` to the first
    readable offset after it and commit there (a restart never meets it again). A probe consumer
    outside the group does the reading, so the group's consumer only seeks. Returns the number of
    offsets skipped (0: nothing unreadable now)."""
    probe = KafkaConsumer(enable_auto_commit=False, **client_options)
    try:
        for tp in sorted(consumer.assignment(), key=lambda t: (t.topic, t.partition)):
            start = consumer.position(tp)
            if _readable(probe, tp, start):
                continue
            end = log_ends(probe, [tp])[tp]
            resume = next((o for o in range(start + 1, end) if _readable(probe, tp, o)), end)
            consumer.seek(tp, resume)
            log(f"skipped unreadable records {tp.topic}[{tp.partition}]@{start}..{resume - 1}")
            try:
                consumer.commit({tp: OffsetAndMetadata(resume, "", -1)})
            except CommitFailedError as exc:  # the group moved on: the next owner skips them too
                log(f"commit past the unreadable records failed ({exc})")
            return resume - start
        return 0
    finally:
        probe.close()
