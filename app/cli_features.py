"""`lantern features …` and `lantern bench features`: the Feast feature store."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from app.cli_common import OnlineOpt, RepoOpt, champion_dir, console, out, settings_for, write_json


def features_apply(ctx: typer.Context, data: Annotated[Optional[Path], typer.Option(help="Dataset directory.")] = None,
                   repo: RepoOpt = None, online: OnlineOpt = None):
    """Pack the dataset's external sources and register the feature repo (feast apply)."""
    from features.store import apply, open_store
    from lantern.dataset.io import load_dataset

    s = settings_for(ctx, paths=dict(data=data), features=dict(repo=repo, online=online))
    layouts = apply(open_store(s.features), load_dataset(s.paths.data), s.features)
    out.print(f"applied {len(layouts)} feature views ({', '.join(x.name for x in layouts)}), FeatureService "
              f"lantern_v1, the lantern_scores push view and the lantern_v1_vector and lantern_v1_encoding views "
              f"to {s.features.repo}")


def features_materialize(ctx: typer.Context, repo: RepoOpt = None, online: OnlineOpt = None):
    """Load the last TTL window of every source online, then precompute each user's vector."""
    from features.online import materialize_online
    from features.store import open_store

    s = settings_for(ctx, features=dict(repo=repo, online=online))
    t0 = time.perf_counter()
    users = materialize_online(open_store(s.features), s.features)
    out.print(f"materialized into the {s.features.online} online store, {users} user vectors precomputed, "
              f"in {time.perf_counter() - t0:.1f} s")


def features_encode(
    ctx: typer.Context,
    model: Annotated[Optional[Path], typer.Option(
        help="Model directory (lantern train); default: the registry's champion.")] = None,
    repo: RepoOpt = None, online: OnlineOpt = None,
):
    """Store every user's external encoding by one model version online (after materialize): the
    scorer serving that model reads it instead of encoding the user's sources for every event."""
    from features.online import encode_online, source_users
    from features.store import open_store
    from model.checkpoint import load_model

    s = settings_for(ctx, features=dict(repo=repo, online=online))
    model = model or champion_dir(s)
    loaded, store = load_model(model), open_store(s.features)
    t0 = time.perf_counter()
    users = encode_online(store, loaded, loaded.version(model), source_users(store, s.features))
    out.print(f"stored {users} users' external encodings by model {loaded.version(model)} in the "
              f"{s.features.online} online store, in {time.perf_counter() - t0:.1f} s")


def features_training_set(
    ctx: typer.Context,
    data: Annotated[Optional[Path], typer.Option(help="Dataset directory (its sessions are the entity rows).")] = None,
    out_path: Annotated[Path, typer.Option("--out", help="Parquet file to write.")] = Path("data/training_set.parquet"),
    repo: RepoOpt = None,
):
    """Point-in-time correct training set: every session joined with the features known at completed_at."""
    from features.store import open_store, write_training_set
    from lantern.dataset.io import load_dataset

    s = settings_for(ctx, paths=dict(data=data), features=dict(repo=repo))
    t0 = time.perf_counter()
    table = write_training_set(open_store(s.features), load_dataset(s.paths.data).sessions, out_path)
    out.print(f"wrote {table.num_rows} sessions with {table.num_columns - 4} packed feature columns to {out_path} "
              f"in {time.perf_counter() - t0:.1f} s")


def bench_features_cmd(
    ctx: typer.Context,
    data: Annotated[Optional[Path], typer.Option(help="Dataset directory.")] = None,
    json_out: Annotated[Path, typer.Option("--json")] = Path("reports/bench_features.json"),
    stores: Annotated[str, typer.Option(help="Comma-separated: sqlite,redis")] = "sqlite,redis",
):
    """Online lookup rows/s: Feast SDK vs lantern's path, batches 1/64/256/1024, SQLite and Redis."""
    from devtools.bench_features import bench_features
    from lantern.dataset.io import load_dataset

    s = settings_for(ctx, paths=dict(data=data))
    result = bench_features(load_dataset(s.paths.data), tuple(stores.split(",")), log=console.print)
    write_json(json_out, result)
    out.print(f"results in {json_out}")


