"""`lantern sink-scores`: the scores topic → Feast's online ``lantern_scores`` view.

A consumer group of its own (``lantern-score-sink``), so writing back never slows scoring. Per
micro-batch: decode the score records (pure: :func:`score_frame`) → one push to the online store,
each user's latest score only → commit. At-least-once: a redelivered batch pushes the same rows
again, which leaves the store as it was.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime

import pandas as pd

from streaming.config import KafkaConfig
from streaming.events import decode_probabilities
from streaming.scoring import Record

SINK_GROUP = "lantern-score-sink"
FEAST_COLUMNS = ["user_id", "session_id", "model_version", "probabilities", "predicted_keys", "event_timestamp"]


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
            "gate_mean": body["gate_mean"], "degraded": body["degraded"], "produced_ms": record.timestamp_ms,
            "sources_used": len(body["external_sources_used"]),
        })
    return pd.DataFrame(rows)


def latest_per_user(frame: pd.DataFrame) -> pd.DataFrame:
    """Each user's last row (records arrive in offset order per partition, keyed by user)."""
    return frame.drop_duplicates("user_id", keep="last")


def run_score_sink(cfg: KafkaConfig, store, stopper, on_batch: Callable[[pd.DataFrame], None] | None = None,
                   max_events: int | None = None, idle_exit_s: float | None = None,
                   log=lambda msg: None, group_id: str = SINK_GROUP) -> int:
    """Consume the scores topic into the online store until stopped; returns records consumed."""
    from features.store import push_scores
    from streaming.kafka_io import consume_loop

    def handle(records: list[Record]) -> None:
        frame = score_frame(records)
        push_scores(store, latest_per_user(frame)[FEAST_COLUMNS])
        if on_batch is not None:
            on_batch(frame)

    return consume_loop(cfg, group_id, handle, stopper, max_events, idle_exit_s, log, topic=cfg.scores_topic)
