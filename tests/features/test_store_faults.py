"""Feature store outages against real stores: the scorer retries, then scores survey-only with
``degraded`` set and no sources claimed — exactly what a scorer without features computes, never
made-up values — and uses the store again as soon as it is back."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import time
from datetime import timedelta

import numpy as np
import psutil
import pytest

from devtools.servers import redis_server
from features.lookup import OnlineLookup
from features.online import materialize_online
from features.store import FeatureStoreConfig, apply, open_store
from model.checkpoint import load_model
from model.inference import InProcessPredictor
from streaming.events import decode_probabilities, sessions_to_events
from streaming.scoring import BatchScorer
from streaming.testing import memory_source
from tests.features.conftest import NOW, recent_ds, sqlite_store  # noqa: F401  (shared fixtures)
from tests.ray_jobs.conftest import model_dirs  # noqa: F401

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def loaded(model_dirs):  # noqa: F811
    return load_model(model_dirs[0][0])


def scorer(loaded, client) -> BatchScorer:
    return BatchScorer(loaded.questionnaire, loaded.features, InProcessPredictor(loaded.model, "v1"), client,
                       lookup_attempts=3, lookup_backoff_s=0.05)


def by_session(result) -> dict:
    return {json.loads(v)["session_id"]: json.loads(v) for _, v in result.scores}


def assert_survey_only(result, loaded, records) -> None:
    """Degraded, no source claimed, and equal to scoring with no feature store at all."""
    assert result.degraded
    reference = by_session(scorer(loaded, None).score(records))
    for sid, out in by_session(result).items():
        assert out["degraded"] and out["external_sources_used"] == []
        np.testing.assert_array_equal(decode_probabilities(out["probabilities_f32"]),
                                      decode_probabilities(reference[sid]["probabilities_f32"]))


def assert_uses_features(result) -> None:
    assert not result.degraded
    assert any(out["external_sources_used"] for out in by_session(result).values())


def test_sqlite_locked_retries_then_survey_only_then_recovers(loaded, sqlite_store, recent_ds):  # noqa: F811
    store, cfg = sqlite_store
    records = memory_source(sessions_to_events(recent_ds.sessions.slice(0, 40)))
    bs = scorer(loaded, OnlineLookup(store))
    assert_uses_features(bs.score(records))
    lock = sqlite3.connect(cfg.repo / ".feast" / "online.db", timeout=0.1)
    lock.execute("BEGIN EXCLUSIVE")  # another writer holds the database
    try:
        t0 = time.perf_counter()
        assert_survey_only(bs.score(records), loaded, records)
        assert time.perf_counter() - t0 >= 0.05 + 0.1  # the two backoffs between three attempts
    finally:
        lock.rollback()
        lock.close()
    assert_uses_features(bs.score(records))


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="no redis-server binary on PATH")
def test_redis_paused_then_stopped_degrades_and_recovers_when_it_returns(loaded, recent_ds, tmp_path):  # noqa: F811
    records = memory_source(sessions_to_events(recent_ds.sessions.slice(0, 40)))
    with redis_server() as address:
        cfg = FeatureStoreConfig(repo=tmp_path / "feast", online="redis", redis=address)
        store = open_store(cfg)
        apply(store, recent_ds, cfg)
        materialize_online(store, cfg, end=NOW + timedelta(minutes=1))
        bs = scorer(loaded, OnlineLookup(store))
        assert_uses_features(bs.score(records))
        server = next(p for p in psutil.process_iter(["cmdline"])
                      if "redis-server" in " ".join(p.info["cmdline"] or [])
                      and address.split(":")[1] in " ".join(p.info["cmdline"]))
        os.kill(server.pid, signal.SIGSTOP)  # unreachable: every read times out
        try:
            assert_survey_only(bs.score(records), loaded, records)
        finally:
            os.kill(server.pid, signal.SIGCONT)
        assert_uses_features(bs.score(records))  # back: its data is still there
        server.kill()
        server.wait(5)
        assert_survey_only(bs.score(records), loaded, records)  # gone: connection refused
