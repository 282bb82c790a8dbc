"""`lantern bench features` on a small dataset: every store and batch holds both paths' figures,
the answers are equal, and the ratios are the figures' own."""

from __future__ import annotations

import shutil

import pytest

from devtools.bench_features import bench_features
from lantern.dataset.simulate import SimConfig, simulate


def test_bench_features_times_both_paths_on_each_store_with_equal_answers():
    stores = ("sqlite", "redis") if shutil.which("redis-server") else ("sqlite",)
    if len(stores) == 1:
        print("redis-server missing: benchmarking SQLite only (make test installs Debian's redis-server)")
    result = bench_features(simulate(SimConfig(users=300, seed=3)), stores, batches=(1, 64), min_rows=64,
                            log=lambda *_: None)
    assert set(result) == set(stores)
    for store in stores:
        assert set(result[store]) == {"1", "64"}
        for size, row in result[store].items():
            assert row["values_equal"] and row["columns"]["values_equal"], (store, size)
            assert row["calls"] == max(5, 64 // int(size))
            assert row["ratio"] == pytest.approx(row["lantern_rows_per_s"] / row["sdk_rows_per_s"])
            assert row["ratio_vs_sdk_call"] == pytest.approx(row["sdk_call_ms"] / row["lantern_ms"])
            assert row["lantern_rows_per_s"] == pytest.approx(int(size) / row["lantern_ms"] * 1e3)
