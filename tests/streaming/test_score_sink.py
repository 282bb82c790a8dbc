"""The score sink on a real broker: scores topic → Feast online store, latest score per user,
offsets committed only after the push (a rerun of the group reads nothing new)."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from kafka import KafkaProducer

from features.store import latest_scores
from streaming.events import SessionEvent, score_bytes
from streaming.kafka_io import KafkaConfig, Stopper
from streaming.score_sink import latest_per_user, run_score_sink, score_frame
from streaming.scoring import Record
from tests.features.conftest import recent_ds, sqlite_store  # noqa: F401  (shared fixtures)
from tests.ray_jobs.conftest import model_dirs  # noqa: F401

pytestmark = pytest.mark.slow


def scores(q, rows: list[tuple], t0: datetime) -> list[tuple[bytes, bytes]]:
    """(user, session, probability of every key[, completed_at]) → score records, scored one
    minute apart (completed at ``t0`` unless given)."""
    out = []
    for i, (user, session, p, *done) in enumerate(rows):
        event = SessionEvent(session, user, done[0] if done else t0, ())
        out.append((user.encode(), score_bytes(event, np.full(q.n_keys, p, np.float32), q, "v0007", 0.5, [], 0.3,
                                               t0 + timedelta(minutes=i))))
    return out


def test_score_frame_decodes_and_keeps_each_users_last_row(recent_ds):  # noqa: F811
    q = recent_ds.questionnaire
    t0 = datetime(2026, 11, 1, tzinfo=timezone.utc)
    records = [Record("s", 0, i, k, v, 1000 + i) for i, (k, v) in
               enumerate(scores(q, [("u1", "a", 0.2), ("u2", "b", 0.7), ("u1", "c", 0.9)], t0))]
    frame = score_frame(records)
    assert list(frame["produced_ms"]) == [1000, 1001, 1002]
    assert frame.loc[1, "predicted_keys"] == list(q.response_keys)  # 0.7 ≥ 0.5 on every key
    latest = latest_per_user(frame)
    assert dict(zip(latest["user_id"], latest["session_id"])) == {"u1": "c", "u2": "b"}


def test_the_latest_score_is_the_latest_completion_not_the_last_arrival(recent_ds):  # noqa: F811
    q = recent_ds.questionnaire
    t0 = datetime(2026, 11, 1, tzinfo=timezone.utc)
    rows = [("u1", "new", 0.9, t0 + timedelta(days=2)), ("u1", "old", 0.2, t0), ("u2", "b", 0.5, t0)]
    frame = score_frame([Record("s", 0, i, k, v) for i, (k, v) in enumerate(scores(q, rows, t0))])
    latest = latest_per_user(frame)
    assert dict(zip(latest["user_id"], latest["session_id"])) == {"u1": "new", "u2": "b"}
    stored = {"u1": t0 + timedelta(days=5), "u2": t0 - timedelta(days=1)}  # the store holds a newer u1
    assert latest_per_user(frame, stored)["session_id"].tolist() == ["b"]


def test_scores_topic_lands_in_the_online_store_latest_per_user(broker, sqlite_store, recent_ds):  # noqa: F811
    store, _ = sqlite_store
    tag = uuid.uuid4().hex[:8]
    cfg = KafkaConfig(bootstrap=broker.bootstrap, input_topic=f"in-{tag}", scores_topic=f"scores-{tag}",
                      dlq_topic=f"dlq-{tag}", max_poll_records=2)
    users = [f"sink-{tag}-{i}" for i in range(5)]
    rows = [(u, f"{u}-s1", 0.1) for u in users] + [(users[0], f"{users[0]}-s2", 0.8)]
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
    for key, value in scores(recent_ds.questionnaire, rows, datetime.now(timezone.utc) - timedelta(hours=1)):
        producer.send(cfg.scores_topic, key=key, value=value)
    producer.flush()
    producer.close()

    seen = []
    sink = f"sink-{tag}"
    assert run_score_sink(cfg, store, Stopper(), on_batch=seen.append, max_events=6, idle_exit_s=10,
                          group_id=sink) == 6
    online = latest_scores(store, users)
    assert online["session_id"] == [f"{users[0]}-s2"] + [f"{u}-s1" for u in users[1:]]
    np.testing.assert_allclose(online["probabilities"][0], 0.8, rtol=1e-6)
    assert sum(len(f) for f in seen) == 6
    assert run_score_sink(cfg, store, Stopper(), max_events=1, idle_exit_s=5, group_id=sink) == 0  # all committed


def test_a_users_sessions_on_two_partitions_end_as_the_latest_completion(broker, sqlite_store, recent_ds):  # noqa: F811
    store, _ = sqlite_store
    tag = uuid.uuid4().hex[:8]
    cfg = KafkaConfig(bootstrap=broker.bootstrap, input_topic=f"in-{tag}", scores_topic=f"scores-{tag}",
                      dlq_topic=f"dlq-{tag}", partitions=2, max_poll_records=1)
    from streaming.kafka_io import ensure_topics

    ensure_topics(cfg)
    user, t0 = f"two-{tag}", datetime.now(timezone.utc) - timedelta(hours=2)
    (k_new, v_new), (k_old, v_old) = scores(recent_ds.questionnaire, [(user, "newer", 0.9, t0 + timedelta(hours=1)),
                                                                      (user, "older", 0.1, t0)], t0)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
    producer.send(cfg.scores_topic, key=k_new, value=v_new, partition=0).get(10)
    producer.send(cfg.scores_topic, key=k_old, value=v_old, partition=1).get(10)  # the older one arrives last
    producer.close()
    assert run_score_sink(cfg, store, Stopper(), max_events=2, idle_exit_s=10, group_id=f"sink-{tag}") == 2
    assert latest_scores(store, [user])["session_id"] == ["newer"]


def _online_scorer(broker, store, model_dir):
    """A scorer of ``model_dir`` over the online store, and fresh topics on ``broker``."""
    from features.lookup import OnlineLookup
    from model.checkpoint import load_model
    from model.inference import InProcessPredictor
    from streaming.scoring import BatchScorer

    loaded = load_model(model_dir)
    scorer = BatchScorer(loaded.questionnaire, loaded.features, InProcessPredictor(loaded.model, "v1"),
                         OnlineLookup(store))
    tag = uuid.uuid4().hex[:8]
    cfg = KafkaConfig(bootstrap=broker.bootstrap, input_topic=f"in-{tag}", scores_topic=f"scores-{tag}",
                      dlq_topic=f"dlq-{tag}", group_id=f"scorer-{tag}", max_poll_records=50)
    return scorer, cfg, tag


def test_replaying_from_earliest_reproduces_the_outputs_and_the_feast_state(broker, sqlite_store, recent_ds,  # noqa: F811
                                                                             model_dirs):  # noqa: F811
    import json
    from dataclasses import replace

    from streaming.events import decode_probabilities, sessions_to_events
    from streaming.kafka_io import KafkaScorer, replay
    from tests.streaming.test_kafka_scorer import read_all

    store, _ = sqlite_store
    scorer, cfg, tag = _online_scorer(broker, store, model_dirs[0][0])
    sessions = recent_ds.sessions.slice(0, 200)
    users = sorted(set(sessions.column("user_id").to_pylist()))
    replay(cfg, sessions_to_events(sessions), progress=False)

    def state() -> tuple[list, np.ndarray]:
        online = latest_scores(store, users)
        return list(zip(online["session_id"], online["model_version"])), np.asarray(online["probabilities"])

    assert KafkaScorer(scorer, cfg, max_events=200, idle_exit_s=15).run().scored == 200
    sink = f"sink-{tag}"
    assert run_score_sink(cfg, store, Stopper(), max_events=200, idle_exit_s=15, group_id=sink) == 200
    first = state()
    rerun = replace(cfg, group_id=f"replay-{tag}")  # a new group starts from the earliest offset
    assert KafkaScorer(scorer, rerun, max_events=200, idle_exit_s=15).run().scored == 200
    assert run_score_sink(cfg, store, Stopper(), max_events=200, idle_exit_s=15, group_id=sink) == 200  # replayed
    second = state()
    assert second[0] == first[0]  # the same latest session and version for every user
    # the same probabilities: micro-batches are composed differently on a replay, and padding to
    # another batch length changes float rounding in the last bits, never more
    np.testing.assert_allclose(second[1], first[1], atol=1e-5)

    outputs = [json.loads(r.value) for r in read_all(broker.bootstrap, cfg.scores_topic, 400)]
    assert len(outputs) == 400
    by_session: dict[str, list] = {}
    for o in outputs:
        by_session.setdefault(o["session_id"], []).append(decode_probabilities(o["probabilities_f32"]))
    assert set(by_session) == set(sessions.column("session_id").to_pylist())  # deduplicated: the same set
    assert all(len(v) == 2 and np.allclose(v[0], v[1], atol=1e-5) for v in by_session.values())


def test_a_session_dated_9999_is_refused_and_the_served_score_stays_the_latest_real_one(broker, sqlite_store,  # noqa: F811
                                                                                        recent_ds, model_dirs):  # noqa: F811
    """One event from a client whose clock is broken must not pin a user's served score: the
    scorer refuses it (``future_time``, to the DLQ) and Feast keeps the user's latest real session."""
    import json

    from streaming.events import sessions_to_events
    from streaming.kafka_io import KafkaScorer, replay
    from tests.streaming.test_kafka_scorer import read_all

    store, _ = sqlite_store
    scorer, cfg, tag = _online_scorer(broker, store, model_dirs[0][0])
    (key, real), = sessions_to_events(recent_ds.sessions.slice(0, 1))
    body = json.loads(real)
    user = f"clock-{tag}"
    events = [(user.encode(), json.dumps({**body, "user_id": user, "session_id": sid, "event_id": sid,
                                          "completed_at": when}).encode())
              for sid, when in ((f"{tag}-old", "2026-01-02T00:00:00Z"), (f"{tag}-real", body["completed_at"]),
                                (f"{tag}-9999", "9999-12-31T23:59:59Z"))]
    replay(cfg, events, progress=False)
    stats = KafkaScorer(scorer, cfg, max_events=3, idle_exit_s=15).run()
    assert (stats.scored, stats.dead_lettered) == (2, 1)
    (dead,) = read_all(broker.bootstrap, cfg.dlq_topic, 1)
    assert dict(dead.headers)["lantern.error.class"] == b"future_time" and dead.value == events[2][1]
    assert run_score_sink(cfg, store, Stopper(), max_events=2, idle_exit_s=15, group_id=f"sink-{tag}") == 2
    assert latest_scores(store, [user])["session_id"] == [f"{tag}-real"]
