"""Overload: a Serve app with a tiny queue under a burst. Callers get back-pressure and retry with
backoff; the Kafka consumer among them keeps its partitions (no rebalance), holds at most two
micro-batches (one being scored, one being produced), and every session is scored exactly once."""

from __future__ import annotations

import json
import threading
import uuid

import pytest
from ray import serve

from lantern.settings.serve import ServeConfig
from model.registry import Registry
from ray_jobs.serve import ServeScorer, build_app, feature_store_options
from streaming.events import sessions_to_events
from streaming.kafka_io import KafkaConfig, KafkaScorer, replay
from streaming.scoring import Record
from tests.streaming.test_kafka_scorer import read_all

pytestmark = pytest.mark.slow


def test_a_burst_gets_backpressure_retries_and_loses_nothing(ray_cluster, broker, model_dirs, sqlite_store,
                                                              recent_ds, tmp_path):
    reg = Registry(tmp_path / "registry")
    reg.register(model_dirs[0][0], {"val_f1": model_dirs[0][1]})
    reg.promote("v0001")
    cfg = ServeConfig(app_name="tight", registry=reg.root, max_batch_size=1, max_ongoing_requests=1,
                      max_queued_requests=1, min_replicas=1, max_replicas=1)
    serve.start(proxy_location="Disabled")
    handle = serve.run(build_app(cfg, features=feature_store_options(sqlite_store[1])), name="tight",
                       route_prefix=None)
    try:
        tag = uuid.uuid4().hex[:8]
        kafka = KafkaConfig(bootstrap=broker.bootstrap, input_topic=f"in-{tag}", scores_topic=f"scores-{tag}",
                            dlq_topic=f"dlq-{tag}", group_id=f"tight-{tag}", partitions=2, max_poll_records=50)
        sessions = recent_ds.sessions.slice(0, 300)
        replay(kafka, sessions_to_events(sessions), progress=False)

        burst = [ServeScorer(handle, attempts=10, backoff_s=0.1) for _ in range(4)]
        batches = [[Record("burst", 0, j, k, v) for j, (k, v) in
                    enumerate(sessions_to_events(recent_ds.sessions.slice(300 + 40 * i, 40)))] for i in range(4)]
        stop, done, errors = threading.Event(), [0] * 4, []

        def hammer(i: int) -> None:
            while not stop.is_set():
                try:
                    assert len(burst[i].score(batches[i]).scores) == 40
                    done[i] += 1
                except Exception as exc:  # noqa: BLE001 — counted, and the test asserts there is none
                    errors.append(repr(exc))

        threads = [threading.Thread(target=hammer, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        log: list[str] = []
        consumer = ServeScorer(handle, attempts=10, backoff_s=0.1)
        try:
            stats = KafkaScorer(consumer, kafka, max_events=300, idle_exit_s=20, log=log.append).run()
        finally:
            stop.set()
            for t in threads:
                t.join(60)
    finally:
        serve.shutdown()  # Serve was started without HTTP here: later tests start it with HTTP

    retries = consumer.retries + sum(s.retries for s in burst)
    print(f"overload: {sum(done)} burst calls + {stats.batches} consumer batches, {retries} retried after "
          f"back-pressure, {len(errors)} failed; 300 consumed, {stats.scored} scored")
    assert errors == [] and all(n > 0 for n in done)  # every burst call answered in the end
    assert consumer.retries + sum(s.retries for s in burst) > 0  # back-pressure did happen
    # no rebalance: partitions assigned once, revoked only when the consumer left at the end
    assert sum("assigned" in line for line in log) == 1 and not any("revoked" in line for line in log[:-1]), log
    assert stats.consumed == stats.scored == 300 and stats.batches >= 300 // 50  # ≤ 50 per poll
    ids = [json.loads(r.value)["session_id"] for r in read_all(broker.bootstrap, kafka.scores_topic, 300)]
    assert sorted(ids) == sorted(sessions.column("session_id").to_pylist())  # each exactly once
