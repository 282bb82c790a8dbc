"""The micro-batch scorer core — no Kafka, no Feast, no Ray imports (thin shells supply them).

``BatchScorer.score(records)``: parse and validate every record → one batched feature lookup →
one model call for the whole batch → encoded scores, plus dead letters for what could not be
scored. Pluggable pieces:

* a :class:`FeatureClient` (``features.lookup.OnlineLookup``, or ``streaming.testing.FakeFeatures``);
* a :class:`Predictor` (the in-process model). With Ray Serve, each replica runs a BatchScorer
  (``encode`` → batched forward → ``finish``) and the consumer calls ``ray_jobs.serve.ServeScorer``,
  which has this class's ``score(records)``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Protocol

import numpy as np
import torch

from lantern.dataset.questionnaire import Questionnaire
from lantern.errors import LanternError
from model.data import EncodedData, encode_sessions, to_batch
from model.encoding import FeatureSpec, SourceArrays
from model.metrics import Layout, decide
from model.outputs import key_probs
from streaming.events import EventError, SessionEvent, events_to_sessions, parse_event, score_bytes


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


@dataclass(frozen=True)
class Prediction:
    probs: np.ndarray  # (B, K) probability of every response key
    gate: np.ndarray  # (B,) mean gate per session, NaN where not applicable
    model_version: str  # the version that produced these rows


class Predictor(Protocol):
    def predict(self, q_idx: np.ndarray, sel: np.ndarray, sources: list) -> Prediction:
        ...


#: rows per forward chunk on a CPU: sessions sorted by length and cut into chunks, each padded
#: only to its own longest session (half the survey tokens of a micro-batch are padding otherwise)
CPU_CHUNK_ROWS = 64


@torch.inference_mode()
def forward(model: torch.nn.Module, q_idx: np.ndarray, sel: np.ndarray, sources: list,
            device: torch.device, half: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Forward passes over encoded sessions → (probabilities (B, K), mean gate (B,)), in the
    input's row order. On a CPU the rows go in length-sorted chunks (less padding); a GPU takes
    the batch whole. ``half``: fp16 autocast (matmuls and attention in fp16, reductions in fp32)."""
    n = len(q_idx)
    if device.type != "cpu" or n <= CPU_CHUNK_ROWS:
        return _forward_batch(model, q_idx, sel, sources, device, half)
    order = np.argsort((q_idx > 0).sum(1), kind="stable")
    probs, gate = np.empty((n, model.cfg.n_keys), np.float32), np.empty(n, np.float32)
    for rows in np.array_split(order, -(-n // CPU_CHUNK_ROWS)):
        probs[rows], gate[rows] = _forward_batch(model, q_idx[rows], sel[rows], [s.take(rows) for s in sources],
                                                 device, half)
    return probs, gate


def _forward_batch(model, q_idx, sel, sources, device, half) -> tuple[np.ndarray, np.ndarray]:
    batch = to_batch(q_idx, sel, sources, device)
    with torch.autocast(device.type, dtype=torch.float16, enabled=half):
        return _forward(model, batch, len(q_idx))


def _forward(model: torch.nn.Module, batch, n: int) -> tuple[np.ndarray, np.ndarray]:
    if getattr(model.cfg, "variant", "") == "lantern":
        logits, aux = model(batch, return_aux=True, aux_attention=False)  # the gate only: fused attention
        mask = aux["survey_mask"][:, 1:].float()
        gate = (aux["gate"][:, 1:] * mask).sum(1) / mask.sum(1).clamp_min(1)
        gate = torch.where(aux["has_external"], gate, torch.full_like(gate, float("nan")))
    else:
        logits, gate = model(batch), torch.full((n,), float("nan"))
    return key_probs(logits, model.cfg).cpu().numpy(), gate.float().cpu().numpy()


class InProcessPredictor:
    """The model in this process: one forward pass per micro-batch, on the chosen device."""

    def __init__(self, model: torch.nn.Module, model_version: str, device: str | torch.device = "cpu"):
        self.model, self.model_version, self.device = model.eval(), model_version, torch.device(device)

    def predict(self, q_idx, sel, sources) -> Prediction:
        return Prediction(*forward(self.model, q_idx, sel, sources, self.device), self.model_version)


@dataclass
class ScoredBatch:
    scores: list[tuple[bytes, bytes]] = field(default_factory=list)  # (key, value) for the scores topic
    dead: list[tuple[Record, EventError]] = field(default_factory=list)
    degraded: bool = False  # the feature store was down: sessions scored survey-only


@dataclass
class Encoded:
    events: list[SessionEvent]
    data: EncodedData | None  # None when no event of the batch was valid
    dead: list[tuple[Record, EventError]]
    degraded: bool

    @property
    def model_args(self) -> tuple:
        return self.data.survey.q_idx, self.data.survey.sel, self.data.sources


class BatchScorer:
    def __init__(self, questionnaire: Questionnaire, features_spec: FeatureSpec, predictor: Predictor,
                 feature_client: FeatureClient | None, threshold: float = 0.5,
                 clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
                 lookup_attempts: int = 3, lookup_backoff_s: float = 0.1, abstain_below: float = 0.0):
        """``predicted_keys``: each single-select question's most likely option (none where its
        probability is below ``abstain_below``), each multi-select option at ≥ ``threshold``."""
        self.q, self.spec, self.predictor = questionnaire, features_spec, predictor
        self.features, self.threshold, self.clock = feature_client, threshold, clock
        self.layout, self.abstain_below = Layout.of(questionnaire), abstain_below
        self.lookup_attempts, self.lookup_backoff_s = lookup_attempts, lookup_backoff_s

    def parse(self, records: list[Record]) -> tuple[list[tuple[Record, SessionEvent]], list[tuple[Record, EventError]]]:
        """Valid events, and dead letters for the rest. A record whose key is not its body's
        ``user_id`` is refused (``key_mismatch``): the key is what keeps a user's sessions on one
        partition. A null key is accepted. The same session twice (a producer's retry) is scored
        each time, in one batch or across batches alike; consumers deduplicate by ``session_id``."""
        good, dead = [], []
        for record in records:
            parsed = parse_event(record.value, self.q)
            if isinstance(parsed, SessionEvent) and record.key is not None and record.key != parsed.user_id.encode():
                parsed = EventError("key_mismatch", f"record key {record.key[:64]!r} is not the user_id "
                                                    f"{parsed.user_id!r}", "user_id")
            if isinstance(parsed, EventError):
                dead.append((record, parsed))
            else:
                good.append((record, parsed))
        return good, dead

    def lookup(self, user_ids: list[str]) -> tuple[dict[str, SourceArrays], bool]:
        """External inputs per source, and whether the store was unavailable (→ survey-only).
        An unavailable store is retried ``lookup_attempts`` times with exponential backoff; then
        the batch is scored survey-only and flagged ``degraded`` — never from made-up values.
        The next batch asks the store again, so scoring recovers when it returns."""
        if self.features is None:
            return {}, False
        for attempt in range(self.lookup_attempts):
            try:
                return self.features.model_inputs(user_ids, self.spec), False
            except LanternError:  # FeatureStoreUnavailable
                if attempt < self.lookup_attempts - 1:
                    time.sleep(self.lookup_backoff_s * 2 ** attempt)
        return {}, True

    def encode(self, records: list[Record]) -> Encoded:
        """Parse, dead-letter what is bad, look features up, encode: everything before the model."""
        good, dead = self.parse(records)
        events = [e for _, e in good]
        if not events:
            return Encoded(events, None, dead, False)
        sources, degraded = self.lookup([e.user_id for e in events])
        return Encoded(events, encode_sessions(self.q, events_to_sessions(events), self.spec, sources), dead, degraded)

    def finish(self, enc: Encoded, pred: Prediction | None) -> ScoredBatch:
        """The scores topic's records for an encoded batch and its prediction."""
        out = ScoredBatch(dead=enc.dead, degraded=enc.degraded)
        now = self.clock()
        predicted = decide(pred.probs, self.layout, self.threshold, self.abstain_below) if enc.events else None
        for i, event in enumerate(enc.events):
            used = [s.name for s, arr in zip(self.spec.sources, enc.data.sources) if arr.present[i]]
            out.scores.append((event.user_id.encode(), score_bytes(
                event, pred.probs[i], self.q, pred.model_version, self.threshold, used,
                None if np.isnan(pred.gate[i]) else float(pred.gate[i]), now, degraded=enc.degraded,
                predicted=predicted[i], abstain_below=self.abstain_below)))
        return out

    def score(self, records: list[Record]) -> ScoredBatch:
        enc = self.encode(records)
        pred = self.predictor.predict(*enc.model_args) if enc.data is not None else None
        return self.finish(enc, pred)
