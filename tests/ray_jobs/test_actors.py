"""`lantern score --ray-actors N`: N scorer consumers as Ray actors on a real broker, one group."""

from __future__ import annotations

import json
import os
import uuid

import pytest

from ray_jobs.actors import local_scorer_factory, run_actors, total
from streaming.broker import launch_broker
from streaming.events import sessions_to_events
from streaming.kafka_io import KafkaConfig, replay
from tests.streaming.test_kafka_scorer import read_all


@pytest.fixture(scope="module")
def broker():
    with launch_broker(os.environ.get("KAFKA_BOOTSTRAP")) as b:
        yield b


def test_two_actor_consumers_share_the_partitions_and_score_every_session(ray_cluster, broker, model_dirs,
                                                                         sqlite_store, recent_ds):
    tag = uuid.uuid4().hex[:8]
    cfg = KafkaConfig(bootstrap=broker.bootstrap, input_topic=f"in-{tag}", scores_topic=f"scores-{tag}",
                      dlq_topic=f"dlq-{tag}", group_id=f"actors-{tag}", partitions=4, max_poll_records=64)
    events = sessions_to_events(recent_ds.sessions.slice(0, 400))
    replay(cfg, events)
    make = local_scorer_factory(model_dirs[0][0], "cpu", sqlite_store[1], True, 0.5)
    stats = run_actors(2, make, cfg, idle_exit_s=4.0, num_cpus=0.5)
    assert len(stats) == 2 and all(s.consumed > 0 for s in stats)  # both actors got partitions
    assert total(stats).scored == 400
    scored = {json.loads(r.value)["session_id"] for r in read_all(broker.bootstrap, cfg.scores_topic, 400)}
    assert scored == set(recent_ds.sessions.column("session_id").to_pylist()[:400])
