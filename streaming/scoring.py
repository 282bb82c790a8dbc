"""The micro-batch scorer core — no Kafka, no Feast, no Ray imports (thin shells supply them).

``BatchScorer.score(records)``: parse and validate every record → one batched feature lookup →
one model call for the whole batch → encoded scores, plus dead letters for what could not be
scored. Pluggable pieces:

* a :class:`FeatureClient` (``features.lookup.OnlineLookup``, or ``streaming.testing.FakeFeatures``);
* a :class:`Predictor` (in-process model here; the Ray Serve handle in ray_jobs/).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Protocol

import numpy as np
import torch

from lantern.dataset.questionnaire import Questionnaire
from lantern.errors import LanternError
from model.data import encode_sessions, to_batch
from model.encoding import FeatureSpec
from streaming.events import EventError, SessionEvent, events_to_sessions, parse_event, score_bytes


@dataclass(frozen=True)
class Record:
    """One consumed record: where it came from and its bytes."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes


class FeatureClient(Protocol):
    def lookup(self, user_ids: list[str]) -> dict:  # name → object with .table (pa.Table) and .present
        ...


class Predictor(Protocol):
    model_version: str

    def predict(self, q_idx: np.ndarray, sel: np.ndarray, sources: list) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities (B, K), mean gate per session (B,), NaN where not applicable)."""
        ...


class InProcessPredictor:
    """The model in this process: one forward pass per micro-batch, on the chosen device."""

    def __init__(self, model: torch.nn.Module, model_version: str, device: str | torch.device = "cpu"):
        self.model, self.model_version, self.device = model.eval(), model_version, torch.device(device)

    @torch.no_grad()
    def predict(self, q_idx, sel, sources):
        batch = to_batch(q_idx, sel, sources, self.device)
        if getattr(self.model.cfg, "variant", "") == "lantern":
            logits, aux = self.model(batch, return_aux=True)
            mask = aux["survey_mask"][:, 1:].float()
            gate = (aux["gate"][:, 1:] * mask).sum(1) / mask.sum(1).clamp_min(1)
            gate = torch.where(aux["has_external"], gate, torch.full_like(gate, float("nan")))
        else:
            logits, gate = self.model(batch), torch.full((len(q_idx),), float("nan"))
        return torch.sigmoid(logits).float().cpu().numpy(), gate.float().cpu().numpy()


@dataclass
class ScoredBatch:
    scores: list[tuple[bytes, bytes]] = field(default_factory=list)  # (key, value) for the scores topic
    dead: list[tuple[Record, EventError]] = field(default_factory=list)
    degraded: bool = False  # the feature store was down: sessions scored survey-only


class BatchScorer:
    def __init__(self, questionnaire: Questionnaire, features_spec: FeatureSpec, predictor: Predictor,
                 feature_client: FeatureClient | None, threshold: float = 0.5,
                 clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)):
        self.q, self.spec, self.predictor = questionnaire, features_spec, predictor
        self.features, self.threshold, self.clock = feature_client, threshold, clock

    def parse(self, records: list[Record]) -> tuple[list[tuple[Record, SessionEvent]], list[tuple[Record, EventError]]]:
        good, dead, seen = [], [], set()
        for record in records:
            parsed = parse_event(record.value, self.q)
            if isinstance(parsed, SessionEvent) and parsed.session_id in seen:
                parsed = EventError("duplicate_session", f"session {parsed.session_id!r} twice in one batch",
                                    "session_id")
            if isinstance(parsed, EventError):
                dead.append((record, parsed))
            else:
                seen.add(parsed.session_id)
                good.append((record, parsed))
        return good, dead

    def lookup(self, user_ids: list[str]) -> tuple[dict, bool]:
        """Feature rows per source, and whether the store was unavailable (→ survey-only)."""
        if self.features is None:
            return {}, False
        try:
            rows = self.features.lookup(user_ids)
        except LanternError:  # FeatureStoreUnavailable: callers retry; here we degrade visibly
            return {}, True
        return {name: (r.table, r.present) for name, r in rows.items()}, False

    def score(self, records: list[Record]) -> ScoredBatch:
        good, dead = self.parse(records)
        out = ScoredBatch(dead=dead)
        if not good:
            return out
        events = [e for _, e in good]
        sources, out.degraded = self.lookup([e.user_id for e in events])
        data = encode_sessions(self.q, events_to_sessions(events), self.spec, sources)
        probs, gate = self.predictor.predict(data.survey.q_idx, data.survey.sel, data.sources)
        now = self.clock()
        for i, event in enumerate(events):
            used = [s.name for s, arr in zip(self.spec.sources, data.sources) if arr.present[i]]
            out.scores.append((event.user_id.encode(), score_bytes(
                event, probs[i], self.q, self.predictor.model_version, self.threshold, used,
                None if np.isnan(gate[i]) else float(gate[i]), now, degraded=out.degraded)))
        return out
