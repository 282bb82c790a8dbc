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

from lantern.cli_common import ConfigOpt, console, out, settings_for
from lantern.errors import LanternError

app = typer.Typer(help="lantern — streaming scoring for survey-fusion models.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
bench_app = typer.Typer(help="Benchmarks that write JSON.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
features_app = typer.Typer(help="The Feast feature store (features/).", no_args_is_help=True)
app.add_typer(features_app, name="features")
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

    s = settings_for(ctx, simulate=dict(users=users, seed=seed, noise=noise, missing=missing, fatigue=fatigue),
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

    s = settings_for(ctx, paths=dict(data=data, models=out_dir),
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

    s = settings_for(ctx, paths=dict(data=data))
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

    s = settings_for(ctx, paths=dict(data=data), train=dict(epochs=epochs, preset=preset))
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

    s = settings_for(ctx, simulate=dict(users=users), train=dict(epochs=epochs))
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


def _register() -> None:
    from lantern import cli_features, cli_ray, cli_streaming

    features_app.command("apply")(cli_features.features_apply)
    features_app.command("materialize")(cli_features.features_materialize)
    features_app.command("training-set")(cli_features.features_training_set)
    bench_app.command("features")(cli_features.bench_features_cmd)
    for command in (cli_streaming.broker, cli_streaming.replay, cli_streaming.score, cli_streaming.archive,
                    cli_ray.register, cli_ray.promote, cli_ray.rollback):
        app.command()(command)
    app.command("serve")(cli_ray.serve_cmd)
    app.command("retrain")(cli_ray.retrain_cmd)
    bench_app.command("serve")(cli_ray.bench_serve_cmd)
    bench_app.command("train")(cli_ray.bench_train_cmd)


_register()


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
