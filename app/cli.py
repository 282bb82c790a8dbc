"""The `lantern` command: one entry point for every job.

Exit codes: 0 ok, 1 unexpected lantern error, 2 bad flag / setting / path, 3 data breaks the
contract, 4 model problem, 6 `lantern status` found a component down. Errors print one line saying what was wrong and what to do.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from app.cli_common import BootstrapOpt, ConfigOpt, console, out, settings_for, write_json
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
    from lantern.dataset.oracle import simulate_truth
    from lantern.dataset.simulate import simulate as run

    s = settings_for(ctx, simulate=dict(users=users, seed=seed, noise=noise, missing=missing, fatigue=fatigue),
                  paths=dict(data=out_dir))
    t0 = time.perf_counter()
    ds = run(s.simulate)
    save_dataset(ds, s.paths.data)
    simulate_truth(s.simulate).save(s.paths.data)  # the oracle and never-presented answers, for evaluation
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
    """Train one variant (single process), keeping the epoch with the lowest validation log loss."""
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
    out.print(f"best validation log loss {history['best_val_loss']:.4f} (F1 {history['best_val_f1']:.4f}, "
              f"multi-select threshold {history['multi_threshold']:.3f}) at epoch {history['best_epoch']} of "
              f"{len(history['history'])} "
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
    from model.checkpoint import load_model, tuned_threshold
    from model.evaluate import evaluate as run
    from model.train import TrainConfig, prepare

    s = settings_for(ctx, paths=dict(data=data))
    loaded = load_model(model)
    ds = load_dataset(s.paths.data)
    if ds.questionnaire.content_hash != loaded.questionnaire.content_hash:
        raise LanternError(f"{model} was trained on another questionnaire than {s.paths.data}'s")
    tc = TrainConfig(**loaded.meta["training"]["config"])
    prep = prepare(ds, tc, features=loaded.features)
    report = run(loaded.model, prep.test, ds.questionnaire, prep.rare, [x.name for x in loaded.features.sources],
                 multi_threshold=tuned_threshold(loaded.meta))
    if json_out:
        write_json(json_out, report, default=float)
    m = report["micro"]
    out.print(f"{report['variant']}: log loss {report['log_loss']:.4f}, F1 {m['f1']:.4f} (P {m['precision']:.4f}, "
              f"R {m['recall']:.4f}), rare F1 {report['rare']['f1']:.4f}, frequent F1 {report['frequent']['f1']:.4f}, "
              f"AUC (macro) {report['auc_macro']:.4f}, ECE {report['ece']:.4f}"
              + (f"; report in {json_out}" if json_out else ""))


@bench_app.command("quality")
def bench_quality(
    ctx: typer.Context,
    data: Annotated[Optional[Path], typer.Option(help="Dataset directory.")] = None,
    json_out: Annotated[Path, typer.Option("--json", help="Where to write the results.")] = Path(
        "reports/bench_quality.json"),
    epochs: Annotated[Optional[int], typer.Option(min=1)] = None,
    preset: Annotated[Optional[str], typer.Option()] = None,
    placebo: Annotated[bool, typer.Option(help="Give every user's external values to another user first "
                                               "(the context then says nothing: LANTERN must score as the survey "
                                               "alone does).")] = False,
):
    """Train and evaluate every variant plus the logistic baseline on one split; print the ablation."""
    from lantern.dataset.io import load_dataset
    from lantern.dataset.oracle import Truth
    from lantern.dataset.placebo import placebo as shuffled
    from model.ablation import print_table, run_ablation, write_result

    s = settings_for(ctx, paths=dict(data=data), train=dict(epochs=epochs, preset=preset))
    ds = load_dataset(s.paths.data)
    result = run_ablation(shuffled(ds) if placebo else ds, s.train, log=console.print, truth=Truth.load(s.paths.data),
                          root=None if placebo else s.paths.data)
    result["placebo"] = placebo
    write_result(result, json_out)
    print_table(result, out)
    out.print(f"results in {json_out} ({result['seconds']:.0f} s)")


@bench_app.command("robustness")
def bench_robustness(
    ctx: typer.Context,
    json_out: Annotated[Path, typer.Option("--json", help="Where to write the map (the heat map beside it, .png).")] = Path(
        "reports/bench_robustness.json"),
    users: Annotated[int, typer.Option(min=200, help="Simulated users of every cell but the large one.")] = 5000,
    big_users: Annotated[int, typer.Option(min=200, help="Users of the large cell.")] = 35_000,
    cells: Annotated[Optional[str], typer.Option(help="Comma-separated cell names (default: all).")] = None,
    epochs: Annotated[Optional[int], typer.Option(min=1)] = None,
):
    """Every variant's log loss relative to survey_only, with its interval, as the simulator's external
    noise, missingness and irrelevant sources grow, under the placebo, and at two training sizes."""
    from app.robustness_plot import robustness_heatmap
    from model.robustness import CELLS, robustness

    s = settings_for(ctx, train=dict(epochs=epochs))
    chosen = CELLS if cells is None else [c for c in CELLS if c.name in {n.strip() for n in cells.split(",")}]
    if not chosen:
        raise typer.BadParameter(f"no such cells; choose among {', '.join(c.name for c in CELLS)}", param_hint="--cells")
    result = robustness(s.train, users, big_users, chosen, log=console.print)
    plot = robustness_heatmap(result, json_out.with_suffix(".png"))
    result["plot"] = str(plot)
    write_json(json_out, result, default=float)
    out.print(f"map in {json_out}, heat map {plot} ({result['seconds']:.0f} s)")


@bench_app.command("ceiling")
def bench_ceiling(
    ctx: typer.Context,
    data: Annotated[Optional[Path], typer.Option(help="A simulated dataset directory (with truth/).")] = None,
    json_out: Annotated[Path, typer.Option("--json", help="Where to write the results.")] = Path(
        "reports/bench_ceiling.json"),
    chains: Annotated[int, typer.Option(min=1, help="Markov chains per session.")] = 4,
    burn: Annotated[int, typer.Option(min=0, help="Steps discarded first.")] = 300,
    samples: Annotated[int, typer.Option(min=1, help="Steps kept (every third averaged).")] = 300,
):
    """The evidence-given Bayes oracle on bench quality's test split: the answers' posterior from the
    visible answers alone and with the external rows. `bench quality` then reports each variant's
    share of the log-loss gain the context can bring at best."""
    from lantern.dataset.io import load_dataset
    from lantern.dataset.oracle import Truth
    from lantern.dataset.posterior import Chains
    from model.ceiling import compute_ceiling

    s = settings_for(ctx, paths=dict(data=data))
    result = compute_ceiling(s.paths.data, load_dataset(s.paths.data), Truth.load(s.paths.data), s.train,
                             Chains(chains, burn, samples), log=console.print)
    write_json(json_out, result, default=float)
    for name, r in result["models"].items():
        out.print(f"{name:>17}: log loss {r['log_loss']:.4f}, rare keys {r['rare_log_loss']:.4f}")
    out.print(f"results in {json_out} ({result['seconds']:.0f} s)")


@app.command()
def demo(
    ctx: typer.Context,
    users: Annotated[Optional[int], typer.Option(min=100, help="Simulated users (demo.users).")] = None,
    epochs: Annotated[Optional[int], typer.Option(min=1, help="Epochs, Ray Train and ablation (demo.epochs).")] = None,
    sessions: Annotated[Optional[int], typer.Option(min=1, help="Latest sessions replayed (demo.sessions).")] = None,
    rate: Annotated[Optional[float], typer.Option(min=1, help="Completions offered per second (demo.rate).")] = None,
    bootstrap: BootstrapOpt = None,
):
    """The whole system on embedded defaults: broker → simulate → Feast → Ray Train → Ray Serve →
    replay through Kafka → scores to Kafka and Feast → ablation → reports/demo/."""
    from app.cli_common import kafka_overrides
    from app.demo import run_demo

    s = settings_for(ctx, demo=dict(users=users, epochs=epochs, sessions=sessions, rate=rate))
    run_demo(s, kafka_overrides(bootstrap)["bootstrap"])  # None: the demo starts a broker


@app.command()
def status(
    ctx: typer.Context,
    bootstrap: BootstrapOpt = None,
    registry: Annotated[Optional[Path], typer.Option("--registry", help="Registry directory (serve.registry).")] = None,
    ray_address: Annotated[Optional[str], typer.Option("--ray-address", help="Ray cluster (default: $RAY_ADDRESS, "
                                                       "else a running local one).")] = None,
):
    """Broker, topics and consumer lag; Feast store; model registry; Ray Serve app and served version.
    Exit code 6 when any of them is down or missing."""
    from rich.table import Table

    from app.cli_common import kafka_overrides, resolve_ray_address
    from app.status import feast_status, kafka_status, registry_status, serve_status

    s = settings_for(ctx, kafka=kafka_overrides(bootstrap), serve=dict(registry=registry))
    sections = {"Kafka": kafka_status(s.kafka), "Feast": feast_status(s.features),
                "registry": registry_status(s.serve.registry),
                "Ray Serve": serve_status(resolve_ray_address(ray_address), s.serve.app_name)}
    table = Table(title="lantern status", show_lines=False)
    for col in ("component", "state", "what", "detail"):
        table.add_column(col, overflow="fold")
    for name, sec in sections.items():
        table.add_row(f"[bold]{name}[/bold]", "[green]ok[/green]" if sec["ok"] else "[red]down[/red]", "", sec["detail"])
        for kind, what, detail in sec["rows"]:
            table.add_row("", kind, what, detail)
    out.print(table)
    if not all(sec["ok"] for sec in sections.values()):
        raise typer.Exit(6)


@app.command()
def top(
    url: Annotated[list[str], typer.Option("--url", help="A Prometheus endpoint to read (repeat for several: "
                                                         "lantern score / archive / sink-scores, Ray's).")],
    interval: Annotated[float, typer.Option(min=0.1, help="Seconds between refreshes.")] = 2.0,
    once: Annotated[bool, typer.Option("--once", help="Print one screen and exit.")] = False,
):
    """A live view of the stream from its metrics: rates, lag, p50/p99, dead letters, replicas, version."""
    from app.top import run_top

    try:
        run_top(url, interval, once, out)
    except KeyboardInterrupt:
        pass


def _register() -> None:
    from app import cli_data, cli_features, cli_ray, cli_streaming

    app.command("import")(cli_data.import_cmd)

    features_app.command("apply")(cli_features.features_apply)
    features_app.command("materialize")(cli_features.features_materialize)
    features_app.command("encode")(cli_features.features_encode)
    features_app.command("training-set")(cli_features.features_training_set)
    bench_app.command("features")(cli_features.bench_features_cmd)
    for command in (cli_streaming.broker, cli_streaming.replay, cli_streaming.score, cli_streaming.archive,
                    cli_ray.register, cli_ray.promote, cli_ray.rollback):
        app.command()(command)
    app.command("sink-scores")(cli_streaming.sink_scores)
    app.command("serve")(cli_ray.serve_cmd)
    app.command("retrain")(cli_ray.retrain_cmd)
    bench_app.command("serve")(cli_ray.bench_serve_cmd)
    bench_app.command("train")(cli_ray.bench_train_cmd)
    bench_app.command("autoscale")(cli_ray.bench_autoscale_cmd)
    bench_app.command("model")(cli_ray.bench_model_cmd)
    bench_app.command("stream")(cli_streaming.bench_stream_cmd)
    bench_app.command("gpu")(cli_streaming.bench_gpu_cmd)


_register()


INTERRUPTED = 130  # the shell's code for Ctrl-C; Typer turns KeyboardInterrupt into SystemExit(130)


def main() -> None:
    try:
        app()
    except LanternError as exc:
        console.print(f"[red]error:[/red] {exc}")
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        _exit_after_interrupt()
    except SystemExit as exc:
        if exc.code == INTERRUPTED:
            _exit_after_interrupt()
        raise


def _exit_after_interrupt() -> None:
    """Exit without finalizing the interpreter or running C ``atexit`` handlers. Whatever the
    command started was stopped while its context managers unwound, but an interrupt that lands
    inside ``ray.init`` leaves the driver's core worker behind, its io thread still recording
    metrics; Ray's ``atexit`` handler then destroys that core worker under the thread, and the
    demo died with SIGSEGV instead of 130 (2 of 16 runs of its Ctrl-C test beside another Ray
    test; core dump: ``TaskManager::RecordMetrics`` against ``CoreWorkerProcess::HandleAtExit``)."""
    import logging
    import os

    console.print("[yellow]interrupted[/yellow]")
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(INTERRUPTED)


if __name__ == "__main__":
    main()
