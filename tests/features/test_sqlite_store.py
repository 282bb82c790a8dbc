"""Feast on SQLite: lookup equals the SDK, unknown/missing/expired handling, point-in-time
training sets without leakage, score push + read back, unreachable store → typed error."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from devtools.bench_features import sdk_lookup, sdk_model_inputs
from features.keys import vector_query as _vector_query
from features.lookup import OnlineLookup
from features.store import (
    latest_scores,
    push_scores,
    registered_layouts,
    split_training_set,
    training_set,
)
from lantern.errors import ConfigError, FeatureStoreUnavailable
from tests.features.conftest import NOW, assert_same_inputs, model_specs


def _users(ds, n=120):
    users = sorted(set(ds.sessions.column("user_id").to_pylist()))[:n]
    return users + ["nobody-1", "nobody-2"]


@pytest.mark.parametrize("use_vector", [True, False], ids=["precomputed-vector", "per-source-views"])
def test_lookup_returns_the_same_values_as_the_sdk(sqlite_store, recent_ds, use_vector):
    store, _ = sqlite_store
    users = _users(recent_ds)
    ours = OnlineLookup(store, use_vector=use_vector).lookup(users)
    sdk = sdk_lookup(store, users, registered_layouts(store))
    assert set(ours) == set(recent_ds.external)
    for name in ours:
        np.testing.assert_array_equal(ours[name].present, sdk[name].present)
        assert ours[name].table.equals(sdk[name].table) or (
            repr(ours[name].table.to_pylist()) == repr(sdk[name].table.to_pylist())), name


@pytest.mark.parametrize("use_vector", [True, False], ids=["precomputed-vector", "per-source-views"])
def test_model_inputs_equal_the_sdk_rows_shaped_by_the_model_spec(sqlite_store, recent_ds, use_vector):
    store, _ = sqlite_store
    users = _users(recent_ds)
    users = users + users[:3]  # repeats come back at every position
    lookup = OnlineLookup(store, use_vector=use_vector)
    for spec in model_specs(recent_ds):
        ours = lookup.model_inputs(users, spec)
        assert_same_inputs(ours, sdk_model_inputs(store, users, registered_layouts(store), spec))
        assert not ours["demographics"].present[-5:-3].any() and ours["transactions"].seq_mask.any()


def test_materialize_covers_the_vectors_with_an_index_sqlite_reads_alone(sqlite_store):
    store, _ = sqlite_store
    lookup = OnlineLookup(store)
    reader = lookup.reader
    plan = reader._sqlite().execute("EXPLAIN QUERY PLAN " + _vector_query(reader.vector_table, 2), [b"a", b"b"])
    assert any("COVERING INDEX" in row[-1] for row in plan.fetchall())


def test_vectors_of_another_format_raise_a_config_error_that_says_what_to_run(sqlite_store, monkeypatch):
    from feast.protos.feast.types.Value_pb2 import Value

    lookup = OnlineLookup(sqlite_store[0])
    stale = Value(bytes_val=b"\x01" + bytes(64)).SerializeToString()  # format 1: before the value hashes
    monkeypatch.setattr(lookup.reader, "read_vectors", lambda keys: [stale] * len(keys))
    with pytest.raises(ConfigError, match="lantern features materialize"):
        lookup.lookup(["u000001"])


@pytest.mark.parametrize("use_vector", [True, False], ids=["precomputed-vector", "per-source-views"])
def test_a_user_twice_in_one_batch_gets_the_same_row_twice(sqlite_store, recent_ds, use_vector):
    store, _ = sqlite_store
    users = _users(recent_ds, 5)[:5]
    batch = [users[0], users[1], users[0], "nobody-1", users[1]]
    rows = OnlineLookup(store, use_vector=use_vector).lookup(batch)
    single = OnlineLookup(store, use_vector=use_vector).lookup(users[:2])
    for name in rows:
        got = rows[name].table.to_pylist()
        assert repr(got[0]) == repr(got[2]) == repr(single[name].table.to_pylist()[0])
        assert repr(got[1]) == repr(got[4]) == repr(single[name].table.to_pylist()[1])
        assert rows[name].present.tolist() == [single[name].present[0], single[name].present[1],
                                               single[name].present[0], False, single[name].present[1]]


def test_lookup_values_equal_the_source_rows(sqlite_store, recent_ds):
    store, _ = sqlite_store
    users = _users(recent_ds, 60)
    rows = OnlineLookup(store).lookup(users)["transactions"]
    source = recent_ds.external["transactions"].to_pandas().set_index("user_id")
    for i, user in enumerate(users):
        if user in source.index:
            assert rows.present[i]
            assert rows.table.column("category_ids")[i].as_py() == list(source.loc[user, "category_ids"])
            np.testing.assert_allclose(rows.table.column("amounts")[i].as_py(), source.loc[user, "amounts"], rtol=1e-6)
        else:
            assert not rows.present[i] and rows.table.column("category_ids")[i].as_py() == []


def test_unknown_users_and_missing_sources_are_masked_not_zeros(sqlite_store, recent_ds):
    store, _ = sqlite_store
    users = _users(recent_ds)
    result = OnlineLookup(store).lookup(users)
    for name, rows in result.items():
        assert not rows.present[-2:].any()  # the two unknown users
        have = set(recent_ds.external[name].column("user_id").to_pylist())
        expected = np.array([u in have for u in users])
        if name == "demographics":  # rows older than the TTL were never materialised
            stale = set(recent_ds.external[name].filter(pa.compute.greater(
                pa.compute.subtract(pa.scalar(NOW), recent_ds.external[name].column("event_timestamp")),
                pa.scalar(timedelta(days=90)))).column("user_id").to_pylist())
            expected &= np.array([u not in stale for u in users])
        np.testing.assert_array_equal(rows.present, expected)
        absent = ~rows.present
        for col in rows.table.column_names:
            values = rows.table.column(col).to_pylist()
            assert all(values[i] in (None, []) for i in np.flatnonzero(absent)), col


def test_rows_older_than_the_ttl_are_masked(sqlite_store, recent_ds):
    store, _ = sqlite_store
    users = _users(recent_ds)
    later = OnlineLookup(store, clock=lambda: (NOW + timedelta(days=80)).timestamp()).lookup(users)
    table = recent_ds.external["engagement"].to_pandas().set_index("user_id")
    for i, user in enumerate(users):
        if user in table.index:
            age_then = (NOW + timedelta(days=80) - table.loc[user, "event_timestamp"]).total_seconds() / 86400
            assert later["engagement"].present[i] == (age_then <= 90), (user, age_then)


def test_training_set_is_point_in_time_correct(sqlite_store, recent_ds):
    store, _ = sqlite_store
    sessions = recent_ds.sessions.slice(0, 50)
    user = sessions.column("user_id")[0].as_py()
    completed = sessions.column("completed_at")[0].as_py()
    joined = training_set(store, sessions)
    assert joined.column("session_id").to_pylist() == sessions.column("session_id").to_pylist()
    layouts = registered_layouts(store)
    parts = split_training_set(joined, layouts)
    eng = recent_ds.external["engagement"].to_pandas().set_index("user_id")
    if user in eng.index:
        assert parts["engagement"][1][0] == (eng.loc[user, "event_timestamp"] <= completed)


def test_a_row_stamped_after_the_session_is_not_used_and_one_before_is(sqlite_store, recent_ds, tmp_path):
    from features.store import FeatureStoreConfig, apply, open_store

    sessions = recent_ds.sessions.slice(0, 2)
    users = sessions.column("user_id").to_pylist()
    completed = sessions.column("completed_at").to_pylist()
    # engagement for user 0 only *after* the session; for user 1 one row before and one after
    base = recent_ds.external["engagement"].filter(pa.compute.is_in(
        recent_ds.external["engagement"].column("user_id"), pa.array(users[:1] + users[1:2])))
    rows = pd.concat([base.to_pandas().head(1)] * 3, ignore_index=True)
    rows["user_id"] = [users[0], users[1], users[1]]
    rows["event_timestamp"] = [completed[0] + timedelta(hours=1), completed[1] - timedelta(hours=1),
                               completed[1] + timedelta(hours=1)]
    rows["sessions_30d"] = [111.0, 222.0, 333.0]
    planted = pa.Table.from_pandas(rows, schema=base.schema, preserve_index=False)
    ds = type(recent_ds)(recent_ds.questionnaire, sessions, {**recent_ds.external, "engagement": planted})
    cfg = FeatureStoreConfig(repo=tmp_path / "repo")
    store = open_store(cfg)
    apply(store, ds, cfg)
    parts = split_training_set(training_set(store, sessions), registered_layouts(store))
    table, present = parts["engagement"]
    assert present.tolist() == [False, True]
    assert table.column("sessions_30d").to_pylist()[1] == 222.0


def test_scores_pushed_are_read_back_latest_first(sqlite_store):
    store, _ = sqlite_store
    frame = pd.DataFrame({
        "user_id": ["u000001", "u000002", "u000001"],
        "session_id": ["s1", "s2", "s3"],
        "model_version": ["v1", "v1", "v2"],
        "probabilities": [[0.1, 0.9], [0.4, 0.6], [0.8, 0.2]],
        "predicted_keys": [["q01=o2"], ["q01=o2"], ["q01=o1"]],
        "event_timestamp": [NOW - timedelta(minutes=5), NOW - timedelta(minutes=4), NOW - timedelta(minutes=1)],
    })
    frame["completed_at"] = frame["event_timestamp"] - timedelta(hours=1)
    push_scores(store, frame)
    got = latest_scores(store, ["u000001", "u000002", "nobody"])
    assert got["session_id"] == ["s3", "s2", None]
    assert got["model_version"][0] == "v2"
    np.testing.assert_allclose(got["probabilities"][0], [0.8, 0.2], rtol=1e-6)
    assert got["predicted_keys"][1] == ["q01=o2"]


def test_unreachable_sqlite_store_raises_the_typed_error(sqlite_store):
    store, cfg = sqlite_store
    db = cfg.repo / ".feast" / "online.db"
    moved = db.with_suffix(".away")
    db.rename(moved)
    try:
        with pytest.raises(FeatureStoreUnavailable, match="SQLite") as err:
            OnlineLookup(store).lookup(["u000001"])
        assert err.value.__cause__ is not None
    finally:
        moved.rename(db)


def test_feast_training_set_encodes_like_the_in_process_join(sqlite_store, recent_ds, tmp_path):
    from dataclasses import replace

    from features.store import read_training_set, write_training_set
    from model.data import encode_dataset, joined_sources
    from model.encoding import FeatureSpec

    store, _ = sqlite_store
    sessions, feast_rows = read_training_set(write_training_set(store, recent_ds.sessions, tmp_path / "ts.parquet")
                                             and tmp_path / "ts.parquet")
    assert sessions.equals(recent_ds.sessions.cast(sessions.schema))
    local_rows = joined_sources(recent_ds)
    spec = FeatureSpec.fit(recent_ds.external)
    ours, feast = encode_dataset(recent_ds, spec, local_rows), encode_dataset(replace(recent_ds, sessions=sessions),
                                                                              spec, feast_rows)
    np.testing.assert_array_equal(ours.survey.q_idx, feast.survey.q_idx)
    for s, a, b in zip(spec.sources, ours.sources, feast.sources):
        if s.name == "demographics":  # Feast applies the 90-day TTL; the local join has none
            assert (b.present <= a.present).all() and (a.present & ~b.present).any()
            keep = b.present
        else:
            np.testing.assert_array_equal(a.present, b.present)
            keep = a.present
        for field in ("num", "num_missing", "cat", "seq_cat", "seq_val", "seq_mask"):
            np.testing.assert_allclose(getattr(a, field)[keep], getattr(b, field)[keep], rtol=1e-6, err_msg=field)
