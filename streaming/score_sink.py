"""`lantern sink-scores`: the scores topic → Feast's online ``lantern_scores`` view.

A consumer group of its own (``lantern-score-sink``), so writing back never slows scoring. Per
micro-batch: decode the score records (pure: :func:`score_frame`) → each user's latest session by
``completed_at`` (not by arrival: a user's sessions may come through different partitions, or
late) → drop those not newer than what the store already holds → one push → commit.
At-least-once: a redelivered batch pushes nothing new, which leaves the store as it was.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime

import pandas as pd

from lantern.settings.kafka import KafkaConfig
from streaming.events import decode_probabilities
from streaming.scoring import Record

SINK_GROUP = "lantern-score-sink"
FEAST_COLUMNS = ["user_id", "session_id", "model_version", "probabilities", "predicted_keys", "completed_at",
                 "event_timestamp"]


def score_frame(records: list[Record]) -> pd.DataFrame:
    """Score records → one row each: the Feast columns plus ``gate_mean``, ``degraded``,
    ``sources_used`` (how many external sources the score had) and ``produced_ms`` (the score
    record's timestamp: when the scorer produced it)."""
    rows = []
    for record in records:
        body = json.loads(record.value)
        rows.append({
            "user_id": body["user_id"], "session_id": body["session_id"], "model_version": body["model_version"],
            "probabilities": decode_probabilities(body["probabilities_f32"]).tolist(),
            "predicted_keys": body["predicted_keys"],
            "event_timestamp": datetime.fromisoformat(body["scored_at"].replace("Z", "+00:00")),
            "completed_at": datetime.fromisoformat(body["completed_at"].replace("Z", "+00:00")),
            "gate_mean": body["gate_mean"], "degraded": body["degraded"], "produced_ms": record.timestamp_ms,
            "sources_used": len(body["external_sources_used"]),
        })
    return pd.DataFrame(rows)


def latest_per_user(frame: pd.DataFrame, stored: dict | None = None) -> pd.DataFrame:
    """Each user's row of the latest ``completed_at`` (ties: the later record), without the users
    whose ``stored`` score (user → its completed_at) is as recent or more."""
    latest = frame.sort_values("completed_at", kind="stable").drop_duplicates("user_id", keep="last")
    if not stored:
        return latest
    held = pd.to_datetime(latest["user_id"].map(stored), utc=True)
    return latest[held.isna() | (latest["completed_at"] > held)]


class FeastScoreSink:
    """Score records → each user's latest score into the online ``lantern_scores`` view: ``write``
    keeps the batch's newest score per user, ``flush`` pushes those newer than what the store holds.
    ``on_batch`` sees every batch's decoded frame (the demo's latency figures)."""

    def __init__(self, store, on_batch: Callable[[pd.DataFrame], None] | None = None, metrics=None):
        self.store, self.on_batch, self.pending, self.metrics = store, on_batch, [], metrics
        self.pending_records = 0

    def write(self, batch: list[Record]) -> None:
        frame = score_frame(batch)
        self.pending.append(latest_per_user(frame))
        self.pending_records += len(frame)
        if self.on_batch is not None:
            self.on_batch(frame)

    def flush(self) -> None:
        from features.store import push_scores, stored_completions

        if not self.pending:
            return
        latest = latest_per_user(pd.concat(self.pending, ignore_index=True))
        records, self.pending, self.pending_records = self.pending_records, [], 0
        newer = latest_per_user(latest, stored_completions(self.store, latest["user_id"].tolist()))
        if len(newer):
            push_scores(self.store, newer[FEAST_COLUMNS])
        if self.metrics is not None:  # a user's older scores and those not newer than the stored one
            self.metrics.duplicates("score_sink", records - len(newer))


def run_score_sink(cfg: KafkaConfig, store, stopper, on_batch: Callable[[pd.DataFrame], None] | None = None,
                   max_events: int | None = None, idle_exit_s: float | None = None,
                   log=lambda msg: None, group_id: str = SINK_GROUP, metrics=None) -> int:
    """Consume the scores topic into the online store until stopped; returns records consumed."""
    from streaming.kafka_io import run_group
    from streaming.loop import LoopOptions

    sink = FeastScoreSink(store, on_batch, metrics)

    def handle(records: list[Record]) -> None:
        sink.write(records)
        sink.flush()

    return run_group(cfg, group_id, handle, stopper,
                     LoopOptions(max_events, idle_exit_s, cfg.scores_topic, log, metrics=metrics))
