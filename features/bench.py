"""`lantern bench features`: rows/s of Feast's SDK path vs lantern's lookup, same store, same keys."""

from __future__ import annotations

import gc
import tempfile
import time
from contextlib import nullcontext
from datetime import timedelta
from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from features.lookup import OnlineLookup, materialize_online, sdk_lookup
from features.store import FeatureStoreConfig, apply, open_store, registered_layouts
from lantern.dataset.io import Dataset
from lantern.servers import redis_server

BATCHES = (1, 64, 256, 1024)


def _time(fn, batches) -> float:
    """Seconds per call, over the given key batches (one call each); both paths start from a
    collected heap so one path's garbage is not charged to the other."""
    gc.collect()
    t0 = time.perf_counter()
    for keys in batches:
        fn(keys)
    return (time.perf_counter() - t0) / len(batches)


def _same(a, b) -> bool:
    return all((a[n].present == b[n].present).all() and repr(a[n].table.to_pylist()) == repr(b[n].table.to_pylist())
               for n in a)


def bench_store(ds: Dataset, kind: str, repo: Path, redis_address: str | None, batches=BATCHES,
                min_rows: int = 4096, seed: int = 0, log=print) -> dict:
    # every row of the (historic) dataset online and fresh: SDK and lantern must return the same
    stamps = [pc.min_max(t.column("event_timestamp")) for t in ds.external.values()]
    first = min(s["min"].as_py() for s in stamps) - timedelta(days=1)
    last = max(s["max"].as_py() for s in stamps) + timedelta(days=1)
    cfg = FeatureStoreConfig(repo=repo, online=kind, redis=redis_address or "127.0.0.1:6379",
                             ttl_days=(last - first).days + 2)
    store = open_store(cfg)
    apply(store, ds, cfg)
    t0 = time.perf_counter()
    users = materialize_online(store, cfg, start=first, end=last)
    log(f"{kind}: materialized {sum(t.num_rows for t in ds.external.values())} rows and {users} user vectors "
        f"in {time.perf_counter() - t0:.1f} s")
    lookup = OnlineLookup(store, clock=last.timestamp)
    layouts = registered_layouts(store)
    users = np.array(sorted(set(ds.sessions.column("user_id").to_pylist())))
    rng = np.random.default_rng(seed)
    out = {}
    for size in batches:
        reps = max(3, min_rows // size)
        key_batches = [list(rng.choice(users, size, replace=False)) for _ in range(reps)]
        sdk_lookup(store, key_batches[0], layouts)  # warm both paths (connections, registry cache)
        lookup.lookup(key_batches[0])
        equal = _same(lookup.lookup(key_batches[-1]), sdk_lookup(store, key_batches[-1], layouts))
        sdk_s = _time(lambda k: sdk_lookup(store, k, layouts), key_batches)

        ours_s = _time(lookup.lookup, key_batches)
        out[str(size)] = {"sdk_rows_per_s": size / sdk_s, "lantern_rows_per_s": size / ours_s,
                          "ratio": sdk_s / ours_s, "sdk_ms": sdk_s * 1e3, "lantern_ms": ours_s * 1e3,
                          "values_equal": bool(equal), "calls": reps}
        log(f"{kind} batch {size:>4}: SDK {sdk_s * 1e3:8.2f} ms, lantern {ours_s * 1e3:7.2f} ms, "
            f"ratio {sdk_s / ours_s:5.1f}x, values equal: {equal}")
    return out


def bench_features(ds: Dataset, stores=("sqlite", "redis"), batches=BATCHES, log=print) -> dict:
    result = {}
    with tempfile.TemporaryDirectory(prefix="lantern-bench-features-") as tmp:
        for kind in stores:
            with redis_server() if kind == "redis" else nullcontext() as address:
                result[kind] = bench_store(ds, kind, Path(tmp) / kind, address, batches, log=log)
    return result
