"""`lantern bench features`: rows/s of Feast's SDK path vs lantern's lookup, same store, same keys,
measured side by side in one run (interleaved rounds, medians)."""

from __future__ import annotations

import gc
import tempfile
import time
from contextlib import nullcontext
from datetime import timedelta
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
from feast import FeatureStore

from devtools.servers import redis_server
from features.lookup import OnlineLookup, SourceRows
from features.online import materialize_online
from features.packing import SourceLayout, unpack_present
from features.repo import FEATURE_SERVICE
from features.store import FeatureStoreConfig, apply, open_store, registered_layouts
from lantern.dataset.io import Dataset
from model.encoding import FeatureSpec, SourceArrays, shape_sources

BATCHES = (1, 64, 256, 1024)


def sdk_online_dict(store: FeatureStore, user_ids: list[str]) -> dict[str, list]:
    """Feast's SDK call alone: `get_online_features` on the FeatureService, as a dict of lists."""
    return store.get_online_features(features=store.get_feature_service(FEATURE_SERVICE),
                                     entity_rows=[{"user_id": u} for u in user_ids],
                                     full_feature_names=True).to_dict()


def sdk_lookup(store: FeatureStore, user_ids: list[str], layouts: list[SourceLayout]) -> dict[str, SourceRows]:
    """The same answer through Feast's SDK (`get_online_features` on the FeatureService)."""
    result = sdk_online_dict(store, user_ids)
    return {layout.name: SourceRows(*unpack_present(layout, {f: result[f"{layout.name}__{f}"]
                                                           for f in layout.features}))
            for layout in layouts}


def sdk_model_inputs(store: FeatureStore, user_ids: list[str], layouts: list[SourceLayout],
                     spec: FeatureSpec) -> dict[str, SourceArrays]:
    """The model's external inputs through Feast's SDK: `get_online_features`, then shaped."""
    rows = sdk_lookup(store, user_ids, layouts)
    return shape_sources(spec, {n: (r.table, r.present) for n, r in rows.items()}, len(user_ids))


def _seconds_per_call(fn, batches) -> float:
    """Seconds per call over the key batches (one call each), from a collected heap so one
    path's garbage is not charged to the other."""
    gc.collect()
    t0 = time.perf_counter()
    for keys in batches:
        fn(keys)
    return (time.perf_counter() - t0) / len(batches)


def _side_by_side(paths, batches, rounds: int = 3) -> list[float]:
    """Median seconds per call of each path over interleaved rounds (this machine is noisy)."""
    times = [[_seconds_per_call(path, batches) for path in paths] for _ in range(rounds)]
    return [float(np.median(column)) for column in zip(*times)]


def _same_columns(a, b) -> bool:
    return all((a[n].present == b[n].present).all() and repr(a[n].table.to_pylist()) == repr(b[n].table.to_pylist())
               for n in a)


def _same_inputs(a, b) -> bool:
    return list(a) == list(b) and all(np.array_equal(getattr(a[n], f), getattr(b[n], f))
                                      for n in a for f in a[n].__dataclass_fields__)


def _figures(size: int, sdk_s: float, ours_s: float, equal: bool, calls: int) -> dict:
    return {"sdk_rows_per_s": size / sdk_s, "lantern_rows_per_s": size / ours_s, "ratio": sdk_s / ours_s,
            "sdk_ms": sdk_s * 1e3, "lantern_ms": ours_s * 1e3, "values_equal": bool(equal), "calls": calls}


def historic_store(ds: Dataset, kind: str, repo: Path, redis_address: str | None = None,
                   ttl_days: float | None = None, log=print) -> tuple:
    """Every row of a (historic) dataset applied and materialized online, vectors included.
    Returns the store, its config and the window's end: by default the TTL spans the window, so
    every row is fresh at that time (pass ``ttl_days`` to keep them fresh at another clock)."""
    stamps = [pc.min_max(t.column("event_timestamp")) for t in ds.external.values()]
    first = min(s["min"].as_py() for s in stamps) - timedelta(days=1)
    last = max(s["max"].as_py() for s in stamps) + timedelta(days=1)
    cfg = FeatureStoreConfig(repo=repo, online=kind, redis=redis_address or "127.0.0.1:6379",
                             ttl_days=ttl_days or (last - first).days + 2)
    store = open_store(cfg)
    apply(store, ds, cfg)
    t0 = time.perf_counter()
    users = materialize_online(store, cfg, start=first, end=last)
    log(f"{kind}: materialized {sum(t.num_rows for t in ds.external.values())} rows and {users} user vectors "
        f"in {time.perf_counter() - t0:.1f} s")
    return store, cfg, last


def bench_store(ds: Dataset, kind: str, repo: Path, redis_address: str | None, batches=BATCHES,
                min_rows: int = 8192, seed: int = 0, log=print) -> dict:
    """Per batch size: the model's external inputs for a batch of users through (a) Feast's SDK +
    the model's shaping and (b) ``OnlineLookup.model_inputs``; ``columns``: the same for the
    source columns alone (``sdk_lookup`` vs ``OnlineLookup.lookup``)."""
    # every row of the (historic) dataset online and fresh: SDK and lantern must return the same
    store, _, last = historic_store(ds, kind, repo, redis_address, log=log)
    lookup = OnlineLookup(store, clock=last.timestamp)
    layouts = registered_layouts(store)
    spec = FeatureSpec.fit(ds.external)  # what a model trained on this data reads
    users = np.array(sorted(set(ds.sessions.column("user_id").to_pylist())))
    rng = np.random.default_rng(seed)
    out = {}
    for size in batches:
        calls = max(5, min(500, min_rows // size))
        # Python str ids, as the scorer passes them (numpy str_ would slow both paths' hashing)
        key_batches = [rng.choice(users, size, replace=False).tolist() for _ in range(calls)]
        sdk_inputs = lambda k: sdk_model_inputs(store, k, layouts, spec)  # noqa: E731
        ours_inputs = lambda k: lookup.model_inputs(k, spec)  # noqa: E731
        sdk_columns = lambda k: sdk_lookup(store, k, layouts)  # noqa: E731
        sdk_inputs(key_batches[0]), ours_inputs(key_batches[0])  # warm both paths (connections, registry cache)
        check = key_batches[-1]
        equal = _same_inputs(ours_inputs(check), sdk_inputs(check))
        columns_equal = _same_columns(lookup.lookup(check), sdk_columns(check))
        sdk_call = lambda k: sdk_online_dict(store, k)  # noqa: E731
        sdk_s, ours_s, call_s = _side_by_side([sdk_inputs, ours_inputs, sdk_call], key_batches)
        row = _figures(size, sdk_s, ours_s, equal, calls)
        # the SDK call alone (no unpacking, no shaping) against lantern's whole path: the strictest ratio
        row.update(sdk_call_ms=call_s * 1e3, ratio_vs_sdk_call=call_s / ours_s)
        row["columns"] = _figures(size, *_side_by_side([sdk_columns, lookup.lookup], key_batches), columns_equal, calls)
        out[str(size)] = row
        log(f"{kind} batch {size:>4}: model inputs: SDK {row['sdk_ms']:8.2f} ms, lantern {row['lantern_ms']:6.2f} ms, "
            f"{row['ratio']:5.1f}x, equal: {equal} | SDK call alone {row['sdk_call_ms']:8.2f} ms, "
            f"{row['ratio_vs_sdk_call']:5.1f}x | columns: SDK {row['columns']['sdk_ms']:8.2f} ms, "
            f"lantern {row['columns']['lantern_ms']:6.2f} ms, {row['columns']['ratio']:5.1f}x, equal: {columns_equal}")
    return out


def bench_features(ds: Dataset, stores=("sqlite", "redis"), batches=BATCHES, min_rows: int = 8192, log=print) -> dict:
    result = {}
    with tempfile.TemporaryDirectory(prefix="lantern-bench-features-") as tmp:
        for kind in stores:
            with redis_server() if kind == "redis" else nullcontext() as address:
                result[kind] = bench_store(ds, kind, Path(tmp) / kind, address, batches, min_rows, log=log)
    return result
