"""Thin shell around Feast: open the store, apply, materialize, training sets, score write-back.

The feature repo is ``features/feature_repo/`` (``feature_store.yaml`` + ``definitions.py``); its
state — registry, SQLite online store — lives under ``<repo>/.feast/``, the packed offline parquet
under ``features.offline`` (default ``<repo>/.feast/offline``). A different repo directory (tests,
several datasets) starts from a copy of ``feature_store.yaml``; ``apply`` writes its definitions.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from feast import FeatureStore
from feast.data_source import PushMode
from feast.repo_config import RepoConfig

from features.packing import SourceLayout, pack, unpack_present
from features.repo import (
    ENCODING_VIEW,
    FEATURE_SERVICE,
    LAYOUT_TAG,
    OFFLINE_DIR,
    SCORES_PUSH,
    SCORES_VIEW,
    VECTOR_VIEW,
    build_objects,
    render_definitions,
)
from lantern.dataset.io import Dataset
from lantern.errors import FeatureStoreUnavailable, LanternError
from lantern.settings.features import PACKAGE_REPO, FeatureStoreConfig

SCORES_SCHEMA = pa.schema([("user_id", pa.string()), ("event_timestamp", pa.timestamp("us", tz="UTC")),
                           ("session_id", pa.string()), ("model_version", pa.string()),
                           ("probabilities", pa.list_(pa.float32())), ("predicted_keys", pa.list_(pa.string())),
                           ("completed_at", pa.timestamp("us", tz="UTC"))])
VECTOR_SCHEMA = pa.schema([("user_id", pa.string()), ("event_timestamp", pa.timestamp("us", tz="UTC")),
                           ("vector", pa.binary())])
ENCODING_SCHEMA = pa.schema([("user_id", pa.string()), ("event_timestamp", pa.timestamp("us", tz="UTC")),
                             ("encoding", pa.binary())])
DEFINITIONS = "definitions.py"


def open_store(cfg: FeatureStoreConfig) -> FeatureStore:
    repo = Path(cfg.repo)
    if not (repo / "feature_store.yaml").exists():
        repo.mkdir(parents=True, exist_ok=True)
        shutil.copy(PACKAGE_REPO / "feature_store.yaml", repo / "feature_store.yaml")
    raw = yaml.safe_load((repo / "feature_store.yaml").read_text())
    if cfg.online == "redis":
        raw["online_store"] = {"type": "redis", "connection_string": cfg.redis}
    (repo / ".feast").mkdir(exist_ok=True)
    return FeatureStore(repo_path=str(repo), config=RepoConfig(repo_path=repo, **raw))


def layouts_of(ds: Dataset) -> list[SourceLayout]:
    return [SourceLayout.from_schema(name, ds.external[name].schema) for name in sorted(ds.external)]


def offline_setting(cfg: FeatureStoreConfig) -> str:
    """The packed offline parquet's folder as the file sources name it (relative: from the repo)."""
    return str(cfg.offline) if cfg.offline is not None else OFFLINE_DIR


def offline_dir(cfg: FeatureStoreConfig) -> Path:
    """Where the packed offline parquet lives on this machine."""
    return Path(cfg.repo) / offline_setting(cfg)


def apply(store: FeatureStore, ds: Dataset, cfg: FeatureStoreConfig) -> list[SourceLayout]:
    """Write packed offline parquet for every source and the repo's ``definitions.py`` for these
    sources, then register the same objects (``feast apply`` on the repo registers them alike)."""
    repo, layouts = Path(cfg.repo), layouts_of(ds)
    offline = offline_dir(cfg)
    offline.mkdir(parents=True, exist_ok=True)
    for layout in layouts:
        pq.write_table(pack(layout, ds.external[layout.name]), offline / f"{layout.name}.parquet")
    for view, schema in ((SCORES_VIEW, SCORES_SCHEMA), (VECTOR_VIEW, VECTOR_SCHEMA), (ENCODING_VIEW, ENCODING_SCHEMA)):
        path = offline / f"{view}.parquet"
        if not path.exists():  # a push source's batch source: `feast materialize` reads it
            pq.write_table(schema.empty_table(), path)
    where = offline_setting(cfg)
    (repo / DEFINITIONS).write_text(render_definitions(layouts, cfg.ttl_days, where))
    store.apply(list(build_objects(layouts, cfg.ttl_days, where).values()))
    return layouts


def registered_layouts(store: FeatureStore) -> list[SourceLayout]:
    """The layouts of the FeatureService's views, read back from the registry (view tags)."""
    service = store.get_feature_service(FEATURE_SERVICE)
    return [SourceLayout.from_dict(json.loads(store.get_feature_view(p.name).tags[LAYOUT_TAG]))
            for p in service.feature_view_projections]


def materialize(store: FeatureStore, cfg: FeatureStoreConfig, end: datetime | None = None,
                start: datetime | None = None) -> None:
    """Load every source's rows stamped in [start, end] (default: the last TTL window) online."""
    end = end or datetime.now(timezone.utc)
    views = [p.name for p in store.get_feature_service(FEATURE_SERVICE).feature_view_projections]
    store.materialize(start_date=start or end - timedelta(days=cfg.ttl_days), end_date=end, feature_views=views)


# ---- point-in-time training sets ----------------------------------------------------------------
def training_set(store: FeatureStore, sessions: pa.Table) -> pa.Table:
    """Sessions joined point-in-time (``completed_at``) with every source of the FeatureService.

    Returns the session columns plus ``<source>__<packed feature>`` columns (null where the user
    had no row at or before ``completed_at`` within the TTL), in the input's row order.

    One retrieval per view: Feast's file offline store drops an entity row whose only match in a
    view is older than the TTL, so a joint query would lose that session's other sources too."""
    entity_df = pd.DataFrame({
        "user_id": sessions.column("user_id").to_pylist(),
        "event_timestamp": sessions.column("completed_at").to_pandas(),
        "session_id": sessions.column("session_id").to_pylist(),
    })
    wanted = pd.Index(entity_df["session_id"])
    names, columns = list(sessions.column_names), list(sessions.columns)
    for proj in store.get_feature_service(FEATURE_SERVICE).feature_view_projections:
        refs = [f"{proj.name}:{f.name}" for f in proj.features]
        frame = store.get_historical_features(entity_df=entity_df, features=refs,
                                              full_feature_names=True).to_arrow()
        position = pd.Series(np.arange(frame.num_rows), index=frame.column("session_id").to_pylist())
        rows = position.reindex(wanted).to_numpy()  # NaN where Feast returned no row
        take = pa.array(np.where(np.isnan(rows), 0, rows).astype(np.int64), mask=np.isnan(rows))
        for f in proj.features:
            name = f"{proj.name}__{f.name}"
            names.append(name)
            columns.append(frame.column(name).take(take))
    return pa.Table.from_arrays(columns, names=names)


def split_training_set(table: pa.Table, layouts: list[SourceLayout]) -> dict[str, tuple[pa.Table, np.ndarray]]:
    """Per source: its unpacked columns and the presence mask (any packed feature non-null)."""
    return {layout.name: unpack_present(layout, {f: table.column(f"{layout.name}__{f}").to_pylist()
                                                 for f in layout.features})
            for layout in layouts}


TRAINING_SET_META = b"lantern_layouts"


def point_in_time_sources(store: FeatureStore, sessions: pa.Table) -> dict[str, tuple[pa.Table, np.ndarray]]:
    """What training encodes: per source, each session's point-in-time columns and presence."""
    return split_training_set(training_set(store, sessions), registered_layouts(store))


def write_training_set(store: FeatureStore, sessions: pa.Table, path: Path) -> pa.Table:
    """Build the point-in-time training set and write it as parquet (layouts in the metadata)."""
    table = training_set(store, sessions)
    meta = {TRAINING_SET_META: json.dumps([x.to_dict() for x in registered_layouts(store)]).encode()}
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **meta})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return table


def read_training_set(path: Path) -> tuple[pa.Table, dict[str, tuple[pa.Table, np.ndarray]]]:
    """A training-set parquet → (session columns, per-source unpacked rows + presence)."""
    from lantern.dataset.schema import SESSIONS
    from lantern.dataset.validate import conform

    try:
        table = pq.read_table(path)
        layouts = [SourceLayout.from_dict(d) for d in json.loads(table.schema.metadata[TRAINING_SET_META])]
    except (OSError, KeyError, TypeError) as exc:
        raise LanternError(f"{path} is not a lantern training set (write one with "
                           f"`lantern features training-set`): {exc}") from exc
    return conform(table, SESSIONS, str(path)), split_training_set(table, layouts)


# ---- score write-back --------------------------------------------------------------------------
def push_scores(store: FeatureStore, scores: pd.DataFrame) -> None:
    """Push the scorer's outputs (user_id, session_id, model_version, probabilities, predicted_keys,
    event_timestamp) to the online `lantern_scores` view in one batch."""
    try:
        store.push(SCORES_PUSH, scores, to=PushMode.ONLINE)
    except (sqlite3.Error, ConnectionError, OSError) as exc:
        raise FeatureStoreUnavailable(f"cannot write scores to the online store: {exc}") from exc


def stored_completions(store: FeatureStore, user_ids: list[str]) -> dict[str, object]:
    """Each user's ``completed_at`` of the score the online store holds (None: no score yet)."""
    try:
        got = store.get_online_features(features=[f"{SCORES_VIEW}:completed_at"],
                                        entity_rows=[{"user_id": u} for u in user_ids]).to_dict()
    except (sqlite3.Error, ConnectionError, OSError) as exc:
        raise FeatureStoreUnavailable(f"cannot read scores from the online store: {exc}") from exc
    return dict(zip(got["user_id"], got["completed_at"]))


def latest_scores(store: FeatureStore, user_ids: list[str]) -> dict[str, list]:
    """What a downstream app calls: each user's latest predicted attributes."""
    feats = [f"{SCORES_VIEW}:{f}" for f in ("session_id", "model_version", "probabilities", "predicted_keys")]
    return store.get_online_features(features=feats, entity_rows=[{"user_id": u} for u in user_ids]).to_dict()
