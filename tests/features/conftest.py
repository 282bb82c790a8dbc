"""Feature-store fixtures: a dataset whose external rows are stamped relative to *now* (so
materialisation windows and TTLs are exercised for real), applied to a SQLite repo in tmp."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pytest

from features.online import materialize_online
from features.store import FeatureStoreConfig, apply, open_store
from lantern.dataset.io import Dataset
from lantern.dataset.simulate import SimConfig, simulate

NOW = datetime.now(timezone.utc).replace(microsecond=0)


def restamp(table: pa.Table, column: str, days_ago: np.ndarray) -> pa.Table:
    stamps = np.datetime64(NOW.replace(tzinfo=None), "us") - (days_ago * 86400e6).astype("timedelta64[us]")
    idx = table.column_names.index(column)
    return table.set_column(idx, column, pa.array(stamps, pa.timestamp("us", tz="UTC")))


@pytest.fixture(scope="session")
def recent_ds() -> Dataset:
    """600 users; external rows 1–20 days old, except every 10th demographics row is 200 days
    old (older than the 90-day TTL); sessions completed 0–1 days ago."""
    ds = simulate(SimConfig(users=600, seed=11))
    rng = np.random.default_rng(0)
    external = {}
    for name, table in ds.external.items():
        age = rng.uniform(1, 20, table.num_rows)
        if name == "demographics":
            age[::10] = 200.0
        external[name] = restamp(table, "event_timestamp", age)
    sessions = restamp(ds.sessions, "completed_at", rng.uniform(0, 1, ds.sessions.num_rows))
    return Dataset(ds.questionnaire, sessions, external)


@pytest.fixture(scope="session")
def sqlite_store(recent_ds, tmp_path_factory):
    cfg = FeatureStoreConfig(repo=tmp_path_factory.mktemp("feast_sqlite"))
    store = open_store(cfg)
    apply(store, recent_ds, cfg)
    materialize_online(store, cfg, end=NOW + timedelta(minutes=1))
    return store, cfg


def model_specs(ds: Dataset) -> list:
    """Feature specs as models would hold them: fitted on all rows, and on a few rows with short
    sequences (unknown categories, truncated sequence tails)."""
    from dataclasses import replace

    from model.encoding import FeatureSpec

    few = FeatureSpec.fit({n: t.slice(0, 40) for n, t in ds.external.items()})
    return [FeatureSpec.fit(ds.external), FeatureSpec(tuple(replace(s, max_len=3) for s in few.sources))]


def assert_same_inputs(ours: dict, theirs: dict) -> None:
    assert list(ours) == list(theirs)
    for name in ours:
        for field in ours[name].__dataclass_fields__:
            np.testing.assert_array_equal(getattr(ours[name], field), getattr(theirs[name], field),
                                          err_msg=f"{name}.{field}")
