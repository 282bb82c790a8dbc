"""Ray Serve on local Ray (CPU): the deployment scores like the in-process model, HTTP routes,
hot swap under concurrent load with zero failed requests, and the app follows promote/rollback."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest
from ray import serve

from devtools.servers import free_port
from features.lookup import OnlineLookup
from lantern.settings.serve import ServeConfig
from model.inference import InProcessPredictor
from model.registry import Registry
from streaming.events import decode_probabilities, sessions_to_events
from streaming.scoring import BatchScorer, Record
from streaming.testing import hostile_text_events


@pytest.fixture(scope="module")
def served(ray_cluster, model_dirs, sqlite_store, tmp_path_factory):
    from ray_jobs.serve import deploy, feature_store_options

    _, features_cfg = sqlite_store
    reg = Registry(tmp_path_factory.mktemp("registry"))
    for path, f1 in model_dirs:
        reg.register(path, {"val_f1": f1})
    reg.promote("v0001")
    cfg = ServeConfig(registry=reg.root, http_port=free_port(), max_batch_size=4, max_ongoing_requests=16,
                      min_replicas=1, max_replicas=1)
    features = feature_store_options(features_cfg)
    handle = deploy(cfg, features=features)
    yield handle, reg, cfg, features
    serve.shutdown()  # frees the replica's CPU for the other Ray tests


def _records(ds, start, n):
    return [Record("in", 0, start + i, k, v) for i, (k, v) in enumerate(sessions_to_events(ds.sessions.slice(start, n)))]


def _scores(batch):
    return {json.loads(v)["session_id"]: json.loads(v) for _, v in batch.scores}


def test_the_serve_path_scores_a_batch_like_the_in_process_model(served, recent_ds, sqlite_store):
    handle, reg, *_ = served
    records = _records(recent_ds, 0, 200)
    remote = handle.score.remote(records).result()
    loaded = reg.load("v0001")
    local = BatchScorer(loaded.questionnaire, loaded.features, InProcessPredictor(loaded.model, "v0001"),
                        OnlineLookup(sqlite_store[0])).score(records)
    ours, theirs = _scores(remote), _scores(local)
    assert len(ours) == 200 and ours.keys() == theirs.keys()
    for sid, o in ours.items():
        assert o["model_version"] == "v0001" and o["external_sources_used"] == theirs[sid]["external_sources_used"]
        np.testing.assert_allclose(decode_probabilities(o["probabilities_f32"]),
                                   decode_probabilities(theirs[sid]["probabilities_f32"]), atol=1e-5)
    assert any(o["external_sources_used"] for o in ours.values())


def _http(cfg, path, body=None, content_type="application/json"):
    req = urllib.request.Request(f"http://127.0.0.1:{cfg.http_port}{path}", data=body,
                                 method="POST" if body is not None else "GET",
                                 headers={"Content-Type": content_type} if body is not None else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        assert err.headers["Content-Type"] == "application/problem+json"  # RFC 9457
        body = json.loads(err.read())
        assert body["status"] == err.code and body["type"] == f"urn:lantern:problem:{body['class']}"
        return err.code, body


def test_http_score_health_and_bad_input(served, recent_ds):
    _, _, cfg, *_ = served
    _, event = sessions_to_events(recent_ds.sessions.slice(5, 1))[0]
    status, body = _http(cfg, "/score", event)
    assert status == 200 and body["session_id"] == recent_ds.sessions.column("session_id")[5].as_py()
    assert body["model_version"] == "v0001" and len(decode_probabilities(body["probabilities_f32"])) > 0
    status, body = _http(cfg, "/score", b'{"schema_version": 1, "session_id": 3}')
    assert status == 400 and body["class"] == "wrong_types" and body["detail"] and body["field"] == "event_id"
    assert _http(cfg, "/healthz") == (200, {"status": "ok", "model_version": "v0001", "device": "cpu"})


def _with(raw: bytes, **fields) -> bytes:
    return json.dumps({**json.loads(raw), **fields}).encode()


def test_hostile_http_input_gets_4xx_with_a_reason_and_the_replica_stays_healthy(served, recent_ds):
    _, _, cfg, *_ = served
    _, event = sessions_to_events(recent_ds.sessions.slice(6, 1))[0]
    assert _http(cfg, "/score", b"x" * 2_000_000)[0] == 413  # refused on its declared length
    status, body = _http(cfg, "/score", event, content_type="text/plain")
    assert status == 415 and "application/json" in body["detail"]
    status, body = _http(cfg, "/score", b"[" * 50_000)  # deep nesting within the size limit
    assert status == 400 and body["class"] == "bad_json"
    status, body = _http(cfg, "/score", b"\xff\xfe{}")
    assert status == 400 and body["class"] == "bad_json"
    for raw, field in hostile_text_events(event):  # legal JSON, not legal text: never a 500
        status, body = _http(cfg, "/score", raw)
        assert (status, body["class"], body["field"]) == (400, "bad_text", field), body
    status, body = _http(cfg, "/score", _with(event, completed_at="9999-12-31T23:59:59Z"))
    assert (status, body["class"], body["field"]) == (400, "future_time", "completed_at")
    assert _http(cfg, "/score", event)[0] == 200  # and it still scores
    assert _http(cfg, "/healthz")[0] == 200


def test_a_replica_killed_mid_batch_is_replaced_and_the_retried_batch_scores_once(served, recent_ds):
    import os
    import signal

    from ray_jobs.serve import ServeScorer

    handle, *_ = served
    records = _records(recent_ds, 100, 128)
    pid = handle.info.remote().result()["pid"]
    scorer = ServeScorer(handle, attempts=8, backoff_s=0.5)
    result, errors = [], []
    call = threading.Thread(target=lambda: _guard(lambda: result.append(scorer.score(records)), errors))
    call.start()
    threading.Event().wait(0.05)  # the micro-batch is in flight
    os.kill(pid, signal.SIGKILL)
    call.join(120)
    assert errors == [] and len(result) == 1  # retried with backoff until a replacement answered
    assert len(_scores(result[0])) == 128
    assert handle.info.remote().result()["pid"] != pid  # Serve replaced the replica


def _guard(fn, errors: list) -> None:
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 — the test asserts there is none
        errors.append(repr(exc))


def test_hot_swap_under_concurrent_load_fails_no_request(served, recent_ds):
    from ray_jobs.serve import deploy

    handle, reg, cfg, features = served
    records = _records(recent_ds, 0, 64)
    seen, failures, stop = [], [], threading.Event()

    def client():
        while not stop.is_set():
            try:
                seen.append({o["model_version"] for o in _scores(handle.score.remote(records).result()).values()})
            except Exception as exc:  # noqa: BLE001 — any failure is what the test counts
                failures.append(repr(exc))

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        while len(seen) < 8:
            threading.Event().wait(0.05)
        assert reg.promote("v0002", min_gain=-1.0).accepted  # promotion → user_config → reconfigure
        deploy(cfg, features=features)
        before = len(seen)
        while len(seen) < before + 8:
            threading.Event().wait(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failures == []
    assert {"v0001"} in seen and seen[-1] == {"v0002"}
    assert all(len(v) == 1 for v in seen)  # one micro-batch, one version

    assert reg.rollback().accepted and reg.champion() == "v0001"
    deploy(cfg, features=features)  # the app follows the rollback
    assert {o["model_version"] for o in _scores(handle.score.remote(records).result()).values()} == {"v0001"}


def test_the_kafka_chain_through_serve_dead_letters_and_loses_nothing(served, recent_ds):
    from lantern.settings.kafka import DLQ_TOPIC, SCORES_TOPIC
    from ray_jobs.serve import ServeScorer
    from streaming.testing import MemorySink, memory_source, run_in_memory

    handle = served[0]
    events = sessions_to_events(recent_ds.sessions.slice(0, 120))
    records = memory_source(events[:60] + [(b"k", b"{not json")] + events[60:], partitions=2)
    sink = run_in_memory(ServeScorer(handle), records, MemorySink(), batch_size=50)
    assert len(sink[SCORES_TOPIC]) == 120 and len(sink[DLQ_TOPIC]) == 1
