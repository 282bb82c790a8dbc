"""The demo's streaming phase: replay completed sessions through Kafka into the Serve-backed
consumers, collect the scores the score sink writes to Feast, and measure what a user sees.

Completion→score latency of a session = the score record's timestamp (when the scorer produced
it) − the input record's timestamp (when the replayer produced the completion event); both are
this machine's clock. Throughput = sessions scored / (last score − first completion).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from lantern.settings.kafka import KafkaConfig

#: one of each way an event breaks the contract (the DLQ must get every one, with its reason)
BAD_EVENT_KINDS = ("bad_json", "unknown_question", "missing_user_id", "bad_timestamp", "lone_surrogate",
                   "future_completion")


def bad_event(kind: str, template: bytes) -> bytes:
    """A broken copy of a valid event (``template``)."""
    body = json.loads(template)
    if kind == "bad_json":
        return template[: len(template) // 2]
    if kind == "unknown_question":
        body["answers"][0]["question_id"] = "Q_NOT_IN_QUESTIONNAIRE"
    elif kind == "missing_user_id":
        del body["user_id"]
    elif kind == "bad_timestamp":
        body["completed_at"] = "yesterday afternoon"
    elif kind == "lone_surrogate":  # legal JSON (the \ud800 escape), not a legal string
        body["user_id"] = "\ud800"
    elif kind == "future_completion":  # a client whose clock is broken
        body["completed_at"] = "9999-12-31T23:59:59Z"
    else:
        raise ValueError(f"unknown bad-event kind {kind!r}")
    return json.dumps(body).encode()


def with_bad_events(events: list[tuple[bytes, bytes]], n_bad: int, seed: int) -> tuple[list, list]:
    """``events`` with ``n_bad`` broken ones spread through them; (mixed, session id or None per event)."""
    rng = np.random.default_rng(seed)
    ids = [json.loads(v)["session_id"] for _, v in events]
    at = set(rng.choice(len(events), size=min(n_bad, len(events)), replace=False).tolist())
    mixed, mixed_ids, k = [], [], 0
    for i, (key, value) in enumerate(events):
        if i in at:
            mixed.append((key, bad_event(BAD_EVENT_KINDS[k % len(BAD_EVENT_KINDS)], value)))
            mixed_ids.append(None)
            k += 1
        mixed.append((key, value))
        mixed_ids.append(ids[i])
    return mixed, mixed_ids


@dataclass
class StreamResult:
    replayed: int
    bad_sent: int
    scored: pd.DataFrame  # one row per scored session: session_id, sent_ms, produced_ms, latency_ms, gate_mean …
    dead_lettered: int
    dlq_reasons: dict[str, int]
    degraded: int
    seconds: float
    feast_check: dict = field(default_factory=dict)
    samples: pd.DataFrame = field(default_factory=pd.DataFrame)  # t_s, replicas, lag (ReplicasAndLag)

    def summary(self) -> dict:
        lat = self.scored["latency_ms"].to_numpy()
        span_s = (self.scored["produced_ms"].max() - self.scored["sent_ms"].min()) / 1000 if len(lat) else 0.0
        return {
            "sessions_replayed": self.replayed, "bad_events_sent": self.bad_sent,
            "sessions_scored": int(len(self.scored)), "dead_lettered": self.dead_lettered,
            "with_external_context": int((self.scored["sources_used"] > 0).sum()),
            "dlq_reasons": self.dlq_reasons, "degraded_scores": self.degraded,
            "throughput_per_s": float(len(lat) / span_s) if span_s else 0.0,
            "latency_p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
            "latency_p99_ms": float(np.percentile(lat, 99)) if len(lat) else None,
            "stream_seconds": self.seconds, "feast": self.feast_check,
            "replicas_max": int(self.samples["replicas"].max()) if len(self.samples) else None,
            "lag_max": int(self.samples["lag"].max()) if len(self.samples) else None,
        }

    def timeline(self, bin_s: float = 1.0) -> pd.DataFrame:
        """Per time bin since the first completion: sessions scored/s and latency p50/p99."""
        t0 = self.scored["sent_ms"].min()
        bins = ((self.scored["produced_ms"] - t0) // (bin_s * 1000)).astype(int)
        grouped = self.scored.groupby(bins)["latency_ms"]
        return pd.DataFrame({"t_s": grouped.size().index * bin_s, "scored_per_s": grouped.size().to_numpy() / bin_s,
                             "latency_p50_ms": grouped.quantile(0.5).to_numpy(),
                             "latency_p99_ms": grouped.quantile(0.99).to_numpy()})


def topic_reasons(cfg: KafkaConfig, topic: str) -> dict[str, int]:
    """Every record of ``topic`` (read from the start, no group) counted by its error-class header."""
    from kafka import KafkaConsumer

    from streaming.kafka_io import assign_from_start
    from streaming.partitions import log_ends

    consumer = KafkaConsumer(enable_auto_commit=False, **cfg.client_options())
    try:
        parts = assign_from_start(consumer, topic)
        if not parts:
            return {}
        end = log_ends(consumer, parts)
        for tp in parts:
            consumer.seek_to_beginning(tp)
        reasons: dict[str, int] = {}
        while any(consumer.position(tp) < end[tp] for tp in parts):
            for msgs in consumer.poll(timeout_ms=1000).values():
                for m in msgs:
                    kind = dict(m.headers).get("lantern.error.class", b"?").decode()
                    reasons[kind] = reasons.get(kind, 0) + 1
        return reasons
    finally:
        consumer.close()


class ReplicasAndLag:
    """Every ``every_s`` seconds while the stream runs: the scorer deployment's running replicas
    and the scorer group's lag (high-watermarks − committed offsets on the input topic)."""

    def __init__(self, cfg: KafkaConfig, scorer_app: str, every_s: float = 0.5):
        self.cfg, self.app, self.every_s, self.rows = cfg, scorer_app, every_s, []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="replicas-and-lag", daemon=True)

    def _run(self) -> None:
        from kafka import KafkaAdminClient, KafkaConsumer

        from ray_jobs.serve import running_replicas
        from streaming.kafka_io import topic_partitions
        from streaming.partitions import log_ends

        admin = KafkaAdminClient(**self.cfg.client_options())
        consumer = KafkaConsumer(**self.cfg.client_options())
        t0 = time.monotonic()
        try:
            parts = topic_partitions(consumer, self.cfg.input_topic)
            while not self.stop.wait(self.every_s):
                ends = log_ends(consumer, parts)
                committed = admin.list_group_offsets(self.cfg.group_id).get(self.cfg.group_id, {})
                lag = sum(ends[tp] - max(committed[tp].offset, 0) if tp in committed else ends[tp] for tp in parts)
                self.rows.append({"t_s": time.monotonic() - t0, "replicas": running_replicas(self.app), "lag": lag})
        finally:
            consumer.close()
            admin.close()

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=10)

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=["t_s", "replicas", "lag"])


def stream(cfg: KafkaConfig, events: list[tuple[bytes, bytes]], ids: list, store, consumers: int,
           scorer_app: str, rate: float | None, wait_s: float = 120.0) -> StreamResult:
    """Consumers app up → score sink up → replay → wait for every valid session's score → stop all."""
    from ray import serve

    from ray_jobs.consumers import CONSUMERS_APP, build_consumers, wait_assigned
    from streaming.kafka_io import Stopper, ensure_topics, replay
    from streaming.score_sink import run_score_sink

    ensure_topics(cfg)
    frames: list[pd.DataFrame] = []
    stopper = Stopper()
    sink = threading.Thread(target=run_score_sink, args=(cfg, store, stopper, frames.append), name="score-sink",
                            daemon=True)
    sink.start()
    handle = serve.run(build_consumers(cfg, consumers, scorer_app), name=CONSUMERS_APP, route_prefix=None)
    t0 = time.perf_counter()
    sampler = ReplicasAndLag(cfg, scorer_app)
    try:
        wait_assigned(handle)
        sent: list[int] = []
        with sampler:
            replay(cfg, events, rate, progress=True, sent_ms=sent)
            want = sum(i is not None for i in ids)
            _wait_scored(frames, want, wait_s)
    finally:
        serve.delete(CONSUMERS_APP)  # each loop finishes its batch, commits, leaves the group
        stopper.stop()
        sink.join(timeout=30)
    seconds = time.perf_counter() - t0
    scored = pd.concat(frames, ignore_index=True).drop_duplicates("session_id", keep="first") if frames else \
        pd.DataFrame(columns=["session_id", "user_id", "completed_at", "produced_ms", "gate_mean", "degraded",
                              "sources_used"])
    sent_by_id = pd.Series([ms for ms, sid in zip(sent, ids) if sid is not None],
                           index=[sid for sid in ids if sid is not None])
    scored["sent_ms"] = sent_by_id.reindex(scored["session_id"]).to_numpy()
    scored["latency_ms"] = scored["produced_ms"] - scored["sent_ms"]
    reasons = topic_reasons(cfg, cfg.dlq_topic)
    return StreamResult(len(events), sum(i is None for i in ids), scored, sum(reasons.values()), reasons,
                        int(scored["degraded"].sum()), seconds, samples=sampler.frame())


def _wait_scored(frames: list[pd.DataFrame], want: int, wait_s: float) -> None:
    """Until ``want`` scores reached the sink, or nothing new came for ``wait_s``."""
    last, last_change = 0, time.monotonic()
    with tqdm(total=want, desc="scores in Feast", unit="session") as bar:
        while True:
            got = sum(len(f) for f in list(frames))
            bar.update(got - bar.n)
            if got >= want:
                return
            if got != last:
                last, last_change = got, time.monotonic()
            elif time.monotonic() - last_change > wait_s:
                return  # reported as missing scores, not hidden
            time.sleep(0.25)


def check_feast(store, scored: pd.DataFrame, sample: int = 50, seed: int = 0) -> dict:
    """Read a sample of users' latest scores back from the online store; each must be the score of
    that user's latest completed session (the sink's rule; not the last produced: one micro-batch
    gives a user's two sessions the same produce time)."""
    from features.store import latest_scores
    from streaming.score_sink import latest_per_user

    last = latest_per_user(scored).set_index("user_id")
    users = list(np.random.default_rng(seed).choice(last.index.to_numpy(), size=min(sample, len(last)),
                                                    replace=False))
    online = latest_scores(store, users)
    matches = sum(online["session_id"][i] == last.loc[u, "session_id"] for i, u in enumerate(users))
    return {"users_with_scores": int(len(last)), "sampled": len(users), "sample_matches": int(matches)}
