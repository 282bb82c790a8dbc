"""In-memory pieces so the whole scoring chain runs in fast unit tests (Bytewax's testing.py idea):
records from a list, a sink that keeps what was produced, a feature client over tables, and a
scorer that computes in another thread (what the Serve handle does, without Ray)."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lantern.errors import LanternError
from lantern.settings.kafka import DLQ_TOPIC, INPUT_TOPIC, SCORES_TOPIC
from model.encoding import FeatureSpec, SourceArrays, shape_sources
from streaming.events import dlq_headers
from streaming.scoring import BatchScorer, Record, ScoredBatch


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
    topics: dict[str, list[tuple[bytes | None, bytes, list]]] = field(default_factory=dict)

    def send(self, topic: str, key: bytes | None, value: bytes, headers: list | None = None) -> None:
        self.topics.setdefault(topic, []).append((key, value, headers or []))

    def __getitem__(self, topic: str) -> list:
        return self.topics.get(topic, [])


def run_in_memory(scorer: BatchScorer, records: list[Record], sink: MemorySink, batch_size: int = 64) -> MemorySink:
    """What the Kafka scorer does per poll, minus Kafka: score, produce scores and dead letters."""
    for start in range(0, len(records), batch_size):
        result = scorer.score(records[start:start + batch_size])
        for key, value in result.scores:
            sink.send(SCORES_TOPIC, key, value)
        for record, error in result.dead:
            sink.send(DLQ_TOPIC, record.key, record.value,
                      dlq_headers(error, record.topic, record.partition, record.offset, record.headers))
    return sink


@dataclass
class Rows:
    table: pa.Table
    present: np.ndarray


class FakeFeatures:
    """A feature client over contract tables: each user's latest row per source, as a
    materialized online store would hold it. ``down = True`` simulates an outage;
    ``fail_next = n`` a transient one (the next n calls fail). ``calls`` counts lookups."""

    def __init__(self, external: dict[str, pa.Table]):
        self.down, self.fail_next, self.calls = False, 0, 0
        self.tables, self.latest = {}, {}
        for name, table in external.items():
            order = pc.sort_indices(table, [("user_id", "ascending"), ("event_timestamp", "ascending")])
            table = table.take(order)
            self.tables[name] = table.drop_columns(["user_id", "event_timestamp"])
            self.latest[name] = {u: i for i, u in enumerate(table.column("user_id").to_pylist())}

    def lookup(self, user_ids: list[str]) -> dict[str, Rows]:
        self.calls += 1
        if self.fail_next > 0:
            self.fail_next -= 1
            raise LanternError("fake feature store: transient failure")
        if self.down:
            raise LanternError("fake feature store is down")
        out = {}
        for name, table in self.tables.items():
            rows = np.array([self.latest[name].get(u, -1) for u in user_ids], np.int64)
            present = rows >= 0
            out[name] = Rows(table.take(pa.array(np.where(present, rows, 0))), present)
        return out

    def model_inputs(self, user_ids: list[str], spec: FeatureSpec) -> dict[str, SourceArrays]:
        rows = self.lookup(user_ids)
        return shape_sources(spec, {n: (r.table, r.present) for n, r in rows.items()}, len(user_ids))


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
