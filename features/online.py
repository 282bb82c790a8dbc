"""Filling the online store: Feast's materialize of every source, then each user's precomputed
vector (all sources in one value, read back from the per-source views so it equals them), and
optionally each user's external encoding by one model version (model/materialized.py)."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timezone

from feast import FeatureStore

from features import vector
from features.lookup import OnlineLookup
from features.repo import ENCODING_FIELD, ENCODING_PUSH, VECTOR_FIELD, VECTOR_PUSH
from features.store import (
    FeatureStoreConfig,
    apply,
    materialize,
    offline_dir,
    open_store,
    registered_layouts,
)
from lantern.errors import FeatureStoreUnavailable, ModelError


def precompute(store: FeatureStore, user_ids: list[str], batch: int = 2048, log=None) -> int:
    """Write every user's precomputed vector (all sources, per-source event times) online,
    read back from the per-source views so it equals what they hold. Returns users written."""
    lookup = OnlineLookup(store, use_vector=False)
    written = 0
    for start in range(0, len(user_ids), batch):
        users = user_ids[start:start + batch]
        per_source = lookup.lookup_views_raw(lookup.entity_keys(users))
        rows = {name: table.to_pylist() for name, (table, _) in per_source.items()}
        vectors = [vector.encode(lookup.layouts,
                                 {n: rows[n][i] for n in rows if per_source[n][1][i] is not None},
                                 {n: per_source[n][1][i] for n in rows})
                   for i in range(len(users))]
        _push(store, VECTOR_PUSH, VECTOR_FIELD, users, vectors, "precomputed vectors")
        written += len(users)
    OnlineLookup(store).cover_vectors()
    if log:
        log(f"precomputed {written} user vectors")
    return written


def _push(store: FeatureStore, push_source: str, field: str, users: list[str], values: list[bytes], what: str) -> None:
    import pandas as pd

    frame = pd.DataFrame({"user_id": users, field: values, "event_timestamp": datetime.now(timezone.utc)})
    try:
        store.push(push_source, frame)
    except (sqlite3.Error, ConnectionError, OSError) as exc:
        raise FeatureStoreUnavailable(f"cannot write {what}: {exc}") from exc


def encode_online(store: FeatureStore, loaded, model_version: str, user_ids: list[str], batch: int = 2048,
                  log=None) -> int:
    """`lantern features encode`: every user's external encoding by ``loaded`` (a
    :class:`model.checkpoint.LoadedModel`), tagged with ``model_version`` and the weights' digest,
    written online; the scorer serving that model reads them instead of encoding the sources per
    event. Returns users written."""
    from model.inference import stored_version
    from model.materialized import encode_users

    tag = stored_version(loaded.model, model_version)
    if tag is None:
        raise ModelError(f"a {loaded.config.variant} model has no external encoding to store")
    lookup, written = OnlineLookup(store), 0
    for start in range(0, len(user_ids), batch):
        users = user_ids[start:start + batch]
        arrays, times = lookup.rows_to_encode(users, loaded.features)
        blobs = encode_users(loaded.model, [arrays[s.name] for s in loaded.features.sources], tag, times)
        _push(store, ENCODING_PUSH, ENCODING_FIELD, users, blobs, "external encodings")
        written += len(users)
    if log:
        log(f"encoded {written} users' external sources for model {model_version}")
    return written


def source_users(store: FeatureStore, cfg: FeatureStoreConfig) -> list[str]:
    """Every user with a row in any source's offline data, sorted."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    offline, users = offline_dir(cfg), set()
    for layout in registered_layouts(store):
        users.update(pc.unique(pq.read_table(offline / f"{layout.name}.parquet", columns=["user_id"])
                               .column("user_id")).to_pylist())
    return sorted(users)


def materialize_online(store: FeatureStore, cfg: FeatureStoreConfig, end=None, start=None, log=None) -> int:
    """`lantern features materialize`: Feast's materialize of every source, then the vectors."""
    materialize(store, cfg, end=end, start=start)
    return precompute(store, source_users(store, cfg), log=log)


def fill_online(cfg: FeatureStoreConfig, ds) -> tuple[FeatureStore, int, int]:
    """A local run's store from a dataset: apply its source views, materialize them and the
    vectors. Returns the store, the number of source views and the users written."""
    store = open_store(cfg)
    layouts = apply(store, ds, cfg)
    return store, len(layouts), materialize_online(store, cfg)
