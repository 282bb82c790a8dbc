"""`lantern status` against a real broker, a real Feast store and a registry; no Ray running."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest

from streaming.broker import launch_broker
from streaming.kafka_io import KafkaConfig, Stopper, consume_loop, ensure_topics, replay
from tests.features.conftest import recent_ds, sqlite_store  # noqa: F401  (shared fixtures)

pytestmark = pytest.mark.slow


def test_status_shows_topics_lag_store_registry_and_exits_6_without_serve(sqlite_store, tmp_path):  # noqa: F811
    from ray_jobs.registry import Registry

    _, feast_cfg = sqlite_store
    tag = uuid.uuid4().hex[:8]
    with launch_broker(os.environ.get("KAFKA_BOOTSTRAP")) as broker:
        cfg = KafkaConfig(bootstrap=broker.bootstrap, input_topic=f"in-{tag}", scores_topic=f"scores-{tag}",
                          dlq_topic=f"dlq-{tag}", group_id=f"lantern-scorer-{tag}", partitions=2)
        ensure_topics(cfg)
        replay(cfg, [(b"k", b"v%d" % i) for i in range(10)], progress=False)
        consume_loop(cfg, cfg.group_id, lambda records: None, Stopper(), max_events=4, idle_exit_s=5)
        env = {**os.environ, "KAFKA_BOOTSTRAP": broker.bootstrap, "LANTERN_KAFKA__INPUT_TOPIC": cfg.input_topic,
               "LANTERN_KAFKA__SCORES_TOPIC": cfg.scores_topic, "LANTERN_KAFKA__DLQ_TOPIC": cfg.dlq_topic,
               "LANTERN_FEATURES__REPO": str(feast_cfg.repo), "COLUMNS": "220"}
        env.pop("RAY_ADDRESS", None)
        run = subprocess.run([sys.executable, "-m", "lantern.cli", "status", "--registry", str(tmp_path / "reg")],
                             env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 6, run.stdout + run.stderr  # no champion, no Ray: down, said so
    text = run.stdout
    assert f"in-{tag}" in text and "2 partitions" in text and "records" in text
    assert cfg.group_id in text and ("lag 0 " in text or "lag n/a" in text)  # consumed all 10 and committed
    assert "lantern_v1" in text and "materialized up to" in text
    assert "no versions" in text and "no Ray cluster" in text
    assert Registry(tmp_path / "reg").versions() == []
