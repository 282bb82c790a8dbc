"""In-memory pieces so the whole scoring loop — commits included — runs in fast unit tests
(Bytewax's testing.py idea): records from a list, a consumer with kafka-python's surface over
them, a sink that keeps what was produced, a feature client over tables, and a scorer that
computes in another thread (what the Serve handle does, without Ray)."""

from __future__ import annotations

import json
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from kafka.structs import TopicPartition

from lantern.errors import ConfigError, FeatureStoreUnavailable
from lantern.settings.kafka import DLQ_TOPIC, INPUT_TOPIC, SCORES_TOPIC, KafkaConfig
from model.encoding import FeatureSpec, SourceArrays, shape_sources
from model.materialized import encode_users, read_many
from streaming.events import dlq_headers
from streaming.loop import LoopOptions, Stopper, score_stream
from streaming.scoring import BatchScorer, Record, ScoredBatch
from streaming.sinks import OutputsNotAcknowledged


def hostile_text_events(event: bytes) -> list[tuple[bytes, str]]:
    """Variants of a valid input event that are legal JSON but not legal text, each with the field
    the scorer must name: a lone UTF-16 surrogate escape (``\\ud800``) as the user id, the session
    id (and so the event id, which equals it: the first of the two is named), a question id and an
    option id; a NUL in the user id. Written as ASCII JSON, so the escapes stay escapes."""
    chosen = next(i for i, a in enumerate(json.loads(event)["answers"]) if a["option_ids"])
    cases = [(lambda b: b.update(user_id="\ud800"), "user_id"),
             (lambda b: b.update(event_id="\ud800", session_id="\ud800"), "event_id"),
             (lambda b: b["answers"][0].update(question_id="\ud800"), "answers[0].question_id"),
             (lambda b: b["answers"][chosen]["option_ids"].__setitem__(0, "\ud800"), f"answers[{chosen}].option_ids[0]"),
             (lambda b: b.update(user_id="u\x001"), "user_id")]
    variants = []
    for mutate, where in cases:
        body = json.loads(event)
        mutate(body)
        variants.append((json.dumps(body).encode(), where))
    return variants


def memory_source(values: list[tuple[bytes, bytes]], partitions: int = 1, topic: str = INPUT_TOPIC) -> list[Record]:
    """(key, value) pairs → records spread round-robin over ``partitions``, offsets per partition."""
    next_offset = [0] * partitions
    records = []
    for i, (key, value) in enumerate(values):
        p = i % partitions
        records.append(Record(topic, p, next_offset[p], key, value))
        next_offset[p] += 1
    return records


@dataclass
class MemorySink:
    """Scores and dead letters kept per topic, as :class:`streaming.kafka_io.KafkaSink` would
    produce them; visible only after ``flush``. ``refuse_flushes = n``: the next n flushes fail
    (nothing of those batches is kept), like a broker that does not acknowledge."""

    topics: dict[str, list[tuple[bytes | None, bytes, list]]] = field(default_factory=dict)
    refuse_flushes: int = 0
    pending: list[tuple[str, bytes | None, bytes, list]] = field(default_factory=list)

    def write(self, batch: ScoredBatch) -> None:
        self.pending += [(SCORES_TOPIC, key, value, []) for key, value in batch.scores]
        self.pending += [(DLQ_TOPIC, r.key, r.value, dlq_headers(e, r.topic, r.partition, r.offset, r.headers))
                         for r, e in batch.dead]

    def flush(self) -> None:
        pending, self.pending = self.pending, []
        if self.refuse_flushes > 0:
            self.refuse_flushes -= 1
            raise OutputsNotAcknowledged("memory sink: this flush is refused")
        for topic, key, value, headers in pending:
            self.topics.setdefault(topic, []).append((key, value, headers))

    def __getitem__(self, topic: str) -> list:
        return self.topics.get(topic, [])


@dataclass(frozen=True)
class Message:
    """What a consumer's poll returns per record (kafka-python's ConsumerRecord fields used)."""

    offset: int
    key: bytes | None
    value: bytes
    timestamp: int = -1
    headers: tuple = ()


class MemoryConsumer:
    """A one-member consumer group over in-memory records with kafka-python's surface, for
    :func:`streaming.loop.consume_loop`: ``poll`` hands out up to ``max_poll_records`` from each
    partition's position, ``commit`` records offsets (``committed``), ``seek`` moves a position.
    ``rebalance_at_poll = n``: the n-th poll first revokes and reassigns every partition through
    the rebalance listener, and positions restart from the committed offsets, as in a group."""

    def __init__(self, records: list[Record], max_poll_records: int = 64, rebalance_at_poll: int | None = None):
        self.parts: dict[TopicPartition, list[Record]] = {}
        for r in records:
            self.parts.setdefault(TopicPartition(r.topic, r.partition), []).append(r)
        self.position_of = {tp: rs[0].offset for tp, rs in self.parts.items()}
        self.committed: dict[TopicPartition, int] = {}
        self.max_poll_records, self.rebalance_at_poll, self.polls = max_poll_records, rebalance_at_poll, 0
        self.listener, self.closed, self.commits = None, False, 0

    def subscribe(self, topics: list[str], listener=None) -> None:
        self.listener = listener
        if listener is not None:
            listener.on_partitions_assigned(set(self.parts))

    def poll(self, timeout_ms: int = 0) -> dict[TopicPartition, list[Message]]:
        self.polls += 1
        if self.polls == self.rebalance_at_poll and self.listener is not None:
            self.listener.on_partitions_revoked(set(self.parts))
            self.position_of = {tp: self.committed.get(tp, rs[0].offset) for tp, rs in self.parts.items()}
            self.listener.on_partitions_assigned(set(self.parts))
        out, room = {}, self.max_poll_records
        for tp, rs in self.parts.items():
            start = self.position_of[tp] - rs[0].offset
            take = rs[start:start + room]
            if take:
                out[tp] = [Message(r.offset, r.key, r.value, r.timestamp_ms, r.headers) for r in take]
                self.position_of[tp] = take[-1].offset + 1
                room -= len(take)
        return out

    def assignment(self) -> set[TopicPartition]:
        return set(self.parts)

    def highwater(self, tp: TopicPartition) -> int:
        return self.parts[tp][-1].offset + 1

    def position(self, tp: TopicPartition) -> int:
        return self.position_of[tp]

    def commit(self, offsets: dict) -> None:
        self.commits += 1
        for tp, meta in offsets.items():
            self.committed[tp] = meta.offset

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.position_of[tp] = offset

    def close(self, autocommit: bool = False) -> None:
        self.closed = True


def run_in_memory(scorer, records: list[Record], sink: MemorySink, batch_size: int = 64,
                  consumer: MemoryConsumer | None = None, metrics=None) -> MemorySink:
    """The scorer's whole loop (streaming.loop.score_stream: poll → score → write → flush →
    commit) over a :class:`MemoryConsumer` of ``records``, until every record is committed."""
    consumer = consumer or MemoryConsumer(records, batch_size)
    cfg = KafkaConfig(max_poll_records=batch_size)
    score_stream(consumer, scorer, sink, cfg, Stopper(),
                 LoopOptions(max_events=len(records), idle_exit_s=5.0, metrics=metrics))
    return sink


@dataclass
class Rows:
    table: pa.Table
    present: np.ndarray


class FakeFeatures:
    """A feature client over contract tables: each user's latest row per source, as a
    materialized online store would hold it. ``down = True`` simulates an outage;
    ``fail_next = n`` a transient one (the next n calls fail); ``misconfigured = True`` a store
    that is reachable but set up wrong. ``calls`` counts lookups and ``looked_up`` the users
    they asked for. :meth:`store_encodings` materializes users' external encodings for a model
    version, read back by ``stored_encodings`` like the online store's (another version's refused)."""

    def __init__(self, external: dict[str, pa.Table]):
        self.down, self.fail_next, self.calls, self.misconfigured = False, 0, 0, False
        self.looked_up, self.encodings, self.refused_encodings = 0, {}, 0
        self.tables, self.latest = {}, {}
        for name, table in external.items():
            order = pc.sort_indices(table, [("user_id", "ascending"), ("event_timestamp", "ascending")])
            table = table.take(order)
            self.tables[name] = table.drop_columns(["user_id", "event_timestamp"])
            self.latest[name] = {u: i for i, u in enumerate(table.column("user_id").to_pylist())}

    def lookup(self, user_ids: list[str]) -> dict[str, Rows]:
        self.calls += 1
        if self.misconfigured:
            raise ConfigError("fake feature store: no feature view for source 'demographics'")
        if self.fail_next > 0:
            self.fail_next -= 1
            raise FeatureStoreUnavailable("fake feature store: transient failure")
        if self.down:
            raise FeatureStoreUnavailable("fake feature store is down")
        self.looked_up += len(user_ids)
        out = {}
        for name, table in self.tables.items():
            rows = np.array([self.latest[name].get(u, -1) for u in user_ids], np.int64)
            present = rows >= 0
            out[name] = Rows(table.take(pa.array(np.where(present, rows, 0))), present)
        return out

    def model_inputs(self, user_ids: list[str], spec: FeatureSpec) -> dict[str, SourceArrays]:
        rows = self.lookup(user_ids)
        return shape_sources(spec, {n: (r.table, r.present) for n, r in rows.items()}, len(user_ids))

    def store_encodings(self, model, spec: FeatureSpec, model_version: str, user_ids: list[str]) -> None:
        arrays = self.model_inputs(user_ids, spec)
        blobs = encode_users(model, [arrays[s.name] for s in spec.sources], model_version)
        self.encodings.update(zip(user_ids, blobs))

    def stored_encodings(self, user_ids: list[str], spec: FeatureSpec, model_version: str) -> list | None:
        if not self.encodings:  # like a store without the encoding view
            return None
        if self.down:
            raise FeatureStoreUnavailable("fake feature store is down")
        out, refused = read_many([self.encodings.get(u) for u in user_ids], model_version)
        self.refused_encodings += len(refused)
        return out


class ThreadScorer:
    """A local scorer behind ``submit`` → future, like :class:`ray_jobs.serve.ServeScorer`: the Kafka
    loop pipelines with it. ``overlapped`` counts batches submitted while an earlier one's result
    had not been taken yet (the pipelining at work)."""

    def __init__(self, scorer: BatchScorer):
        self.scorer, self.overlapped, self._waiting = scorer, 0, 0
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="thread-scorer")

    def submit(self, records: list[Record]) -> _Pending:
        self.overlapped += self._waiting > 0
        self._waiting += 1
        return _Pending(self, self._pool.submit(self.scorer.score, records))

    def score(self, records: list[Record]) -> ScoredBatch:
        return self.submit(records).result()

    def close(self) -> None:
        self._pool.shutdown()


@dataclass
class _Pending:
    owner: ThreadScorer
    future: Future

    def result(self) -> ScoredBatch:
        self.owner._waiting -= 1
        return self.future.result()
