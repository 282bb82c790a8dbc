"""A broker restart mid-stream: the running scorer reconnects and resumes with no manual action.

The embedded broker is memory-only, so a restart is a new, empty broker on the same address:
topics, records and committed offsets are gone. What is recoverable there: every session that
arrives after the restart is scored, by the same scorer process, and nothing it scored before is
scored wrongly. What is not: events that were on the old broker and not yet scored (a real Kafka
with replicated, persistent logs keeps them; see docs/reliability.md)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from contextlib import ExitStack

import pytest

from devtools.broker import embedded_broker
from devtools.servers import free_port
from streaming.events import sessions_to_events
from streaming.kafka_io import KafkaConfig, KafkaScorer, ensure_topics, replay
from tests.streaming.test_kafka_scorer import read_all

pytestmark = pytest.mark.slow


def scored_ids(bootstrap: str, topic: str, want: int) -> set[str]:
    return {json.loads(r.value)["session_id"] for r in read_all(bootstrap, topic, want, timeout_s=60)}


def test_the_scorer_rides_out_a_broker_restart(small_ds, scorer):
    port = free_port()
    tag = uuid.uuid4().hex[:8]
    cfg = KafkaConfig(bootstrap=f"127.0.0.1:{port}", input_topic=f"in-{tag}", scores_topic=f"scores-{tag}",
                      dlq_topic=f"dlq-{tag}", group_id=f"restart-{tag}", max_poll_records=50, flush_timeout_s=5)
    before = sessions_to_events(small_ds.sessions.slice(0, 100))
    after = sessions_to_events(small_ds.sessions.slice(100, 100))
    log: list[str] = []
    runner = KafkaScorer(scorer, cfg, log=log.append)
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.setdefault("stats", runner.run()), daemon=True)
    with ExitStack() as first:
        first.enter_context(embedded_broker(port))
        ensure_topics(cfg)
        thread.start()
        replay(cfg, before, progress=False)
        assert len(scored_ids(cfg.bootstrap, cfg.scores_topic, 100)) == 100
    time.sleep(2)  # the broker is gone; the scorer keeps polling
    with embedded_broker(port):  # the same address, empty
        ensure_topics(cfg)
        t0 = time.monotonic()
        replay(cfg, after, progress=False)
        got = scored_ids(cfg.bootstrap, cfg.scores_topic, 100)
        resumed_s = time.monotonic() - t0
        runner.stop()
        thread.join(60)
    assert not thread.is_alive() and "stats" in outcome, "the scorer died instead of riding the restart out"
    assert got == {json.loads(v)["session_id"] for _, v in after}, f"scored {len(got)} of 100 after the restart"
    print(f"resumed: 100 sessions scored {resumed_s:.1f} s after the restart's first event")
