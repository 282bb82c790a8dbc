"""Materialized external encodings in real online stores (SQLite and Redis): `lantern features encode`
writes every user's encoding for one model version; the scorer serving that version reads them
(sources past their TTL dropped, as the lookup drops them) and scores exactly as it does from
the looked-up rows; another version's encodings are refused and those users are looked up."""

from __future__ import annotations

import json
import shutil
from contextlib import ExitStack
from datetime import timedelta

import numpy as np
import pytest

from devtools.servers import redis_server
from features.lookup import OnlineLookup
from features.online import encode_online, materialize_online, source_users
from features.store import FeatureStoreConfig, apply, open_store
from model.checkpoint import load_model
from model.inference import InProcessPredictor, stored_version
from streaming.events import decode_probabilities, sessions_to_events
from streaming.scoring import BatchScorer
from streaming.testing import memory_source
from tests.features.conftest import NOW, recent_ds  # noqa: F401  (shared fixtures)
from tests.ray_jobs.conftest import model_dirs  # noqa: F401

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def encoded_store(request, recent_ds, model_dirs, tmp_path_factory):  # noqa: F811
    with ExitStack() as stack:
        options = {}
        if request.param == "redis":
            if shutil.which("redis-server") is None:  # make test installs it
                pytest.skip("no redis-server binary on PATH (make test installs Debian's redis-server)")
            options = {"online": "redis", "redis": stack.enter_context(redis_server())}
        cfg = FeatureStoreConfig(repo=tmp_path_factory.mktemp(f"feast_encodings_{request.param}"), **options)
        store = open_store(cfg)
        apply(store, recent_ds, cfg)
        materialize_online(store, cfg, end=NOW + timedelta(minutes=1))
        loaded = load_model(model_dirs[0][0])
        users = source_users(store, cfg)
        assert encode_online(store, loaded, "v1", users) == len(users)
        yield store, loaded, users, cfg


def test_stored_encodings_keep_the_lookups_presence_and_ttl(encoded_store):
    store, loaded, users, _ = encoded_store
    lookup = OnlineLookup(store)
    stored = lookup.stored_encodings(users + ["nobody"], loaded.features, stored_version(loaded.model, "v1"))
    assert stored[-1] is None and all(e is not None for e in stored[:-1])
    inputs = lookup.model_inputs(users, loaded.features)
    for j, s in enumerate(loaded.features.sources):
        np.testing.assert_array_equal([e.present[j] for e in stored[:-1]], inputs[s.name].present, err_msg=s.name)
    expired = ~inputs["demographics"].present
    assert expired.any() and (~expired).any()  # the fixture's 200-day-old rows: past the 90-day TTL


def test_the_scorer_reads_them_and_scores_as_from_the_rows(encoded_store, recent_ds):  # noqa: F811
    store, loaded, users, _ = encoded_store
    records = memory_source(sessions_to_events(recent_ds.sessions.slice(0, 200)))

    looked_up = []

    def scores(stored_version):
        lookup = OnlineLookup(store)
        rows = lookup.model_inputs
        lookup.model_inputs = lambda users, spec: looked_up.append(len(users)) or rows(users, spec)
        scorer = BatchScorer(loaded.questionnaire, loaded.features, InProcessPredictor(loaded.model, "v1"),
                             lookup, stored_version=stored_version)
        return {o["session_id"]: o for o in (json.loads(v) for _, v in scorer.score(records).scores)}

    from_store, from_rows = scores(stored_version(loaded.model, "v1")), scores(None)
    assert len(from_store) == 200
    without = sum(u not in set(users) for u in recent_ds.sessions.slice(0, 200).column("user_id").to_pylist())
    assert sum(looked_up[:-1]) == without and looked_up[-1] == 200  # only users with no stored encoding
    for sid, o in from_store.items():
        np.testing.assert_allclose(decode_probabilities(o["probabilities_f32"]),
                                   decode_probabilities(from_rows[sid]["probabilities_f32"]), atol=1e-5)
        assert o["external_sources_used"] == from_rows[sid]["external_sources_used"]


def test_another_versions_encodings_are_refused(encoded_store, model_dirs):  # noqa: F811
    store, loaded, users, _ = encoded_store
    other = load_model(model_dirs[1][0])  # other weights: refused even under the same version name
    lookup = OnlineLookup(store)
    for tag in (stored_version(loaded.model, "v2"), stored_version(other.model, "v1")):
        assert lookup.stored_encodings(users[:50], loaded.features, tag) == [None] * 50
    assert lookup.refused_encodings == 100


def test_the_cli_stores_them_for_the_model_it_is_given(encoded_store, model_dirs):  # noqa: F811
    from typer.testing import CliRunner

    from app.cli import app

    store, _, users, cfg = encoded_store
    other = model_dirs[1][0]
    online = ["--online", "redis"] if cfg.online == "redis" else []
    env = {"LANTERN_FEATURES__REDIS": cfg.redis}
    result = CliRunner().invoke(app, ["features", "encode", "--model", str(other), "--repo", str(cfg.repo), *online],
                                env=env)
    assert result.exit_code == 0, result.output
    assert f"stored {len(users)} users' external encodings by model {other.name}" in " ".join(result.output.split())
    loaded = load_model(other)
    stored = OnlineLookup(store).stored_encodings(users[:20], loaded.features, stored_version(loaded.model, other.name))
    assert all(e is not None for e in stored)
