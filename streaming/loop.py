"""The consume loop: poll → handle → commit exactly those offsets once the batch's outputs are
durable. It takes any consumer with kafka-python's surface (``subscribe`` with a rebalance
listener, ``poll``, ``commit``, ``seek``, ``close``): a ``KafkaConsumer`` in production
(``streaming.kafka_io.group_consumer``), ``streaming.testing.MemoryConsumer`` in unit tests — so
commit-after-flush, seek-back on refused outputs and rebalances are tested in memory as well as
on a broker.

At-least-once: nothing is committed before its outputs are acknowledged, so a crash re-delivers
at most the batches in flight (two when the scorer is remote and the loop pipelines).
"""

from __future__ import annotations

import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone

from kafka import ConsumerRebalanceListener
from kafka.errors import CommitFailedError
from kafka.structs import OffsetAndMetadata, TopicPartition

from lantern.settings.kafka import KafkaConfig
from streaming.partitions import UNREADABLE, skip_unreadable
from streaming.scoring import Record
from streaming.sinks import OutputsNotAcknowledged

#: a started batch's second half: wait for its outputs to be durable (raises
#: :class:`OutputsNotAcknowledged` when the sink did not take them)
Finish = Callable[[], None]


@dataclass
class _Batch:
    polled: dict  # TopicPartition → the consumer's messages
    records: list[Record]
    finish: Finish | None = None  # None: handled completely (its outputs are durable)


@dataclass
class _InFlight:
    """Batches polled and handled (or started), not committed yet; oldest first."""

    batches: deque[_Batch] = field(default_factory=deque)

    def first_offsets(self) -> dict[TopicPartition, int]:
        """Per partition, the first offset no commit covers: where a retry starts again."""
        firsts: dict[TopicPartition, int] = {}
        for batch in self.batches:
            for tp, msgs in batch.polled.items():
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


@dataclass
class LoopOptions:
    max_events: int | None = None  # stop after this many records are committed
    idle_exit_s: float | None = None  # stop after this long with nothing polled
    topic: str | None = None  # default: the input topic
    log: Callable[[str], None] = lambda msg: None
    on_assigned: Callable[[], None] | None = None
    on_skipped: Callable[[int], None] | None = None  # offsets moved past an unreadable batch
    metrics: object | None = None  # streaming.metrics.Metrics: records polled, batch size, lag


class _Loop:
    def __init__(self, consumer, cfg: KafkaConfig, handle, stopper: Stopper, opts: LoopOptions):
        self.consumer, self.cfg, self.handle, self.stopper, self.opts = consumer, cfg, handle, stopper, opts
        self.inflight, self.consumed, self.backoff_s = _InFlight(), 0, 0.5

    def complete(self, keep: int = 0) -> None:
        """Finish and commit batches in flight, oldest first, until ``keep`` are left."""
        while len(self.inflight.batches) > keep:
            batch = self.inflight.batches[0]
            if batch.finish is not None:
                batch.finish()
            _commit(self.consumer, batch.polled, self.opts.log)
            self.inflight.batches.popleft()
            self.consumed += len(batch.records)

    def complete_before_revoke(self) -> None:
        """Inside poll: kafka-python would swallow an exception raised here, so none is. A batch that
        cannot be finished stays uncommitted; after the rebalance every assigned partition restarts
        from its committed offset, so the next owner (or this consumer) gets it again."""
        try:
            self.complete()
        except Exception as exc:  # noqa: BLE001 - logged, and the batches are delivered again
            self.opts.log(f"batches in flight not finished before a rebalance ({exc!r}); they will be delivered again")
            self.inflight.batches.clear()

    def move_past_unreadable(self, exc: Exception) -> None:
        """Finish and commit what is in flight (a skip's commit must not pass an uncommitted batch),
        then skip to the first readable offset; raises OutputsNotAcknowledged like ``complete``."""
        if self.cfg.unreadable_batches != "skip":
            raise exc
        self.opts.log(f"a record batch cannot be read ({exc!r})")
        self.complete()
        skipped = skip_unreadable(self.consumer, self.cfg.client_options(), self.opts.log)
        self.consumed += skipped
        if self.opts.on_skipped is not None and skipped:
            self.opts.on_skipped(skipped)
        if not skipped:  # nothing unreadable at the positions now: a transient fault
            time.sleep(self.backoff_s)

    def step(self) -> bool:
        """One poll and what follows; False when the loop has been idle long enough to leave."""
        try:
            polled = self.consumer.poll(timeout_ms=0 if self.inflight.batches else 500)  # none waiting: finish
        except UNREADABLE as exc:
            self.move_past_unreadable(exc)
            return True
        if not polled and not self.inflight.batches:
            return self.opts.idle_exit_s is None or time.monotonic() - self.idle_since <= self.opts.idle_exit_s
        ahead = False
        if polled:
            records = [Record(tp.topic, tp.partition, m.offset, m.key, m.value, m.timestamp, tuple(m.headers or ()))
                       for tp, msgs in polled.items() for m in msgs]
            batch = _Batch(polled, records)
            self.observe(polled, len(records))
            self.inflight.batches.append(batch)  # in flight before handle can fail
            batch.finish = self.handle(records)
            # a full batch means a backlog: start the next before finishing this one; a partial
            # one is finished first, so the next batch fills while it is scored
            ahead = batch.finish is not None and len(records) >= self.cfg.max_poll_records
        self.complete(keep=1 if ahead else 0)
        self.backoff_s, self.idle_since = 0.5, time.monotonic()
        return True

    def observe(self, polled: dict, n: int) -> None:
        """Records polled per topic, the batch size and the lag of every assigned partition."""
        metrics = self.opts.metrics
        if metrics is None:
            return
        topics: dict[str, int] = {}
        for tp, msgs in polled.items():
            topics[tp.topic] = topics.get(tp.topic, 0) + len(msgs)
        metrics.polled(topics, n)
        metrics.lag(partition_lags(self.consumer))

    def seek_back(self, exc: OutputsNotAcknowledged) -> None:
        """Nothing more is committed: back to the first uncommitted offsets, after a backoff."""
        self.opts.log(f"outputs not acknowledged ({exc}); the batch will be processed again")
        for tp, offset in self.inflight.first_offsets().items():
            self.consumer.seek(tp, offset)
        self.inflight.batches.clear()
        time.sleep(self.backoff_s)
        self.backoff_s = min(self.backoff_s * 2, 10.0)

    def run(self) -> int:
        listener = _CompleteOnRevoke(self.opts.log, self.complete_before_revoke, self.opts.on_assigned)
        self.consumer.subscribe([self.opts.topic or self.cfg.input_topic], listener=listener)
        previous = signal.signal(signal.SIGTERM, self.stopper.stop) if _main_thread() else None
        self.idle_since, limit = time.monotonic(), self.opts.max_events
        try:
            while not self.stopper.stopping and (limit is None or self.consumed < limit):
                try:
                    if not self.step():
                        break
                except OutputsNotAcknowledged as exc:
                    self.seek_back(exc)
            self.complete()  # stopping: what is in flight is finished and committed before leaving
        finally:
            self.inflight.batches.clear()  # after an error nothing more is produced: those come again
            self.consumer.close(autocommit=False)  # leaves the group; everything handled is committed
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        return self.consumed


def consume_loop(consumer, cfg: KafkaConfig, handle: Callable[[list[Record]], Finish | None], stopper: Stopper,
                 opts: LoopOptions | None = None) -> int:
    """Poll ``opts.topic`` (default: the input topic) → ``handle(records)`` → commit exactly those
    offsets once the batch's outputs are durable. Returns the number of records committed; closes
    ``consumer`` on the way out.

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
    return _Loop(consumer, cfg, handle, stopper, opts or LoopOptions()).run()


@dataclass
class ScoreStats:
    consumed: int = 0
    scored: int = 0
    dead_lettered: int = 0
    degraded_batches: int = 0
    batches: int = 0
    skipped_unreadable: int = 0  # offsets moved past: records that could not be read at all
    latencies_s: list[float] = field(default_factory=list)  # per batch: poll → commit


def score_stream(consumer, scorer, sink, cfg: KafkaConfig, stopper: Stopper,
                 opts: LoopOptions | None = None) -> ScoreStats:
    """The scorer's loop: each batch ``scorer.score(records)`` → ``sink.write`` → ``sink.flush`` →
    commit. A scorer with ``submit`` (a remote one: ``ray_jobs.serve.ServeScorer``) is pipelined:
    the batch is sent, and written and flushed when :func:`consume_loop` finishes it."""
    opts, stats = opts or LoopOptions(), ScoreStats()
    submit = getattr(scorer, "submit", None)

    def deliver(result, t0: float) -> None:
        t_write = time.perf_counter()
        sink.write(result)
        sink.flush()  # outputs acknowledged before the offsets move
        if opts.metrics is not None:
            opts.metrics.delivered(len(result.scores), [e.kind for _, e in result.dead],
                                   time.perf_counter() - t_write, result.completed_at, datetime.now(timezone.utc))
        stats.latencies_s.append(time.perf_counter() - t0)
        stats.scored += len(result.scores)
        stats.dead_lettered += len(result.dead)
        stats.degraded_batches += int(result.degraded)
        stats.batches += 1

    def handle(records: list[Record]) -> Finish | None:
        t0 = time.perf_counter()
        if submit is None:
            return deliver(scorer.score(records), t0)
        pending = submit(records)
        return lambda: deliver(pending.result(), t0)

    def skipped(n: int) -> None:
        stats.skipped_unreadable += n
        if given is not None:
            given(n)

    given = opts.on_skipped
    stats.consumed = consume_loop(consumer, cfg, handle, stopper, replace(opts, on_skipped=skipped))
    return stats


def partition_lags(consumer) -> dict[tuple[str, int], int]:
    """High-watermark − position of every assigned partition the consumer has fetched from (the
    high-watermark comes with each fetch: right on the embedded broker, unlike ListOffsets)."""
    lags = {}
    for tp in consumer.assignment():
        high = consumer.highwater(tp)
        if high is not None:
            lags[(tp.topic, tp.partition)] = max(0, high - consumer.position(tp))
    return lags


def _commit(consumer, polled: dict, log) -> None:
    try:
        consumer.commit({TopicPartition(tp.topic, tp.partition): OffsetAndMetadata(msgs[-1].offset + 1, "", -1)
                         for tp, msgs in polled.items()})
    except CommitFailedError as exc:  # the group moved on (rebalance, a restarted broker): at-least-once
        log(f"commit failed ({exc}); the group rejoins and this batch may be delivered again")


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()
