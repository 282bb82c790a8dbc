"""The Kafka scorer on a real broker (KAFKA_BOOTSTRAP, else testcontainers, else embedded Tansu):
N events in → N distinct session_ids out, each equal to offline scoring; poison pills → DLQ;
the same guarantees when the loop pipelines two batches through a remote-style scorer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from kafka import KafkaConsumer

from model.checkpoint import save_model
from streaming.events import decode_probabilities, sessions_to_events
from streaming.kafka_io import KafkaConfig, KafkaScorer, KafkaSink, OutputsNotAcknowledged, replay
from streaming.scoring import BatchScorer
from streaming.testing import ThreadScorer
from tests.streaming.test_scoring import _offline


def topics(broker) -> KafkaConfig:
    tag = uuid.uuid4().hex[:8]
    return KafkaConfig(bootstrap=broker.bootstrap, input_topic=f"in-{tag}", scores_topic=f"scores-{tag}",
                       dlq_topic=f"dlq-{tag}", group_id=f"scorer-{tag}", max_poll_records=64)


def read_all(bootstrap: str, topic: str, expect: int, timeout_s: float = 30) -> list:
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False, group_id=None, consumer_timeout_ms=2000)
    got, deadline = [], time.monotonic() + timeout_s
    while len(got) < expect and time.monotonic() < deadline:
        for records in consumer.poll(500).values():
            got += records
    consumer.close()
    return got


def test_every_event_scored_once_equal_to_offline_and_poison_dead_lettered(small_ds, broker, scorer):
    cfg = topics(broker)
    sessions = small_ds.sessions.slice(0, 300)
    events = sessions_to_events(sessions)
    good = json.loads(events[0][1])
    poison = [(b"u1", b"{nope"), (b"u2", b'{"schema_version": 2}'), (b"u3", b"[]"),
              (b"u4", json.dumps({**good, "session_id": "p4", "event_id": "p4",
                                  "answers": [{"question_id": "nope", "option_ids": ["o1"]}]}).encode()),
              (b"u5", json.dumps({**good, "session_id": "p5", "event_id": "p5",
                                  "answers": [{"question_id": "q01", "option_ids": ["o99"]}]}).encode()),
              (b"u6", events[1][1] + b" " * 70_000)]
    assert replay(cfg, events[:150] + poison + events[150:], progress=False) == 306
    stats = KafkaScorer(scorer, cfg, max_events=306, idle_exit_s=20).run()
    assert (stats.consumed, stats.scored, stats.dead_lettered) == (306, 300, 6)
    scores = [json.loads(r.value) for r in read_all(broker.bootstrap, cfg.scores_topic, 300)]
    assert sorted(o["session_id"] for o in scores) == sorted(sessions.column("session_id").to_pylist())
    offline = dict(zip(sessions.column("session_id").to_pylist(), _offline(small_ds, scorer, sessions)))
    for o in scores:
        np.testing.assert_allclose(decode_probabilities(o["probabilities_f32"]), offline[o["session_id"]], atol=1e-5)
    dead = read_all(broker.bootstrap, cfg.dlq_topic, 6)
    assert sorted(r.value for r in dead) == sorted(v for _, v in poison)  # original bytes, unchanged
    kinds = sorted(dict(r.headers)["lantern.error.class"].decode() for r in dead)
    assert kinds == ["bad_json", "oversized", "unknown_option", "unknown_question", "unknown_schema_version",
                     "wrong_types"]
    assert all(dict(r.headers)["lantern.source.topic"].decode() == cfg.input_topic for r in dead)
    # the group's committed offsets cover every input record: a restart has nothing to redo
    again = KafkaScorer(scorer, cfg, idle_exit_s=3).run()
    assert again.consumed == 0


CRASHING_SCORER = """
import os, signal, sys
from model.checkpoint import load_model
from streaming.kafka_io import KafkaConfig, KafkaScorer, KafkaSink
from streaming.scoring import BatchScorer
from model.inference import InProcessPredictor

class CrashAfterFlush(KafkaSink):
    def flush(self):
        super().flush()                               # scores flushed to the broker ...
        os.kill(os.getpid(), signal.SIGKILL)          # ... and the process dies before committing

cfg = KafkaConfig(**{k: v for k, v in (a.split("=", 1) for a in sys.argv[2:])}, max_poll_records=64)
loaded = load_model(sys.argv[1])
scorer = BatchScorer(loaded.questionnaire, loaded.features, InProcessPredictor(loaded.model, "v-crash"), None)
KafkaScorer(scorer, cfg, sink=CrashAfterFlush(cfg)).run()
"""


def child_scorer(script: str, small_ds, broker, scorer, tmp_path, n: int):
    """Replay ``n`` sessions to fresh topics; the command that runs ``script`` as a scorer process."""
    model_dir = save_model(tmp_path / "m", scorer.predictor.model, scorer.spec, small_ds.questionnaire, {})
    cfg = topics(broker)
    sessions = small_ds.sessions.slice(0, n)
    replay(cfg, sessions_to_events(sessions), progress=False)
    args = [f"{k}={getattr(cfg, k)}" for k in ("bootstrap", "input_topic", "scores_topic", "dlq_topic", "group_id")]
    return cfg, sessions, [sys.executable, "-c", script, str(model_dir), *args]


def test_kill_9_between_produce_and_commit_loses_nothing(small_ds, broker, scorer, tmp_path):
    cfg, sessions, command = child_scorer(CRASHING_SCORER, small_ds, broker, scorer, tmp_path, 200)
    crashed = subprocess.run(command, timeout=120)
    assert crashed.returncode == -9
    survey_only = BatchScorer(small_ds.questionnaire, scorer.spec, scorer.predictor, None)
    # it joins once the dead member's 6 s session ends; the topic holds 200 records in all
    stats = KafkaScorer(survey_only, cfg, max_events=200, idle_exit_s=20).run()
    assert stats.consumed == 200  # the uncommitted batch is redelivered, together with the rest
    out = [json.loads(r.value)["session_id"] for r in read_all(broker.bootstrap, cfg.scores_topic, 200 + 64)]
    assert set(out) == set(sessions.column("session_id").to_pylist())  # every session scored at least once
    duplicates = len(out) - len(set(out))
    assert 0 < duplicates <= 64  # exactly the one batch in flight, at most


class RefusesSecondBatchOnce(KafkaSink):
    """The broker refuses the second batch's outputs once (nothing of that batch was sent)."""

    writes = 0

    def write(self, batch):
        self.writes += 1
        if self.writes == 2:
            raise OutputsNotAcknowledged("injected: the broker did not take the outputs")
        super().write(batch)


def test_pipelined_scorer_loses_nothing_when_outputs_fail_with_two_batches_in_flight(small_ds, broker, scorer):
    cfg = topics(broker)
    sessions = small_ds.sessions.slice(0, 300)
    replay(cfg, sessions_to_events(sessions), progress=False)
    remote = ThreadScorer(scorer)
    sink = RefusesSecondBatchOnce(cfg)
    stats = KafkaScorer(remote, cfg, max_events=300, idle_exit_s=20, sink=sink).run()
    sink.close()
    assert remote.overlapped > 0  # batches were in flight two at a time
    assert (stats.consumed, stats.scored) == (300, 300)
    scores = [json.loads(r.value) for r in read_all(broker.bootstrap, cfg.scores_topic, 300)]
    ids = [o["session_id"] for o in scores]
    assert len(ids) == len(set(ids)) == 300  # the refused batch and the one started after it: once each
    offline = dict(zip(sessions.column("session_id").to_pylist(), _offline(small_ds, scorer, sessions)))
    for o in scores:
        np.testing.assert_allclose(decode_probabilities(o["probabilities_f32"]), offline[o["session_id"]], atol=1e-5)
    assert KafkaScorer(remote, cfg, idle_exit_s=3).run().consumed == 0  # every offset committed
    remote.close()


@pytest.mark.parametrize("pipelined", [False, True], ids=["in-process", "pipelined"])
def test_two_scorers_split_the_partitions_and_one_takes_over(small_ds, broker, scorer, pipelined):
    cfg = topics(broker)
    sessions = small_ds.sessions.slice(0, 400)
    replay(cfg, sessions_to_events(sessions), progress=False)
    wrap = ThreadScorer if pipelined else (lambda s: s)
    first = KafkaScorer(wrap(scorer), cfg, max_events=128)  # stops early: its partitions move to the second
    second = KafkaScorer(wrap(scorer), cfg, idle_exit_s=8)
    results = {}
    threads = [threading.Thread(target=lambda n=n, s=s: results.__setitem__(n, s.run())) for n, s in
               (("first", first), ("second", second))]
    for t in threads:
        t.start()
        time.sleep(0.5)
    for t in threads:
        t.join(120)
    assert results["first"].consumed >= 128 and results["second"].consumed > 0
    assert results["first"].consumed + results["second"].consumed >= 400
    out = [json.loads(r.value)["session_id"] for r in read_all(broker.bootstrap, cfg.scores_topic, 400)]
    assert set(out) == set(sessions.column("session_id").to_pylist())
    assert KafkaScorer(scorer, cfg, idle_exit_s=3).run().consumed == 0  # whoever scored a batch committed it


SLOW_SCORER = """
import sys, time
from model.checkpoint import load_model
from streaming.kafka_io import KafkaConfig, KafkaScorer, KafkaSink
from streaming.scoring import BatchScorer
from model.inference import InProcessPredictor

class SlowSink(KafkaSink):
    def flush(self):
        super().flush()
        print("batch", flush=True)
        time.sleep(0.3)

cfg = KafkaConfig(**{k: v for k, v in (a.split("=", 1) for a in sys.argv[2:])}, max_poll_records=32)
loaded = load_model(sys.argv[1])
scorer = BatchScorer(loaded.questionnaire, loaded.features, InProcessPredictor(loaded.model, "v-slow"), None)
stats = KafkaScorer(scorer, cfg, sink=SlowSink(cfg)).run()
print("drained", stats.consumed, flush=True)
"""


def test_sigterm_drains_commits_and_a_restart_makes_no_duplicates(small_ds, broker, scorer, tmp_path):
    cfg, sessions, command = child_scorer(SLOW_SCORER, small_ds, broker, scorer, tmp_path, 300)
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "batch"  # mid-stream
    child.send_signal(signal.SIGTERM)
    out, _ = child.communicate(timeout=60)
    assert child.returncode == 0
    drained = int(out.strip().splitlines()[-1].split()[1])
    assert 0 < drained < 300
    survey_only = BatchScorer(small_ds.questionnaire, scorer.spec, scorer.predictor, None)
    rest = KafkaScorer(survey_only, cfg, idle_exit_s=8).run()
    assert drained + rest.consumed == 300  # nothing redelivered: the drained batches were committed
    ids = [json.loads(r.value)["session_id"] for r in read_all(broker.bootstrap, cfg.scores_topic, 300)]
    assert len(ids) == len(set(ids)) == 300


def test_lantern_score_scores_twenty_and_dead_letters_the_one_that_is_not_text(small_ds, broker, scorer, tmp_path):
    """The reported outage, as a user met it: kafka-python produces 20 valid completions and one
    whose id is a lone surrogate escape (or holds a NUL) to the broker; `lantern score
    --no-features --max-events 21` exits 0 having scored 20 and dead-lettered 1 with its class
    and field, and the group's committed offsets are the log ends (nothing stalls). One process
    per variant — user id, session id, question id, option id, NUL — run side by side."""
    from kafka.structs import TopicPartition

    from streaming.partitions import log_ends
    from streaming.testing import hostile_text_events

    model_dir = save_model(tmp_path / "m", scorer.predictor.model, scorer.spec, small_ds.questionnaire, {})
    events = sessions_to_events(small_ds.sessions.slice(0, 20))
    runs = []
    for bad, field in hostile_text_events(events[0][1]):
        cfg = topics(broker)
        replay(cfg, events[:10] + [(events[0][0], bad)] + events[10:], progress=False)
        env = {**os.environ, "LANTERN_KAFKA__INPUT_TOPIC": cfg.input_topic,
               "LANTERN_KAFKA__SCORES_TOPIC": cfg.scores_topic, "LANTERN_KAFKA__DLQ_TOPIC": cfg.dlq_topic,
               "LANTERN_KAFKA__GROUP_ID": cfg.group_id, "LANTERN_THREADS": "1"}
        command = [str(Path(sys.executable).with_name("lantern")), "score", "--model",
                   str(model_dir), "--no-features", "--max-events", "21", "--bootstrap", broker.bootstrap]
        runs.append((cfg, bad, field, subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                                                        stderr=subprocess.STDOUT, text=True)))
    for cfg, bad, field, proc in runs:
        output = proc.communicate(timeout=180)[0]
        assert proc.returncode == 0, output[-3000:]
        assert "consumed 21, scored 20, dead-lettered 1" in output, output[-3000:]
        assert len(read_all(broker.bootstrap, cfg.scores_topic, 20)) == 20
        (dead,) = read_all(broker.bootstrap, cfg.dlq_topic, 1)
        headers = dict(dead.headers)
        assert dead.value == bad and headers["lantern.error.class"] == b"bad_text", headers
        assert headers["lantern.error.field"] == field.encode()
        probe = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=cfg.group_id, enable_auto_commit=False)
        parts = [TopicPartition(cfg.input_topic, p) for p in sorted(probe.partitions_for_topic(cfg.input_topic))]
        ends = log_ends(probe, parts)
        assert {tp: probe.committed(tp) for tp in parts} == {tp: end or None for tp, end in ends.items()}
        probe.close()
