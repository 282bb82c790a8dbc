"""The micro-batch scorer core — no Kafka, no Feast, no Ray imports (thin shells supply them).

``BatchScorer.score(records)``: parse and validate every record → one batched feature lookup →
one model call for the whole batch → encoded scores, plus dead letters for what could not be
scored. Pluggable pieces:

* a :class:`FeatureClient` (``features.lookup.OnlineLookup``, or ``streaming.testing.FakeFeatures``);
* a :class:`Predictor` (``model.inference.InProcessPredictor``). With Ray Serve, each replica runs a BatchScorer
  (``encode`` → batched forward → ``finish``) and the consumer calls ``ray_jobs.serve.ServeScorer``,
  which has this class's ``score(records)``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Protocol

import numpy as np

from lantern.dataset.questionnaire import Questionnaire
from lantern.errors import FeatureStoreUnavailable, LanternError
from model.data import EncodedData, encode_sessions
from model.encoding import FeatureSpec, SourceArrays, absent_source
from model.inference import Prediction, Stored
from model.metrics import Layout, decide
from lantern.settings.scoring import ScoringConfig
from streaming.events import (
    EventError,
    SessionEvent,
    events_to_sessions,
    internal_error,
    parse_event,
    score_records,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Record:
    """One consumed record: where it came from and its bytes."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    timestamp_ms: int = -1  # the broker record's timestamp (CreateTime: when it was produced)
    headers: tuple[tuple[str, bytes], ...] = ()  # the producer's own headers (kept on dead letters)


class FeatureClient(Protocol):
    def model_inputs(self, user_ids: list[str], spec: FeatureSpec) -> dict[str, SourceArrays]:
        """The model's external inputs per source (presence included), one row per user id."""
        ...

    # optional: stored_encodings(user_ids, spec, model_version) -> Stored | None, each user's
    # materialized external encoding for that version (features.lookup.OnlineLookup)


class Predictor(Protocol):  # model.inference.InProcessPredictor, ray_jobs.serve's replicas
    def predict(self, q_idx: np.ndarray, sel: np.ndarray, sources: list, stored: Stored | None = None) -> Prediction:
        ...


@dataclass
class ScoredBatch:
    scores: list[tuple[bytes, bytes]] = field(default_factory=list)  # (key, value) for the scores topic
    dead: list[tuple[Record, EventError]] = field(default_factory=list)
    degraded: bool = False  # the feature store was down: sessions scored survey-only
    completed_at: list[datetime] = field(default_factory=list)  # of each scored session (latency metrics)


@dataclass
class Encoded:
    events: list[SessionEvent]
    data: EncodedData | None  # None when no event of the batch was valid
    dead: list[tuple[Record, EventError]]
    degraded: bool
    stored: Stored | None = None  # rows' stored external encodings (None per row: encode its sources)
    records: list[Record] = field(default_factory=list)  # each event's record (a dead letter's bytes)

    @property
    def model_args(self) -> tuple:
        return self.data.survey.q_idx, self.data.survey.sel, self.data.sources, self.stored


class BatchCodec:
    """Everything around the model for a micro-batch: ``encode`` (parse, dead-letter, look up,
    encode) before it and ``finish`` (score records) after it. A Serve replica runs its forward pass
    in between (batched across requests); :class:`BatchScorer` adds an in-process predictor."""

    def __init__(self, questionnaire: Questionnaire, features_spec: FeatureSpec,
                 feature_client: FeatureClient | None, scoring: ScoringConfig = ScoringConfig(threshold=0.5),
                 clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
                 lookup_attempts: int = 3, lookup_backoff_s: float = 0.1, metrics=None,
                 stored_version: str | None = None):
        """``scoring``: decisions and acceptance, its threshold resolved for this model version
        (``ScoringConfig.with_tuned``). ``predicted_keys``: each single-select question's most
        likely option (none where its probability is below ``abstain_below``), each multi-select
        option at ≥ ``threshold``. A session completed later than the clock plus
        ``max_clock_skew_s`` is refused (``future_time``).
        ``stored_version``: read the users' external encodings materialized for this model version
        where the feature client has them (only the users without one are looked up and encoded).

        A bulkhead per event: an unexpected exception while one event is parsed, shaped or
        formatted dead-letters that event (class ``internal``, with the exception's type and
        message), and the rest of its batch is scored. What is not about one event — the feature
        store (a :class:`LanternError`), the forward pass, the sink — raises as before."""
        self.q, self.spec = questionnaire, features_spec
        assert scoring.threshold is not None, "resolve the threshold for the model first: ScoringConfig.with_tuned"
        self.features, self.scoring, self.clock = feature_client, scoring, clock
        self.threshold, self.abstain_below = scoring.threshold, scoring.abstain_below
        self.layout = Layout.of(questionnaire)
        self.lookup_attempts, self.lookup_backoff_s = lookup_attempts, lookup_backoff_s
        self.metrics = metrics  # streaming.metrics.Metrics, or None
        self.stored_version = stored_version
        self.max_clock_skew = timedelta(seconds=scoring.max_clock_skew_s)

    def parse(self, records: list[Record]) -> tuple[list[tuple[Record, SessionEvent]], list[tuple[Record, EventError]]]:
        """Valid events, and dead letters for the rest. A record whose key is not its body's
        ``user_id`` is refused (``key_mismatch``): the key is what keeps a user's sessions on one
        partition. A null key is accepted. The same session twice (a producer's retry) is scored
        each time, in one batch or across batches alike; consumers deduplicate by ``session_id``."""
        good, dead = [], []
        not_after = self.clock() + self.max_clock_skew
        for record in records:
            try:
                parsed = self._parse_one(record, not_after)
            except Exception as exc:  # noqa: BLE001 - the bulkhead: this event's dead letter, not the batch's end
                parsed = _internal(exc, "parse", record)
            if isinstance(parsed, EventError):
                dead.append((record, parsed))
            else:
                good.append((record, parsed))
        return good, dead

    def _parse_one(self, record: Record, not_after: datetime) -> SessionEvent | EventError:
        parsed = parse_event(record.value, self.q, not_after=not_after)
        if isinstance(parsed, SessionEvent) and record.key is not None and record.key != parsed.user_id.encode():
            return EventError("key_mismatch", f"record key {record.key[:64]!r} is not the user_id {parsed.user_id!r}",
                              "user_id")
        return parsed

    def lookup(self, user_ids: list[str]) -> tuple[dict[str, SourceArrays], bool, Stored | None]:
        """External inputs per source, whether the store was unavailable (→ survey-only), and the
        users' stored encodings (None: none read; the sources of a user with one are not looked
        up, only its presence is kept). An unavailable store is retried ``lookup_attempts`` times
        with exponential backoff; then the batch is scored survey-only and flagged ``degraded`` —
        never from made-up values. The next batch asks the store again, so scoring recovers when
        it returns. Any other error (a misconfigured store: ``ConfigError``) propagates and stops
        the scorer."""
        if self.features is None:
            return {}, False, None
        for attempt in range(self.lookup_attempts):
            try:
                t0 = time.perf_counter()
                stored = self._stored(user_ids)
                sources = self._sources(user_ids, stored)
                if self.metrics is not None:
                    self.metrics.looked_up(time.perf_counter() - t0, {n: a.present for n, a in sources.items()},
                                           len(user_ids))
                return sources, False, stored
            except FeatureStoreUnavailable:
                if attempt < self.lookup_attempts - 1:
                    time.sleep(self.lookup_backoff_s * 2 ** attempt)
        return {}, True, None

    def _stored(self, user_ids: list[str]) -> Stored | None:
        read = getattr(self.features, "stored_encodings", None)
        if self.stored_version is None or read is None:
            return None
        stored = read(user_ids, self.spec, self.stored_version)
        return None if stored is None or all(e is None for e in stored) else stored  # None: the plain path

    def _sources(self, user_ids: list[str], stored: Stored | None) -> dict[str, SourceArrays]:
        """Looked-up inputs for the users without a stored encoding; for the others, presence only."""
        if stored is None:
            return self.features.model_inputs(user_ids, self.spec)
        need = np.array([e is None for e in stored])
        looked = self.features.model_inputs([u for u, n in zip(user_ids, need) if n], self.spec) if need.any() else {}
        out, rows = {}, np.flatnonzero(need)
        for j, s in enumerate(self.spec.sources):
            arrays = absent_source(s, len(user_ids))
            if s.name in looked:
                for f in arrays.__dataclass_fields__:
                    getattr(arrays, f)[rows] = getattr(looked[s.name], f)
            arrays.present[~need] = [e.present[j] for e in stored if e is not None]
            out[s.name] = arrays
        return out

    def encode(self, records: list[Record]) -> Encoded:
        """Parse, dead-letter what is bad, look features up, encode: everything before the model."""
        good, dead = self.parse(records)
        if not good:
            return Encoded([], None, dead, False)
        try:
            return self._encode(good, dead)
        except LanternError:  # the feature store or its configuration: not about one event
            raise
        except Exception:  # noqa: BLE001 - find the events it is about (_encode_each)
            return self._encode_each(good, dead)

    def _encode(self, good: list[tuple[Record, SessionEvent]], dead: list) -> Encoded:
        events = [e for _, e in good]
        sources, degraded, stored = self.lookup([e.user_id for e in events])
        data = encode_sessions(self.q, events_to_sessions(events), self.spec, sources)
        return Encoded(events, data, dead, degraded, stored, [r for r, _ in good])

    def _encode_each(self, good: list[tuple[Record, SessionEvent]], dead: list) -> Encoded:
        """A batch whose lookup or encoding raised unexpectedly: each event alone; those that fail
        alone are dead-lettered (``internal``), the others encoded together again."""
        kept = []
        for record, event in good:
            try:
                self._encode([(record, event)], [])
                kept.append((record, event))
            except LanternError:
                raise
            except Exception as exc:  # noqa: BLE001 - the bulkhead
                dead.append((record, _internal(exc, "features", record)))
        return self._encode(kept, dead) if kept else Encoded([], None, dead, False)

    def finish(self, enc: Encoded, pred: Prediction | None) -> ScoredBatch:
        """The scores topic's records for an encoded batch and its prediction; an event whose
        record cannot be formatted is dead-lettered (``internal``), the others are scored."""
        out = ScoredBatch(dead=list(enc.dead), degraded=enc.degraded)
        if not enc.events:
            return out
        predicted = decide(pred.probs, self.layout, self.threshold, self.abstain_below)
        names, present = [s.name for s in self.spec.sources], [arr.present.tolist() for arr in enc.data.sources]
        used = [[name for name, flags in zip(names, present) if flags[i]] for i in range(len(enc.events))]
        gates = [None if np.isnan(g) else float(g) for g in pred.gate]
        scored_at = self.clock()

        def formatted(rows: list[int]) -> list[tuple[bytes, bytes]]:
            events = [enc.events[i] for i in rows]
            values = score_records(events, pred.probs[rows], self.q, pred.model_version, self.threshold,
                                   [used[i] for i in rows], [gates[i] for i in rows], scored_at,
                                   degraded=enc.degraded, predicted=predicted[rows], abstain_below=self.abstain_below)
            return [(event.user_id.encode(), value) for event, value in zip(events, values)]

        rows = list(range(len(enc.events)))
        try:
            out.scores = formatted(rows)
        except Exception:  # noqa: BLE001 - find the events it is about: each alone
            out.scores, rows = self._format_each(formatted, rows, enc, out.dead)
        out.completed_at = [enc.events[i].completed_at for i in rows]
        if self.metrics is not None:
            self.metrics.finished(pred.gate, len(enc.events) if enc.degraded else 0, pred.model_version)
        return out

    @staticmethod
    def _format_each(formatted, rows: list[int], enc: Encoded, dead: list) -> tuple[list, list[int]]:
        scores, kept = [], []
        for i in rows:
            try:
                scores += formatted([i])
                kept.append(i)
            except Exception as exc:  # noqa: BLE001 - the bulkhead
                dead.append((enc.records[i], _internal(exc, "format", enc.records[i])))
        return scores, kept


def _internal(exc: Exception, stage: str, record: Record) -> EventError:
    """The dead-letter reason for an unexpected exception about one record; logged with its
    traceback (the metric ``lantern_events_dead_lettered{error_class="internal"}`` pages someone)."""
    log.error("record %s[%d]@%d dead-lettered: unexpected %s at %s", record.topic, record.partition, record.offset,
              type(exc).__name__, stage, exc_info=exc)
    return internal_error(exc, stage)


class BatchScorer(BatchCodec):
    """:class:`BatchCodec` with a predictor: ``score(records)`` does the whole micro-batch."""

    def __init__(self, questionnaire: Questionnaire, features_spec: FeatureSpec, predictor: Predictor,
                 feature_client: FeatureClient | None, scoring: ScoringConfig = ScoringConfig(threshold=0.5),
                 **options):
        options.setdefault("stored_version", getattr(predictor, "stored_version", None))
        super().__init__(questionnaire, features_spec, feature_client, scoring, **options)
        assert predictor is not None, "a BatchScorer scores: give it a predictor (BatchCodec has none)"
        self.predictor = predictor

    def score(self, records: list[Record]) -> ScoredBatch:
        enc = self.encode(records)
        pred = None
        if enc.data is not None:
            t0 = time.perf_counter()
            pred = self.predictor.predict(*enc.model_args)
            if self.metrics is not None:
                self.metrics.forwarded(time.perf_counter() - t0)
        return self.finish(enc, pred)
