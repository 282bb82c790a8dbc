"""The whole scoring chain in memory: stream scores equal offline scores, poison pills are
dead-lettered with nothing lost, and a feature-store outage degrades to survey-only, visibly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lantern.errors import ConfigError
from lantern.settings.kafka import DLQ_TOPIC, SCORES_TOPIC
from lantern.settings.scoring import ScoringConfig
from model.data import encode_sessions, to_batch
from model.inference import InProcessPredictor, stored_version
from model.outputs import key_probs
from streaming.events import decode_probabilities, sessions_to_events
from streaming.scoring import BatchScorer
from streaming.testing import (
    FakeFeatures,
    MemoryConsumer,
    MemorySink,
    ThreadScorer,
    hostile_text_events,
    memory_source,
    run_in_memory,
)


def _offline(small_ds, scorer, sessions):
    rows = scorer.features.lookup(sessions.column("user_id").to_pylist())
    data = encode_sessions(small_ds.questionnaire, sessions, scorer.spec,
                           {n: (r.table, r.present) for n, r in rows.items()})
    return scorer.predictor.predict(data.survey.q_idx, data.survey.sel, data.sources).probs


def test_stream_scores_equal_offline_scores(small_ds, scorer):
    sessions = small_ds.sessions.slice(0, 400)
    sink = run_in_memory(scorer, memory_source(sessions_to_events(sessions), partitions=3), MemorySink(), 37)
    outputs = [json.loads(v) for _, v, _ in sink[SCORES_TOPIC]]
    assert sorted(o["session_id"] for o in outputs) == sorted(sessions.column("session_id").to_pylist())
    assert not sink[DLQ_TOPIC]
    offline = dict(zip(sessions.column("session_id").to_pylist(), _offline(small_ds, scorer, sessions)))
    for o in outputs:
        np.testing.assert_allclose(decode_probabilities(o["probabilities_f32"]), offline[o["session_id"]],
                                   atol=1e-5)
        assert o["model_version"] == "v-test" and not o["degraded"]
    assert any(o["external_sources_used"] for o in outputs) and any(o["gate_mean"] for o in outputs)


def test_poison_pills_are_dead_lettered_and_nothing_is_lost(small_ds, scorer):
    events = sessions_to_events(small_ds.sessions.slice(0, 50))
    bad = [(b"k", b"{not json"), (b"k", b'{"schema_version": 7}'), (b"k", b"x" * 70_000), events[3]]
    records = memory_source(events[:10] + bad + events[10:], partitions=2)
    sink = run_in_memory(scorer, records, MemorySink(), batch_size=64)
    dead = sink[DLQ_TOPIC]
    assert len(sink[SCORES_TOPIC]) + len(dead) == len(records)
    kinds = sorted(dict(h)["lantern.error.class"].decode() for _, _, h in dead)
    assert kinds == ["bad_json", "oversized", "unknown_schema_version"]
    assert all(value in {v for _, v in bad} for _, value, _ in dead)  # original bytes, unchanged
    scored = [json.loads(v)["session_id"] for _, v, _ in sink[SCORES_TOPIC]]
    assert len(scored) == 51 and scored.count(json.loads(events[3][1])["session_id"]) == 2  # a retry is scored


def test_strict_input_and_keys_that_are_not_the_user(small_ds, scorer):
    good_key, good = sessions_to_events(small_ds.sessions.slice(0, 1))[0]
    body = json.loads(good)
    cases = {
        "bom": (good_key, "\ufeff".encode() + good),
        "utf16": (good_key, good.decode().encode("utf-16")),
        "latin1": (good_key, json.dumps({**body, "user_id": "ü"}, ensure_ascii=False).encode("latin-1")),
        "nan": (good_key, good.replace(b'"schema_version":1', b'"schema_version":1,"x":NaN')),
        "infinity": (good_key, good.replace(b'"schema_version":1', b'"schema_version":1,"x":-Infinity')),
        "bool_version": (good_key, json.dumps({**body, "schema_version": True}).encode()),
        "float_version": (good_key, json.dumps({**body, "schema_version": 1.0}).encode()),  # JSON's integer 1
        "other_key": (b"somebody-else", good),
        "null_key": (None, good),
    }
    records = memory_source(list(cases.values()))
    result = scorer.score(records)
    classes = {list(cases)[r.offset]: e.kind for r, e in result.dead}
    assert classes == {"bom": "bad_json", "utf16": "bad_json", "latin1": "bad_json", "nan": "bad_json",
                       "infinity": "bad_json", "bool_version": "wrong_types", "other_key": "key_mismatch"}
    assert len(result.scores) == 2  # 1.0 and the null key are accepted (documented)


def test_feature_outage_scores_survey_only_and_says_so(small_ds, scorer):
    sessions = small_ds.sessions.slice(0, 40)
    down = FakeFeatures(small_ds.external)
    down.down = True
    sink = run_in_memory(BatchScorer(scorer.q, scorer.spec, scorer.predictor, down),
                         memory_source(sessions_to_events(sessions)), MemorySink())
    outputs = {json.loads(v)["session_id"]: json.loads(v) for _, v, _ in sink[SCORES_TOPIC]}
    assert len(outputs) == 40 and all(o["degraded"] and o["external_sources_used"] == [] for o in outputs.values())
    survey_only = encode_sessions(small_ds.questionnaire, sessions, scorer.spec, {})
    model = scorer.predictor.model
    with torch.no_grad():
        batch = to_batch(survey_only.survey.q_idx, survey_only.survey.sel, survey_only.sources)
        expected = key_probs(model(batch, survey_only_path=True), model.cfg).numpy()
    for sid, probs in zip(sessions.column("session_id").to_pylist(), expected):
        np.testing.assert_allclose(decode_probabilities(outputs[sid]["probabilities_f32"]), probs, atol=1e-5)


def test_a_transient_feature_outage_is_retried_not_degraded(small_ds, scorer):
    flaky = FakeFeatures(small_ds.external)
    flaky.fail_next = 2  # the third attempt succeeds
    result = BatchScorer(scorer.q, scorer.spec, scorer.predictor, flaky, lookup_backoff_s=0.01).score(
        memory_source(sessions_to_events(small_ds.sessions.slice(0, 30))))
    assert flaky.calls == 3 and not result.degraded
    assert any(json.loads(v)["external_sources_used"] for _, v in result.scores)


def test_scoring_recovers_when_the_store_returns(small_ds, scorer):
    store = FakeFeatures(small_ds.external)
    store.down = True
    bs = BatchScorer(scorer.q, scorer.spec, scorer.predictor, store, lookup_backoff_s=0.01)
    records = memory_source(sessions_to_events(small_ds.sessions.slice(0, 60)))
    assert bs.score(records[:30]).degraded and store.calls == 3  # retried, then survey-only
    store.down = False
    assert not bs.score(records[30:]).degraded


def test_a_misconfigured_store_stops_the_scorer_with_its_message(small_ds, scorer):
    """Only an unreachable store degrades to survey-only; a configuration error is not ridden out
    (every session would be scored survey-only without anyone noticing)."""
    wrong = FakeFeatures(small_ds.external)
    wrong.misconfigured = True
    bs = BatchScorer(scorer.q, scorer.spec, scorer.predictor, wrong, lookup_backoff_s=0.01)
    with pytest.raises(ConfigError, match="no feature view for source 'demographics'"):
        bs.score(memory_source(sessions_to_events(small_ds.sessions.slice(0, 10))))
    assert wrong.calls == 1  # not retried either


def test_predicted_keys_follow_the_question_kind_and_the_abstain_setting(small_ds, trained):
    from model.metrics import Layout

    q, (prep, model) = small_ds.questionnaire, trained
    records = memory_source(sessions_to_events(small_ds.sessions.slice(0, 40)), partitions=1)
    plain = BatchScorer(q, prep.features, InProcessPredictor(model, "v1"), None, ScoringConfig(threshold=0.3))
    wary = BatchScorer(q, prep.features, InProcessPredictor(model, "v1"), None,
                       ScoringConfig(threshold=0.3, abstain_below=0.9))
    kq, single = np.asarray(q.key_question), Layout.of(q).single
    for (_, a), (_, b) in zip(plain.score(records).scores, wary.score(records).scores):
        a, b = json.loads(a), json.loads(b)
        probs = decode_probabilities(a["probabilities_f32"])
        chosen = np.isin(np.array(q.response_keys), a["predicted_keys"])
        per_single_q = np.bincount(kq[chosen & single], minlength=len(q.questions))
        assert all(per_single_q[i] == 1 for i, x in enumerate(q.questions) if x.kind == "single")
        assert (chosen[~single] == (probs[~single] >= 0.3)).all() and a["threshold"] == 0.3
        top = {i: probs[kq == i].max() for i, x in enumerate(q.questions) if x.kind == "single"}
        kept = [k for k in b["predicted_keys"] if single[q.response_keys.index(k)]]
        assert len(kept) == sum(p >= 0.9 for p in top.values()) and b["abstain_below"] == 0.9


class _LoggingSink(MemorySink):
    """A MemorySink that logs each flush next to the consumer's commits (one shared log)."""

    def __init__(self, log: list, **kw):
        super().__init__(**kw)
        self.log = log

    def flush(self) -> None:
        n = len(self.pending)
        super().flush()  # a refused flush raises: not logged
        self.log.append(("flush", n))


class _LoggingConsumer(MemoryConsumer):
    def __init__(self, records, log: list, **kw):
        super().__init__(records, **kw)
        self.log = log

    def commit(self, offsets: dict) -> None:
        super().commit(offsets)
        self.log.append(("commit", sum(m.offset for m in offsets.values())))


def _ids(sink) -> list[str]:
    return [json.loads(v)["session_id"] for _, v, _ in sink[SCORES_TOPIC]]


@pytest.mark.parametrize("pipelined", [False, True], ids=["in-process", "pipelined"])
def test_the_loop_commits_only_after_the_sink_flushed_and_rides_out_refused_flushes(small_ds, scorer, pipelined):
    """The whole loop in memory: every commit follows its batch's flush; two refused flushes make
    the loop seek back and score those batches again, so every session is scored exactly once and
    every offset is committed."""
    sessions = small_ds.sessions.slice(0, 300)
    records = memory_source(sessions_to_events(sessions), partitions=3)
    log: list = []
    sink = _LoggingSink(log, refuse_flushes=2)
    consumer = _LoggingConsumer(records, log, max_poll_records=40)
    remote = ThreadScorer(scorer) if pipelined else scorer
    run_in_memory(remote, records, sink, batch_size=40, consumer=consumer)
    assert sorted(_ids(sink)) == sorted(sessions.column("session_id").to_pylist())  # once each
    assert consumer.committed == {tp: rs[-1].offset + 1 for tp, rs in consumer.parts.items()}
    assert sink.refuse_flushes == 0  # both refusals happened
    # each accepted flush is followed by exactly its batch's commit; a refused one by none
    assert [kind for kind, _ in log] == ["flush", "commit"] * consumer.commits
    if pipelined:
        assert remote.overlapped > 0  # two batches in flight at times
        remote.close()


def test_a_rebalance_commits_the_batches_in_flight_before_the_partitions_move(small_ds, scorer):
    sessions = small_ds.sessions.slice(0, 240)
    records = memory_source(sessions_to_events(sessions), partitions=2)
    consumer = MemoryConsumer(records, max_poll_records=40, rebalance_at_poll=3)
    remote = ThreadScorer(scorer)
    sink = run_in_memory(remote, records, MemorySink(), batch_size=40, consumer=consumer)
    remote.close()
    ids = _ids(sink)
    assert len(ids) == len(set(ids)) == 240  # the in-flight batch was committed on revoke: no repeats
    assert consumer.committed == {tp: rs[-1].offset + 1 for tp, rs in consumer.parts.items()}
    assert consumer.closed


def test_stored_encodings_give_the_same_scores_and_spare_their_users_the_lookup(small_ds, scorer, trained):
    """Users with an encoding materialized for the served version are scored from it (no source
    lookup); the rest, and users whose stored encoding is another version's, are looked up and
    encoded per event. Every score, gate and source list equals the all-lookup scorer's."""
    prep, model = trained
    sessions = small_ds.sessions.slice(0, 300)
    user_of = sessions.column("user_id").to_pylist()
    users = sorted(set(user_of))
    features = FakeFeatures(small_ds.external)
    stored = BatchScorer(small_ds.questionnaire, prep.features, InProcessPredictor(model, "v-test"), features)
    assert stored.stored_version.startswith("v-test#")  # the version and the weights' digest
    features.store_encodings(model, prep.features, stored.stored_version, users[: len(users) * 2 // 3])
    features.store_encodings(model, prep.features, stored_version(model, "v-old"), users[-5:])  # refused
    valid = set(users[: len(users) * 2 // 3]) - set(users[-5:])
    features.looked_up = 0
    events = sessions_to_events(sessions)
    got = run_in_memory(stored, memory_source(events, partitions=3), MemorySink(), 37)[SCORES_TOPIC]
    want = run_in_memory(scorer, memory_source(events, partitions=3), MemorySink(), 37)[SCORES_TOPIC]
    assert features.looked_up == sum(u not in valid for u in user_of) < len(user_of)
    assert features.refused_encodings > 0
    want = {o["session_id"]: o for o in (json.loads(v) for _, v, _ in want)}
    for o in (json.loads(v) for _, v, _ in got):
        w = want[o["session_id"]]
        np.testing.assert_allclose(decode_probabilities(o["probabilities_f32"]),
                                   decode_probabilities(w["probabilities_f32"]), atol=1e-5)
        assert o["external_sources_used"] == w["external_sources_used"]
        assert (o["gate_mean"] is None) == (w["gate_mean"] is None)
        assert o["gate_mean"] is None or abs(o["gate_mean"] - w["gate_mean"]) <= 1e-5


def test_one_malformed_event_among_twenty_is_dead_lettered_and_the_rest_scored(small_ds, scorer):
    """The reported outage, in memory, for every hostile text variant: 20 valid events and one that
    is legal JSON but not legal text → 20 scored, 1 dead-lettered as ``bad_text`` naming its field,
    every partition committed to its end."""
    events = sessions_to_events(small_ds.sessions.slice(0, 20))
    for bad, field in hostile_text_events(events[0][1]):
        records = memory_source(events[:7] + [(events[0][0], bad)] + events[7:], partitions=2)
        consumer = MemoryConsumer(records, 64)
        sink = run_in_memory(scorer, records, MemorySink(), consumer=consumer)
        assert len(sink[SCORES_TOPIC]) == 20
        (_, value, headers), = sink[DLQ_TOPIC]
        headers = dict(headers)
        assert value == bad and headers["lantern.error.class"] == b"bad_text"
        assert headers["lantern.error.field"] == field.encode()
        assert consumer.committed == {tp: rs[-1].offset + 1 for tp, rs in consumer.parts.items()}


class _PoisonedFeatures(FakeFeatures):
    """A feature client whose shaping raises for one user (a corrupt stored row, a bug)."""

    def __init__(self, external, poisoned: str):
        super().__init__(external)
        self.poisoned = poisoned

    def model_inputs(self, user_ids, spec):
        if self.poisoned in user_ids:
            raise ValueError(f"cannot shape the stored row of {self.poisoned}")
        return super().model_inputs(user_ids, spec)


def test_an_unexpected_exception_about_one_event_dead_letters_it_and_scores_the_rest(small_ds, scorer, monkeypatch):
    """The bulkhead: a bug while parsing, shaping or formatting one event sends that event to the
    DLQ as ``internal`` (the exception's type and message in its headers, counted in the metrics)
    and the rest of its batch is scored equal to offline, every offset committed."""
    import streaming.scoring as scoring
    from prometheus_client import CollectorRegistry

    from streaming.metrics import Metrics

    sessions = small_ds.sessions.slice(0, 90)
    events = sessions_to_events(sessions)
    sids = sessions.column("session_id").to_pylist()
    parse_bad, shape_bad, format_bad = events[5][1], sessions.column("user_id")[40].as_py(), sids[70]
    real_parse, real_format = scoring.parse_event, scoring.score_records

    def parse(raw, q, **kw):
        if raw == parse_bad:
            raise RuntimeError("parser bug")
        return real_parse(raw, q, **kw)

    def format_(events, *args, **kw):
        if any(e.session_id == format_bad for e in events):
            raise TypeError("formatter bug")
        return real_format(events, *args, **kw)

    monkeypatch.setattr(scoring, "parse_event", parse)
    monkeypatch.setattr(scoring, "score_records", format_)
    registry = CollectorRegistry()
    import sys; print("DBG scoring", id(registry), file=sys.stderr)
    metrics = Metrics.prometheus(registry)
    bs = BatchScorer(scorer.q, scorer.spec, scorer.predictor, _PoisonedFeatures(small_ds.external, shape_bad),
                     metrics=metrics)
    records = memory_source(events, partitions=3)
    consumer = MemoryConsumer(records, 32)
    sink = run_in_memory(bs, records, MemorySink(), consumer=consumer, metrics=metrics)
    dead = {json.loads(v)["session_id"]: dict(h) for _, v, h in sink[DLQ_TOPIC]}
    shape_sids = [s for s, u in zip(sids, sessions.column("user_id").to_pylist()) if u == shape_bad]
    assert set(dead) == {sids[5], sids[70], *shape_sids}
    assert all(h["lantern.error.class"] == b"internal" for h in dead.values())
    assert (dead[sids[5]]["lantern.error.exception"], dead[sids[70]]["lantern.error.exception"]) == (
        b"RuntimeError", b"TypeError")
    assert dead[sids[5]]["lantern.error.message"] == b"parse: RuntimeError: parser bug"
    assert dead[shape_sids[0]]["lantern.error.message"].startswith(b"features: ValueError: cannot shape")
    scored = {json.loads(v)["session_id"]: json.loads(v) for _, v, _ in sink[SCORES_TOPIC]}
    assert len(scored) == 90 - len(dead) and not set(scored) & set(dead)
    offline = dict(zip(sids, _offline(small_ds, scorer, sessions)))
    for sid, o in scored.items():
        np.testing.assert_allclose(decode_probabilities(o["probabilities_f32"]), offline[sid], atol=1e-5)
    assert consumer.committed == {tp: rs[-1].offset + 1 for tp, rs in consumer.parts.items()}
    assert registry.get_sample_value("lantern_events_dead_lettered_total", {"error_class": "internal"}) == len(dead)


def test_a_failing_forward_pass_is_not_blamed_on_an_event(small_ds, scorer):
    """What is not about one event keeps its behaviour: the model's failure stops the loop with
    nothing dead-lettered and nothing committed (the batch is delivered again after a restart)."""
    class Broken:
        def predict(self, *args):
            raise RuntimeError("CUDA error: device-side assert triggered")

    records = memory_source(sessions_to_events(small_ds.sessions.slice(0, 20)))
    consumer, sink = MemoryConsumer(records, 64), MemorySink()
    with pytest.raises(RuntimeError, match="device-side assert"):
        run_in_memory(BatchScorer(scorer.q, scorer.spec, Broken(), None), records, sink, consumer=consumer)
    assert consumer.committed == {} and not sink.topics
