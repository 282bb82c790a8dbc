"""Thin kafka-python shells: connection options, topics, replay, and the scorer loop.

At-least-once: per micro-batch, score → produce scores and dead letters (idempotent producer)
→ ``flush()`` → commit exactly the offsets just processed. Nothing is committed before its
outputs are acknowledged, so a crash re-delivers at most the batches in flight (two when the
scorer is remote and the loop pipelines).
"""

from __future__ import annotations

import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import CommitFailedError, KafkaError, TopicAlreadyExistsError
from kafka.structs import OffsetAndMetadata, TopicPartition
from tqdm.auto import tqdm

from lantern.errors import LanternError
from lantern.settings.kafka import KafkaConfig
from streaming.codecs import check_codecs
from streaming.events import dlq_headers
from streaming.partitions import UNREADABLE, skip_unreadable
from streaming.scoring import BatchScorer, Record


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


#: per-partition batch bytes: a micro-batch's scores (~2 KB each) travel in a few requests, not
#: one per 16 KB (kafka-python's default) — ~1.8x the produce rate here (docs/performance.md)
PRODUCER_BATCH_BYTES = 1 << 20


def outputs_producer(cfg: KafkaConfig) -> KafkaProducer:
    """The scorer's producer for scores and dead letters: idempotent, every replica acknowledged."""
    return KafkaProducer(acks="all", enable_idempotence=True, linger_ms=2, batch_size=PRODUCER_BATCH_BYTES,
                         max_block_ms=int(cfg.flush_timeout_s * 1000), **cfg.client_options())


@dataclass
class ScoreStats:
    consumed: int = 0
    scored: int = 0
    dead_lettered: int = 0
    degraded_batches: int = 0
    batches: int = 0
    skipped_unreadable: int = 0  # offsets moved past: records that could not be read at all
    latencies_s: list[float] = field(default_factory=list)  # per batch: poll → commit


#: a started batch's second half: wait for its outputs to be durable (raises
#: :class:`OutputsNotAcknowledged` when the broker did not take them)
Finish = Callable[[], None]


@dataclass
class _InFlight:
    """Batches polled and handled (or started), not committed yet; oldest first."""

    batches: deque = field(default_factory=deque)  # (polled, records, finish | None)

    def first_offsets(self) -> dict[TopicPartition, int]:
        """Per partition, the first offset no commit covers: where a retry starts again."""
        firsts: dict[TopicPartition, int] = {}
        for polled, _, _ in self.batches:
            for tp, msgs in polled.items():
                firsts.setdefault(tp, msgs[0].offset)
        return firsts


class _CompleteOnRevoke(ConsumerRebalanceListener):
    """Before partitions move, every batch in flight is finished and committed (``complete``), so
    the next owner starts after them; rebalances are logged so they are visible."""

    def __init__(self, log, complete: Callable[[], None], on_assigned: Callable[[], None] | None = None):
        self.log, self.complete, self.on_assigned = log, complete, on_assigned

    def on_partitions_revoked(self, revoked):
        if revoked:
            self.log(f"partitions revoked: {sorted(tp.partition for tp in revoked)}")
            self.complete()

    def on_partitions_assigned(self, assigned):
        if assigned:
            self.log(f"partitions assigned: {sorted(tp.partition for tp in assigned)}")
            if self.on_assigned is not None:
                self.on_assigned()


class Stopper:
    """Set by SIGTERM (main thread) or by :meth:`stop`; the loop finishes its batch, commits, leaves."""

    def __init__(self):
        self.stopping = False

    def stop(self, *_) -> None:
        self.stopping = True


class OutputsNotAcknowledged(LanternError):
    """The broker did not acknowledge a batch's outputs: its offsets must not be committed."""


def consume_loop(cfg: KafkaConfig, group_id: str, handle: Callable[[list[Record]], Finish | None], stopper: Stopper,
                 max_events: int | None = None, idle_exit_s: float | None = None, log=lambda msg: None,
                 topic: str | None = None, on_assigned: Callable[[], None] | None = None,
                 on_skipped: Callable[[int], None] | None = None) -> int:
    """Poll ``topic`` (default: the input topic) → ``handle(records)`` → commit exactly those
    offsets once the batch's outputs are durable. Returns the number of records committed.

    ``handle`` either leaves its outputs durable and returns None, or only starts the batch (e.g.
    sends it to a remote scorer) and returns its :data:`Finish`. Then, while there is a backlog
    (the poll returned a full ``max_poll_records`` batch), the loop runs two batches deep: it polls
    and starts the next batch before it finishes and commits the one before, so the scorer computes
    while this thread produces, flushes and commits. Below that, each batch is finished before the
    next poll, which lets the next batch fill instead of sending the scorer a trickle of small
    ones. Commits stay in order, each after its own batch's flush; before a rebalance moves
    partitions, every batch in flight is finished and committed.

    When finishing raises :class:`OutputsNotAcknowledged` (the broker is away) nothing more is
    committed: the consumer seeks back to the first uncommitted offsets and, after a backoff,
    polls the same records again, so the loop rides out a broker outage without losing or skipping.

    A record batch that cannot be read at all (bad CRC, a codec that cannot decompress it) has no
    bytes to dead-letter. With ``cfg.unreadable_batches == "skip"`` the loop finishes what is in
    flight, then moves past it to the first readable offset and commits there, logging the range
    and counting it (``on_skipped``, and in the return value): no partition stalls. ``"stop"``
    raises instead."""
    check_codecs()  # before joining: a batch it cannot decompress must never reach poll()
    ensure_topics(cfg)
    consumer = KafkaConsumer(group_id=group_id, enable_auto_commit=False, auto_offset_reset="earliest",
                             max_poll_records=cfg.max_poll_records, **cfg.group_options(), **cfg.client_options())
    inflight, consumed = _InFlight(), 0

    def complete(keep: int = 0) -> None:
        """Finish and commit batches in flight, oldest first, until ``keep`` are left."""
        nonlocal consumed
        while len(inflight.batches) > keep:
            polled, records, finish = inflight.batches[0]
            if finish is not None:
                finish()
            _commit(consumer, polled, log)
            inflight.batches.popleft()
            consumed += len(records)

    def complete_before_revoke() -> None:
        """Inside poll: kafka-python would swallow an exception raised here, so none is. A batch that
        cannot be finished stays uncommitted; after the rebalance every assigned partition restarts
        from its committed offset, so the next owner (or this consumer) gets it again."""
        try:
            complete()
        except Exception as exc:  # noqa: BLE001 - logged, and the batches are delivered again
            log(f"batches in flight not finished before a rebalance ({exc!r}); they will be delivered again")
            inflight.batches.clear()

    def move_past_unreadable(exc: Exception) -> None:
        """Finish and commit what is in flight (a skip's commit must not pass an uncommitted batch),
        then skip to the first readable offset; raises OutputsNotAcknowledged like ``complete``."""
        nonlocal consumed
        if cfg.unreadable_batches != "skip":
            raise exc
        log(f"a record batch cannot be read ({exc!r})")
        complete()
        skipped = skip_unreadable(consumer, cfg.client_options(), log)
        consumed += skipped
        if on_skipped is not None and skipped:
            on_skipped(skipped)
        if not skipped:  # nothing unreadable at the positions now: a transient fault
            time.sleep(backoff_s)

    consumer.subscribe([topic or cfg.input_topic], listener=_CompleteOnRevoke(log, complete_before_revoke, on_assigned))
    previous = signal.signal(signal.SIGTERM, stopper.stop) if _main_thread() else None
    idle_since, backoff_s = time.monotonic(), 0.5
    try:
        while not stopper.stopping and (max_events is None or consumed < max_events):
            try:
                try:
                    polled = consumer.poll(timeout_ms=0 if inflight.batches else 500)  # none waiting: finish the last
                except UNREADABLE as exc:
                    move_past_unreadable(exc)
                    continue
                if not polled and not inflight.batches:
                    if idle_exit_s is not None and time.monotonic() - idle_since > idle_exit_s:
                        break
                    continue
                if polled:
                    records = [Record(tp.topic, tp.partition, m.offset, m.key, m.value, m.timestamp,
                                      tuple(m.headers or ())) for tp, msgs in polled.items() for m in msgs]
                    inflight.batches.append((polled, records, None))  # in flight before handle can fail
                    inflight.batches[-1] = (polled, records, handle(records))
                # a full batch means a backlog: start the next before finishing this one; a
                # partial one is finished first, so the next batch fills while it is scored
                ahead = polled and inflight.batches[-1][2] is not None and len(records) >= cfg.max_poll_records
                complete(keep=1 if ahead else 0)
            except OutputsNotAcknowledged as exc:
                log(f"outputs not acknowledged ({exc}); the batch will be processed again")
                for tp, offset in inflight.first_offsets().items():
                    consumer.seek(tp, offset)
                inflight.batches.clear()
                time.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, 10.0)
                continue
            backoff_s, idle_since = 0.5, time.monotonic()
        complete()  # stopping: what is in flight is finished and committed before leaving
    finally:
        inflight.batches.clear()  # after an error nothing more is produced: those batches come again
        consumer.close(autocommit=False)  # leaves the group; everything handled is committed
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return consumed


def _commit(consumer: KafkaConsumer, polled: dict, log) -> None:
    try:
        consumer.commit({TopicPartition(tp.topic, tp.partition): OffsetAndMetadata(msgs[-1].offset + 1, "", -1)
                         for tp, msgs in polled.items()})
    except CommitFailedError as exc:  # the group moved on (rebalance, a restarted broker): at-least-once
        log(f"commit failed ({exc}); the group rejoins and this batch may be delivered again")


class KafkaScorer(Stopper):
    def __init__(self, scorer: BatchScorer, cfg: KafkaConfig, max_events: int | None = None,
                 idle_exit_s: float | None = None, log=lambda msg: None):
        super().__init__()
        self.scorer, self.cfg, self.max_events, self.idle_exit_s, self.log = scorer, cfg, max_events, idle_exit_s, log
        self.assigned = threading.Event()  # set once the group gave this consumer partitions

    def _produce(self, producer: KafkaProducer, records: list[Record], result) -> None:
        try:
            sent = [producer.send(self.cfg.scores_topic, key=key, value=value) for key, value in result.scores]
            sent += [producer.send(self.cfg.dlq_topic, key=record.key, value=record.value,
                                   headers=dlq_headers(error, record.topic, record.partition, record.offset,
                                                       record.headers))
                     for record, error in result.dead]
            producer.flush(timeout=self.cfg.flush_timeout_s)  # outputs acknowledged before the offsets move
        except KafkaError as exc:  # no metadata / buffer full / flush timed out: the broker is away
            raise OutputsNotAcknowledged(f"producing the batch's outputs failed: {exc!r}") from exc
        failed = [f for f in sent if not f.succeeded()]
        if failed:
            first = failed[0].exception if failed[0].is_done else "not acknowledged in time"
            raise OutputsNotAcknowledged(f"{len(failed)} of {len(sent)} outputs failed: {first}")

    def run(self) -> ScoreStats:
        producer = outputs_producer(self.cfg)
        stats = ScoreStats()
        submit = getattr(self.scorer, "submit", None)  # a remote scorer: pipelined, two batches in flight

        def produce(records: list[Record], result, t0: float) -> None:
            nonlocal producer
            try:
                self._produce(producer, records, result)
            except OutputsNotAcknowledged:
                # an idempotent producer whose broker lost its state stays failed: start a new one
                producer.close(timeout=0)
                producer = outputs_producer(self.cfg)
                raise
            stats.latencies_s.append(time.perf_counter() - t0)
            stats.scored += len(result.scores)
            stats.dead_lettered += len(result.dead)
            stats.degraded_batches += int(result.degraded)
            stats.batches += 1

        def handle(records: list[Record]) -> Finish | None:
            t0 = time.perf_counter()
            if submit is None:
                return produce(records, self.scorer.score(records), t0)
            pending = submit(records)
            return lambda: produce(records, pending.result(), t0)

        try:
            def skipped(n: int) -> None:
                stats.skipped_unreadable += n

            stats.consumed = consume_loop(self.cfg, self.cfg.group_id, handle, self, self.max_events,
                                          self.idle_exit_s, self.log, on_assigned=self.assigned.set,
                                          on_skipped=skipped)
        finally:
            producer.close()
        return stats


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()
