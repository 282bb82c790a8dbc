"""The `lantern` command: one entry point for every job.

Exit codes: 0 ok, 1 unexpected lantern error, 2 bad flag / setting / path, 3 data breaks the
contract, 4 model problem. Errors print one line saying what was wrong and what to do.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from lantern.errors import LanternError
from lantern.settings import LanternSettings, load_settings

app = typer.Typer(help="lantern — streaming scoring for survey-fusion models.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
bench_app = typer.Typer(help="Benchmarks that write JSON.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
features_app = typer.Typer(help="The Feast feature store (features/).", no_args_is_help=True)
app.add_typer(features_app, name="features")
console = Console(stderr=True)
out = Console(width=None if sys.stdout.isatty() else 160)  # logs and pipes get the whole table

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="TOML or YAML settings file.")]


def _settings(ctx: typer.Context, **overrides) -> LanternSettings:
    """Settings for this process: flags > LANTERN_* env > --config file > defaults."""
    settings = load_settings(ctx.obj, overrides)
    import torch

    torch.set_num_threads(settings.threads or torch.get_num_threads())
    return settings


@app.callback()
def _root(ctx: typer.Context, config: ConfigOpt = None):
    ctx.obj = config


# ---- data ------------------------------------------------------------------------------------
@app.command()
def simulate(
    ctx: typer.Context,
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Dataset directory to write.")] = None,
    users: Annotated[Optional[int], typer.Option(min=10, help="Number of users.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed (same seed, same data).")] = None,
    noise: Annotated[Optional[float], typer.Option(min=0, help="Scale of noise in external sources.")] = None,
    missing: Annotated[Optional[float], typer.Option(min=0, help="Scale of missing users/values.")] = None,
    fatigue: Annotated[Optional[float], typer.Option(min=0, help="Scale of early stopping.")] = None,
):
    """Simulate a population answering the adaptive survey, plus external sources."""
    from lantern.dataset.io import save_dataset
    from lantern.dataset.simulate import simulate as run

    s = _settings(ctx, simulate=dict(users=users, seed=seed, noise=noise, missing=missing, fatigue=fatigue),
                  paths=dict(data=out_dir))
    t0 = time.perf_counter()
    ds = run(s.simulate)
    save_dataset(ds, s.paths.data)
    out.print(f"wrote {ds.sessions.num_rows} sessions of {s.simulate.users} users, "
              f"{len(ds.questionnaire.questions)} questions, {ds.questionnaire.n_keys} response keys, "
              f"sources {sorted(ds.external)} to {s.paths.data} in {time.perf_counter() - t0:.1f} s")


@app.command()
def validate(data: Annotated[Path, typer.Argument(help="Dataset directory.")]):
    """Check a dataset directory against the data contract (docs/data.md)."""
    from lantern.dataset.io import load_dataset

    ds = load_dataset(data)
    out.print(f"ok: {ds.sessions.num_rows} sessions, {len(ds.questionnaire.questions)} questions, "
              f"sources {sorted(ds.external)}")


# ---- model -----------------------------------------------------------------------------------
@app.command()
def train(
    ctx: typer.Context,
    data: Annotated[Optional[Path], typer.Option(help="Dataset directory.")] = None,
    variant: Annotated[Optional[str], typer.Option(help="lantern | survey_only | external_only | "
                                                        "early_fusion | logistic")] = None,
    preset: Annotated[Optional[str], typer.Option(help="small (CPU) | paper (~50M params, GPU).")] = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Models directory.")] = None,
    epochs: Annotated[Optional[int], typer.Option(min=1)] = None,
    seed: Annotated[Optional[int], typer.Option()] = None,
    device: Annotated[Optional[str], typer.Option(help="auto | cpu | cuda")] = None,
    training_set: Annotated[Optional[Path], typer.Option(
        help="Training-set parquet from `lantern features training-set` (else joined from --data).")] = None,
):
    """Train one variant (single process) with early stopping on validation F1."""
    from lantern.dataset.io import load_dataset
    from model.checkpoint import save_model
    from model.train import fit, prepare

    s = _settings(ctx, paths=dict(data=data, models=out_dir),
                  train=dict(variant=variant, preset=preset, epochs=epochs, seed=seed, device=device))
    ds = load_dataset(s.paths.data)
    sources = None
    if training_set is not None:  # features joined by Feast instead of the in-process PIT join
        from dataclasses import replace as with_sessions

        from features.store import read_training_set

        sessions, sources = read_training_set(training_set)
        ds = with_sessions(ds, sessions=sessions)
    prep = prepare(ds, s.train, sources=sources)
    model, history = fit(prep, s.train)
    path = save_model(s.paths.models / f"{s.train.variant}-{s.train.preset}", model, prep.features,
                      ds.questionnaire, {"training": history, "data": str(s.paths.data)})
    out.print(f"best validation F1 {history['best_val_f1']:.4f} after {len(history['history'])} epochs "
              f"({history['seconds']:.0f} s); model saved to {path}")


@app.command()
def evaluate(
    ctx: typer.Context,
    model: Annotated[Path, typer.Option(help="Model directory written by `lantern train`.")],
    data: Annotated[Optional[Path], typer.Option(help="Dataset directory.")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the report here.")] = None,
):
    """Evaluate a model on the held-out users' hidden questions."""

    from lantern.dataset.io import load_dataset
    from model.checkpoint import load_model
    from model.evaluate import evaluate as run
    from model.train import TrainConfig, prepare

    s = _settings(ctx, paths=dict(data=data))
    loaded = load_model(model)
    ds = load_dataset(s.paths.data)
    if ds.questionnaire.content_hash != loaded.questionnaire.content_hash:
        raise LanternError(f"{model} was trained on another questionnaire than {s.paths.data}'s")
    tc = TrainConfig(**loaded.meta["training"]["config"])
    prep = prepare(ds, tc, features=loaded.features)
    report = run(loaded.model, prep.test, ds.questionnaire, prep.rare, [x.name for x in loaded.features.sources])
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report, indent=1, default=float))
    m = report["micro"]
    out.print(f"{report['variant']}: F1 {m['f1']:.4f} (P {m['precision']:.4f}, R {m['recall']:.4f}), "
              f"rare F1 {report['rare']['f1']:.4f}, frequent F1 {report['frequent']['f1']:.4f}, "
              f"AUC {report['auc']:.4f}, ECE {report['ece']:.4f}" + (f"; report in {json_out}" if json_out else ""))


@bench_app.command("quality")
def bench_quality(
    ctx: typer.Context,
    data: Annotated[Optional[Path], typer.Option(help="Dataset directory.")] = None,
    json_out: Annotated[Path, typer.Option("--json", help="Where to write the results.")] = Path(
        "reports/bench_quality.json"),
    epochs: Annotated[Optional[int], typer.Option(min=1)] = None,
    preset: Annotated[Optional[str], typer.Option()] = None,
):
    """Train and evaluate every variant plus the logistic baseline on one split; print the ablation."""
    from lantern.dataset.io import load_dataset
    from model.ablation import print_table, run_ablation, write_result

    s = _settings(ctx, paths=dict(data=data), train=dict(epochs=epochs, preset=preset))
    result = run_ablation(load_dataset(s.paths.data), s.train, log=console.print)
    write_result(result, json_out)
    print_table(result, out)
    out.print(f"results in {json_out} ({result['seconds']:.0f} s)")


@app.command()
def demo(
    ctx: typer.Context,
    users: Annotated[Optional[int], typer.Option(min=100)] = None,
    epochs: Annotated[Optional[int], typer.Option(min=1)] = None,
):
    """The main job on embedded defaults: simulate → train every variant → evaluate → ablation table."""
    from lantern.dataset.io import load_dataset, save_dataset
    from lantern.dataset.simulate import simulate as run_sim
    from model.ablation import print_table, run_ablation, write_result

    s = _settings(ctx, simulate=dict(users=users), train=dict(epochs=epochs))
    t0 = time.perf_counter()
    console.rule("1/3 simulate")
    save_dataset(run_sim(s.simulate), s.paths.data)
    ds = load_dataset(s.paths.data)
    console.print(f"{ds.sessions.num_rows} sessions, {ds.questionnaire.n_keys} response keys → {s.paths.data}")
    console.rule("2/3 train and evaluate every variant")
    result = run_ablation(ds, s.train, log=console.print)
    console.rule("3/3 results")
    path = s.paths.reports / "demo" / "bench_quality.json"
    write_result(result, path)
    print_table(result, out)
    out.print(f"demo done in {time.perf_counter() - t0:.0f} s; results in {path}")


# ---- features ----------------------------------------------------------------------------------
RepoOpt = Annotated[Optional[Path], typer.Option("--repo", help="Feature repo directory (default features/).")]
OnlineOpt = Annotated[Optional[str], typer.Option("--online", help="sqlite | redis")]


@features_app.command("apply")
def features_apply(ctx: typer.Context, data: Annotated[Optional[Path], typer.Option(help="Dataset directory.")] = None,
                   repo: RepoOpt = None, online: OnlineOpt = None):
    """Pack the dataset's external sources and register the feature repo (feast apply)."""
    from features.store import apply, open_store
    from lantern.dataset.io import load_dataset

    s = _settings(ctx, paths=dict(data=data), features=dict(repo=repo, online=online))
    layouts = apply(open_store(s.features), load_dataset(s.paths.data), s.features)
    out.print(f"applied {len(layouts)} feature views ({', '.join(x.name for x in layouts)}), FeatureService "
              f"lantern_v1, the lantern_scores push view and the lantern_v1_vector view to {s.features.repo}")


@features_app.command("materialize")
def features_materialize(ctx: typer.Context, repo: RepoOpt = None, online: OnlineOpt = None):
    """Load the last TTL window of every source online, then precompute each user's vector."""
    from features.lookup import materialize_online
    from features.store import open_store

    s = _settings(ctx, features=dict(repo=repo, online=online))
    t0 = time.perf_counter()
    users = materialize_online(open_store(s.features), s.features)
    out.print(f"materialized into the {s.features.online} online store, {users} user vectors precomputed, "
              f"in {time.perf_counter() - t0:.1f} s")


@features_app.command("training-set")
def features_training_set(
    ctx: typer.Context,
    data: Annotated[Optional[Path], typer.Option(help="Dataset directory (its sessions are the entity rows).")] = None,
    out_path: Annotated[Path, typer.Option("--out", help="Parquet file to write.")] = Path("data/training_set.parquet"),
    repo: RepoOpt = None,
):
    """Point-in-time correct training set: every session joined with the features known at completed_at."""
    from features.store import open_store, write_training_set
    from lantern.dataset.io import load_dataset

    s = _settings(ctx, paths=dict(data=data), features=dict(repo=repo))
    t0 = time.perf_counter()
    table = write_training_set(open_store(s.features), load_dataset(s.paths.data).sessions, out_path)
    out.print(f"wrote {table.num_rows} sessions with {table.num_columns - 4} packed feature columns to {out_path} "
              f"in {time.perf_counter() - t0:.1f} s")


@bench_app.command("features")
def bench_features_cmd(
    ctx: typer.Context,
    data: Annotated[Optional[Path], typer.Option(help="Dataset directory.")] = None,
    json_out: Annotated[Path, typer.Option("--json")] = Path("reports/bench_features.json"),
    stores: Annotated[str, typer.Option(help="Comma-separated: sqlite,redis")] = "sqlite,redis",
):
    """Online lookup rows/s: Feast SDK vs lantern's path, batches 1/64/256/1024, SQLite and Redis."""
    from features.bench import bench_features
    from lantern.dataset.io import load_dataset

    s = _settings(ctx, paths=dict(data=data))
    result = bench_features(load_dataset(s.paths.data), tuple(stores.split(",")), log=console.print)
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps(result, indent=1))
    out.print(f"results in {json_out}")


# ---- streaming -------------------------------------------------------------------------------
@app.command()
def broker():
    """Start a broker for local use and print its bootstrap address; Ctrl-C or SIGTERM stops it.

    KAFKA_BOOTSTRAP set → that broker is used; a reachable Docker engine → Apache Kafka via
    testcontainers; otherwise the embedded Tansu broker (memory-only) on a free loopback port."""
    import os
    import signal
    import threading

    from streaming.broker import launch_broker

    with launch_broker(os.environ.get("KAFKA_BOOTSTRAP")) as b:
        print(b.bootstrap, flush=True)  # stdout: the address alone, for scripts
        console.print(f"{b.kind} broker at {b.bootstrap}" + (f" (log {b.log})" if b.log else ""))
        if b.kind == "external":
            return
        stopped = threading.Event()
        # both explicitly: a process started in the background inherits SIGINT as *ignored*
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stopped.set())
        while not stopped.wait(0.5):
            pass
    console.print("broker stopped")


BootstrapOpt = Annotated[Optional[str], typer.Option("--bootstrap", help="Kafka HOST:PORT (default: "
                                                     "$KAFKA_BOOTSTRAP, else settings kafka.bootstrap).")]


def _kafka_overrides(bootstrap: str | None) -> dict:
    import os

    return {"bootstrap": bootstrap or os.environ.get("KAFKA_BOOTSTRAP")}


@app.command()
def replay(
    ctx: typer.Context,
    data: Annotated[Optional[Path], typer.Option(help="Dataset directory whose sessions are replayed.")] = None,
    bootstrap: BootstrapOpt = None,
    rate: Annotated[Optional[float], typer.Option(min=0.1, help="Events per second (default: as fast as possible).")] = None,
    limit: Annotated[Optional[int], typer.Option(min=1, help="Replay only the first N sessions.")] = None,
):
    """Replay a dataset's sessions as completion events, in completion order, rate-limited."""
    import pyarrow.compute as pc

    from lantern.dataset.io import load_dataset
    from streaming.events import sessions_to_events
    from streaming.kafka_io import replay as run

    s = _settings(ctx, paths=dict(data=data), kafka=_kafka_overrides(bootstrap))
    sessions = load_dataset(s.paths.data).sessions
    sessions = sessions.take(pc.sort_indices(sessions, [("completed_at", "ascending")]))
    if limit:
        sessions = sessions.slice(0, limit)
    t0 = time.perf_counter()
    n = run(s.kafka, sessions_to_events(sessions), rate)
    out.print(f"replayed {n} sessions to {s.kafka.input_topic} in {time.perf_counter() - t0:.1f} s")


@app.command()
def score(
    ctx: typer.Context,
    model: Annotated[Path, typer.Option(help="Model directory (lantern train / the registry).")],
    bootstrap: BootstrapOpt = None,
    max_events: Annotated[Optional[int], typer.Option(min=1, help="Stop after this many events.")] = None,
    idle_exit: Annotated[Optional[float], typer.Option(help="Stop after this many idle seconds.")] = None,
    use_features: Annotated[bool, typer.Option("--features/--no-features",
                                               help="Look external context up in the feature store.")] = True,
    threshold: Annotated[float, typer.Option(min=0, max=1)] = 0.5,
):
    """Consume completed sessions, score them in micro-batches, produce scores (at-least-once)."""
    from model.checkpoint import load_model
    from model.train import resolve_device
    from streaming.kafka_io import KafkaScorer
    from streaming.scoring import BatchScorer, InProcessPredictor

    s = _settings(ctx, kafka=_kafka_overrides(bootstrap))
    device = resolve_device(s.train.device)
    loaded = load_model(model, device)
    client = None
    if use_features:
        from features.lookup import OnlineLookup
        from features.store import open_store

        client = OnlineLookup(open_store(s.features))
    version = loaded.meta.get("version", model.name)
    scorer = BatchScorer(loaded.questionnaire, loaded.features, InProcessPredictor(loaded.model, version, device),
                         client, threshold)
    stats = KafkaScorer(scorer, s.kafka, max_events, idle_exit, log=console.print).run()
    out.print(f"consumed {stats.consumed}, scored {stats.scored}, dead-lettered {stats.dead_lettered}, "
              f"degraded batches {stats.degraded_batches}, in {stats.batches} micro-batches")


@app.command()
def archive(
    ctx: typer.Context,
    out_dir: Annotated[Path, typer.Option("--out", help="Archive root (date=YYYY-MM-DD/part-*.parquet).")],
    data: Annotated[Optional[Path], typer.Option(help="Dataset directory whose questionnaire.json validates.")] = None,
    bootstrap: BootstrapOpt = None,
    max_events: Annotated[Optional[int], typer.Option(min=1)] = None,
    idle_exit: Annotated[Optional[float], typer.Option(help="Stop after this many idle seconds.")] = None,
):
    """Land validated sessions as date-partitioned parquet in the data contract: the retraining input."""
    from lantern.dataset.questionnaire import Questionnaire
    from lantern.dataset.schema import QUESTIONNAIRE_FILE
    from streaming.archive import run_archive

    s = _settings(ctx, paths=dict(data=data), kafka=_kafka_overrides(bootstrap))
    q = Questionnaire.load(s.paths.data / QUESTIONNAIRE_FILE)
    archived, skipped = run_archive(s.kafka, q, out_dir, max_events=max_events, idle_exit_s=idle_exit,
                                    log=console.print)
    out.print(f"archived {archived} sessions to {out_dir}; skipped {skipped} invalid events (see the DLQ)")


def main() -> None:
    try:
        app()
    except LanternError as exc:
        console.print(f"[red]error:[/red] {exc}")
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/yellow]")
        sys.exit(130)


if __name__ == "__main__":
    main()
