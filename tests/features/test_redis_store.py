"""Feast on a real redis-server: lookup equals the SDK, masking, push + read back, outage → typed error."""

from __future__ import annotations

import shutil
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from devtools.bench_features import sdk_lookup, sdk_model_inputs
from devtools.servers import redis_server
from features.lookup import OnlineLookup
from features.online import materialize_online
from features.store import (
    FeatureStoreConfig,
    apply,
    latest_scores,
    open_store,
    push_scores,
    registered_layouts,
)
from lantern.errors import FeatureStoreUnavailable
from tests.features.conftest import NOW, assert_same_inputs, model_specs

if shutil.which("redis-server") is None:  # make test installs it; say so loudly when it is missing
    pytest.skip("no redis-server binary on PATH (make test installs Debian's redis-server)", allow_module_level=True)


@pytest.fixture(scope="module")
def redis_store(recent_ds, tmp_path_factory):
    with redis_server() as address:
        cfg = FeatureStoreConfig(repo=tmp_path_factory.mktemp("feast_redis"), online="redis", redis=address)
        store = open_store(cfg)
        apply(store, recent_ds, cfg)
        materialize_online(store, cfg, end=NOW + timedelta(minutes=1))
        yield store, recent_ds


def test_redis_lookup_equals_the_sdk_and_masks_unknown_users(redis_store):
    store, ds = redis_store
    users = sorted(set(ds.sessions.column("user_id").to_pylist()))[:150] + ["nobody"]
    ours = OnlineLookup(store).lookup(users)
    sdk = sdk_lookup(store, users, registered_layouts(store))
    for name in ours:
        np.testing.assert_array_equal(ours[name].present, sdk[name].present)
        assert repr(ours[name].table.to_pylist()) == repr(sdk[name].table.to_pylist()), name
        assert not ours[name].present[-1]
        have = set(ds.external[name].column("user_id").to_pylist())
        assert ours[name].present[:-1].sum() <= len(have & set(users))
        assert ours[name].present[:-1].any()


def test_redis_model_inputs_equal_the_sdk_rows_shaped(redis_store):
    store, ds = redis_store
    users = sorted(set(ds.sessions.column("user_id").to_pylist()))[:150] + ["nobody"]
    for spec in model_specs(ds):
        assert_same_inputs(OnlineLookup(store).model_inputs(users, spec),
                           sdk_model_inputs(store, users, registered_layouts(store), spec))


def test_redis_push_and_read_back(redis_store):
    store, _ = redis_store
    push_scores(store, pd.DataFrame({
        "user_id": ["u000003"], "session_id": ["s9"], "model_version": ["v7"], "probabilities": [[0.25, 0.75]],
        "predicted_keys": [["q01=o2"]], "completed_at": [NOW], "event_timestamp": [NOW]}))
    got = latest_scores(store, ["u000003"])
    assert got["session_id"] == ["s9"] and got["model_version"] == ["v7"]


def test_redis_down_raises_the_typed_error(recent_ds, tmp_path):
    with redis_server() as address:
        cfg = FeatureStoreConfig(repo=tmp_path, online="redis", redis=address)
        store = open_store(cfg)
        apply(store, recent_ds, cfg)
        lookup = OnlineLookup(store)
        assert lookup.lookup(["u000001"])  # reachable
    with pytest.raises(FeatureStoreUnavailable, match="Redis") as err:
        lookup.lookup(["u000001"])
    assert err.value.__cause__ is not None
