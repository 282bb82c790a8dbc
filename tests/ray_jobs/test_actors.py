"""`lantern score --ray-actors N`: N scorer consumers as Ray actors on a real broker, one group."""

from __future__ import annotations

import json
import os
import threading
import uuid

from ray_jobs.actors import run_actors, total
from lantern.settings.scoring import ScoringConfig
from ray_jobs.scorers import local_scorer_factory
from streaming.events import sessions_to_events
from streaming.kafka_io import KafkaConfig, ensure_topics, replay
from tests.streaming.test_kafka_scorer import read_all


def test_two_actor_consumers_share_the_partitions_and_score_every_session(ray_cluster, broker, model_dirs,
                                                                         sqlite_store, recent_ds):
    tag = uuid.uuid4().hex[:8]
    cfg = KafkaConfig(bootstrap=broker.bootstrap, input_topic=f"in-{tag}", scores_topic=f"scores-{tag}",
                      dlq_topic=f"dlq-{tag}", group_id=f"actors-{tag}", partitions=4, max_poll_records=64)
    events = sessions_to_events(recent_ds.sessions.slice(0, 400))
    ensure_topics(cfg)
    # the sessions arrive once both actors have joined the group (else the first may take them all)
    later = threading.Timer(8.0, replay, (cfg, events), {"progress": False})
    later.start()
    make = local_scorer_factory(model_dirs[0][0], "cpu", sqlite_store[1], True, ScoringConfig(threshold=0.5))
    stats = run_actors(2, make, cfg, idle_exit_s=12.0, num_cpus=0.5)
    later.join()
    assert len(stats) == 2 and all(s.consumed > 0 for s in stats)  # both actors got partitions
    assert total(stats).scored == 400
    scored = {json.loads(r.value)["session_id"] for r in read_all(broker.bootstrap, cfg.scores_topic, 400)}
    assert scored == set(recent_ds.sessions.column("session_id").to_pylist()[:400])


def test_score_serve_cli_deploys_the_champion_and_scores_through_it(broker, model_dirs, recent_ds, tmp_path):
    """`lantern score --serve` in a child process (its own local Ray): the registry's champion is
    deployed, every micro-batch goes through the Serve app, outputs name the version."""
    import subprocess
    import sys
    from pathlib import Path

    from model.registry import Registry
    from tests.streaming.test_kafka_scorer import topics

    reg = Registry(tmp_path / "registry")
    reg.register(model_dirs[0][0], {"val_f1": 0.5})
    reg.promote("v0001")
    cfg = topics(broker)
    replay(cfg, sessions_to_events(recent_ds.sessions.slice(0, 150)), progress=False)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own local Ray, not the tests'
    env.update({"LANTERN_SERVE__REGISTRY": str(reg.root), "LANTERN_KAFKA__INPUT_TOPIC": cfg.input_topic,
                "LANTERN_KAFKA__SCORES_TOPIC": cfg.scores_topic, "LANTERN_KAFKA__DLQ_TOPIC": cfg.dlq_topic,
                "LANTERN_KAFKA__GROUP_ID": cfg.group_id})
    exe = Path(sys.executable).with_name("lantern")
    done = subprocess.run([str(exe), "score", "--serve", "--no-features", "--bootstrap", broker.bootstrap,
                           "--idle-exit", "4"], env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "consumed 150, scored 150, dead-lettered 0" in " ".join(done.stdout.split())
    out = [json.loads(r.value) for r in read_all(broker.bootstrap, cfg.scores_topic, 150)]
    assert len(out) == 150 and {o["model_version"] for o in out} == {"v0001"}


def test_the_ray_job_entry_point_is_the_retrain_command():
    import subprocess
    import sys
    from pathlib import Path

    lantern = Path(sys.executable).with_name("lantern")  # `ray job submit -- lantern retrain ...`
    done = subprocess.run([str(lantern), "retrain", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "--archive" in done.stdout and "Ray Train" in done.stdout
