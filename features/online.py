"""Filling the online store: Feast's materialize of every source, then each user's precomputed
vector (all sources in one value, read back from the per-source views so it equals them)."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timezone

from feast import FeatureStore

from features import vector
from features.lookup import OnlineLookup
from features.repo import VECTOR_FIELD, VECTOR_PUSH
from features.store import (
    FeatureStoreConfig,
    apply,
    materialize,
    offline_dir,
    open_store,
    registered_layouts,
)
from lantern.errors import FeatureStoreUnavailable


def precompute(store: FeatureStore, user_ids: list[str], batch: int = 2048, log=None) -> int:
    """Write every user's precomputed vector (all sources, per-source event times) online,
    read back from the per-source views so it equals what they hold. Returns users written."""
    import pandas as pd

    lookup = OnlineLookup(store, use_vector=False)
    written, stamp = 0, datetime.now(timezone.utc)
    for start in range(0, len(user_ids), batch):
        users = user_ids[start:start + batch]
        per_source = lookup.lookup_views_raw(lookup.entity_keys(users))
        rows = {name: table.to_pylist() for name, (table, _) in per_source.items()}
        vectors = [vector.encode(lookup.layouts,
                                 {n: rows[n][i] for n in rows if per_source[n][1][i] is not None},
                                 {n: per_source[n][1][i] for n in rows})
                   for i in range(len(users))]
        frame = pd.DataFrame({"user_id": users, VECTOR_FIELD: vectors, "event_timestamp": stamp})
        try:
            store.push(VECTOR_PUSH, frame)
        except (sqlite3.Error, ConnectionError, OSError) as exc:
            raise FeatureStoreUnavailable(f"cannot write precomputed vectors: {exc}") from exc
        written += len(users)
    OnlineLookup(store).cover_vectors()
    if log:
        log(f"precomputed {written} user vectors")
    return written


def materialize_online(store: FeatureStore, cfg: FeatureStoreConfig, end=None, start=None, log=None) -> int:
    """`lantern features materialize`: Feast's materialize of every source, then the vectors."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    materialize(store, cfg, end=end, start=start)
    offline = offline_dir(cfg)
    users = set()
    for layout in registered_layouts(store):
        users.update(pc.unique(pq.read_table(offline / f"{layout.name}.parquet", columns=["user_id"])
                               .column("user_id")).to_pylist())
    return precompute(store, sorted(users), log=log)


def fill_online(cfg: FeatureStoreConfig, ds) -> tuple[FeatureStore, int, int]:
    """A local run's store from a dataset: apply its source views, materialize them and the
    vectors. Returns the store, the number of source views and the users written."""
    store = open_store(cfg)
    layouts = apply(store, ds, cfg)
    return store, len(layouts), materialize_online(store, cfg)
