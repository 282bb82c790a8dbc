"""`lantern register | promote | rollback | serve` and `lantern bench serve`: the registry and Ray Serve."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from app.cli_common import console, out, resolve_ray_address, settings_for, write_json

RegistryOpt = Annotated[Optional[Path], typer.Option("--registry", help="Registry directory (default registry/).")]
AddressOpt = Annotated[Optional[str], typer.Option(
    "--ray-address", help="A running Ray cluster (default: $RAY_ADDRESS; none: promote/rollback only move "
                          "the pointer, serve starts a local Ray).")]


def _registry(ctx: typer.Context, registry: Path | None):
    from model.registry import Registry

    s = settings_for(ctx, serve=dict(registry=registry))
    return s, Registry(s.serve.registry)


def register(ctx: typer.Context, model: Annotated[Path, typer.Option(help="Model directory from `lantern train`.")],
             registry: RegistryOpt = None):
    """Copy a trained model into the registry as the next version (metrics and data window from its metadata)."""
    s, reg = _registry(ctx, registry)
    meta = json.loads((model / "meta.json").read_text()) if (model / "meta.json").exists() else {}
    metrics = {"val_f1": meta["training"]["best_val_f1"]} if "training" in meta else {}
    info = reg.register(model, metrics, meta.get("data_window"))
    out.print(f"registered {info.version} (parent {info.parent}, metrics {info.metrics}) in {reg.root}")


def _follow(s, address: str | None) -> None:
    """Point the running Serve app at the registry's champion (a user_config update)."""
    address = resolve_ray_address(address)
    if not address:
        out.print("no --ray-address / $RAY_ADDRESS: the pointer moved; a running app follows on its next deploy")
        return
    from ray_jobs.cluster import connect
    from ray_jobs.serve import deploy

    connect(address)
    deploy(s.serve)
    out.print(f"Serve app {s.serve.app_name!r} reconfigured to the champion")


def promote(ctx: typer.Context, version: Annotated[str, typer.Argument(help="Registry version, e.g. v0003.")],
            registry: RegistryOpt = None, ray_address: AddressOpt = None):
    """Make VERSION the champion if its metric is ≥ the champion's (+ serve.promote_min_gain); log the decision."""
    s, reg = _registry(ctx, registry)
    decision = reg.promote(version, s.serve.promote_metric, s.serve.promote_min_gain)
    out.print(f"{'promoted' if decision.accepted else 'refused'}: {decision.reason}")
    if decision.accepted:
        _follow(s, ray_address)
    else:
        raise typer.Exit(1)


def rollback(ctx: typer.Context, registry: RegistryOpt = None, ray_address: AddressOpt = None):
    """Restore the previous champion; log the decision."""
    s, reg = _registry(ctx, registry)
    decision = reg.rollback()
    out.print(f"{'rolled back' if decision.accepted else 'refused'}: {decision.reason}")
    if decision.accepted:
        _follow(s, ray_address)
    else:
        raise typer.Exit(1)


def serve_cmd(ctx: typer.Context, registry: RegistryOpt = None, ray_address: AddressOpt = None,
              port: Annotated[Optional[int], typer.Option(help="HTTP port (default serve.http_port).")] = None,
              use_features: Annotated[bool, typer.Option("--features/--no-features")] = True,
              run_for: Annotated[Optional[float], typer.Option(help="Stop after this many seconds.")] = None):
    """Run the LanternScorer Serve app (champion version): handle + POST /score + GET /healthz."""
    from ray import serve

    from ray_jobs.cluster import connect, stop
    from ray_jobs.serve import deploy, feature_store_options

    s = settings_for(ctx, serve=dict(registry=registry, http_port=port))
    connect(resolve_ray_address(ray_address))
    features = feature_store_options(s.features) if use_features else None
    deploy(s.serve, features=features)
    out.print(f"serving on http://{s.serve.http_host}:{s.serve.http_port}/score (Ctrl-C stops)")
    try:
        deadline = time.monotonic() + run_for if run_for else None
        while deadline is None or time.monotonic() < deadline:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
        stop()


def bench_serve_cmd(ctx: typer.Context, data: Annotated[Optional[Path], typer.Option(help="Dataset directory.")] = None,
                    json_out: Annotated[Path, typer.Option("--json")] = Path("reports/bench_serve.json"),
                    users: Annotated[int, typer.Option(help="Users to train the benchmark model on.")] = 3000):
    """Rows/s through Ray Serve (micro-batches 64/256/1024) vs the same model in process, and latency."""
    from devtools.bench_serve import bench_serve

    s = settings_for(ctx, paths=dict(data=data))
    result = bench_serve(s, users=users, log=console.print)
    write_json(json_out, result)
    out.print(f"results in {json_out}")


def bench_model_cmd(ctx: typer.Context,
                    json_out: Annotated[Path, typer.Option("--json")] = Path("reports/bench_model.json"),
                    users: Annotated[int, typer.Option(help="Users to train the benchmark model on.")] = 3000,
                    rounds: Annotated[int, typer.Option(min=1, help="Interleaved rounds (medians).")] = 5):
    """The model stage per core: eager forward vs stored external encodings, int8 dynamic quantization,
    torch.compile and ONNX Runtime (when installed), side by side."""
    from devtools.bench_model import bench_model

    s = settings_for(ctx)
    result = bench_model(s, users=users, rounds=rounds, log=console.print)
    write_json(json_out, result)
    out.print(f"results in {json_out}")


def bench_autoscale_cmd(ctx: typer.Context,
                        json_out: Annotated[Path, typer.Option("--json")] = Path("reports/bench_autoscale.json"),
                        users: Annotated[int, typer.Option(help="Users to train the benchmark model on.")] = 2000,
                        clients: Annotated[int, typer.Option(min=1, help="Closed-loop callers (offered load).")] = 6):
    """The scorer app under a sustained load, then none: replicas, load and p99 over time, failed requests."""
    from devtools.bench_autoscale import bench_autoscale

    s = settings_for(ctx)
    result = bench_autoscale(s, users, clients, log=console.print)
    write_json(json_out, result)
    out.print(f"{result['requests']} requests, {result['failed']} failed, replicas 1 → {result['max_replicas']} → "
              f"{result['final_replicas']}; results in {json_out}")


def retrain_cmd(ctx: typer.Context, data: Annotated[Optional[Path], typer.Option(help="Dataset directory.")] = None,
                archive: Annotated[Optional[Path], typer.Option(
                    help="Archived sessions (lantern archive --out); default: the dataset's sessions.")] = None,
                use_features: Annotated[bool, typer.Option(
                    "--features/--no-features", help="Point-in-time features from Feast (else joined in process).")] = True,
                workers: Annotated[Optional[int], typer.Option(min=1, help="Ray Train workers.")] = None,
                gpu: Annotated[Optional[bool], typer.Option("--gpu/--cpu", help="One GPU per worker.")] = None,
                epochs: Annotated[Optional[int], typer.Option(min=1)] = None,
                variant: Annotated[Optional[str], typer.Option()] = None,
                preset: Annotated[Optional[str], typer.Option()] = None,
                run_name: Annotated[Optional[str], typer.Option(help="Same name again = resume its last checkpoint.")] = None,
                registry: RegistryOpt = None,
                promote: Annotated[bool, typer.Option(help="Promote the new version if it beats the champion.")] = False,
                ray_address: AddressOpt = None):
    """Distributed retraining on Ray Train (DDP); the result becomes the next registry version."""
    from ray_jobs.cluster import connect, stop
    from ray_jobs.train import retrain_and_register

    s = settings_for(ctx, paths=dict(data=data), serve=dict(registry=registry),
                     train=dict(epochs=epochs, variant=variant, preset=preset),
                     retrain=dict(num_workers=workers, use_gpu=gpu, run_name=run_name))
    connect(resolve_ray_address(ray_address))
    try:
        result = retrain_and_register(s, archive, use_features, promote, log=console.print)
    finally:
        stop()
    out.print(json.dumps(result))


def bench_train_cmd(ctx: typer.Context, json_out: Annotated[Path, typer.Option("--json")] = Path("reports/bench_train.json"),
                    users: Annotated[int, typer.Option(help="Simulated users.")] = 5000,
                    epochs: Annotated[int, typer.Option(min=1)] = 6):
    """Samples/s of Ray Train (2 workers, DDP) vs the plain single-process loop, same data and epochs."""
    from devtools.bench_serve import bench_train

    s = settings_for(ctx)
    result = bench_train(s, users=users, epochs=epochs, log=console.print)
    write_json(json_out, result)
    out.print(f"results in {json_out}")
