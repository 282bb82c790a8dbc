"""`lantern broker | replay | score | archive`: the Kafka side."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from app.cli_common import (
    BootstrapOpt,
    MetricsPortOpt,
    champion_dir,
    console,
    kafka_overrides,
    out,
    resolve_ray_address,
    settings_for,
    start_metrics,
    write_json,
)


def broker(keep_logs: Annotated[bool, typer.Option(help="Keep the embedded broker's log (and its run "
                                                           "directory) after it stops.")] = False):
    """Start a broker for local use and print its bootstrap address; Ctrl-C or SIGTERM stops it.

    KAFKA_BOOTSTRAP set → that broker is used; a reachable Docker engine → Apache Kafka via
    testcontainers; otherwise the embedded Tansu broker (memory-only) on a free loopback port,
    its log in a run directory removed with it unless --keep-logs."""
    import signal
    import threading

    from devtools.broker import launch_broker

    with launch_broker(os.environ.get("KAFKA_BOOTSTRAP"), keep_logs=keep_logs) as b:
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


def replay(
    ctx: typer.Context,
    data: Annotated[Optional[Path], typer.Option(help="Dataset directory whose sessions are replayed.")] = None,
    bootstrap: BootstrapOpt = None,
    rate: Annotated[Optional[float], typer.Option(min=0.1, help="Events per second (default: as fast as possible).")] = None,
    limit: Annotated[Optional[int], typer.Option(min=1, help="Replay only the first N sessions.")] = None,
):
    """Replay a dataset's sessions as completion events, in completion order, rate-limited."""
    from lantern.dataset.io import load_dataset
    from streaming.events import in_completion_order, sessions_to_events
    from streaming.kafka_io import replay as run

    s = settings_for(ctx, paths=dict(data=data), kafka=kafka_overrides(bootstrap))
    sessions = in_completion_order(load_dataset(s.paths.data).sessions)
    if limit:
        sessions = sessions.slice(0, limit)
    t0 = time.perf_counter()
    n = run(s.kafka, sessions_to_events(sessions), rate)
    out.print(f"replayed {n} sessions to {s.kafka.input_topic} in {time.perf_counter() - t0:.1f} s")


def score(
    ctx: typer.Context,
    model: Annotated[Optional[Path], typer.Option(
        help="Model directory (lantern train); default: the registry's champion (always with --serve).")] = None,
    bootstrap: BootstrapOpt = None,
    max_events: Annotated[Optional[int], typer.Option(min=1, help="Stop after this many events (per actor).")] = None,
    idle_exit: Annotated[Optional[float], typer.Option(help="Stop after this many idle seconds.")] = None,
    use_features: Annotated[bool, typer.Option("--features/--no-features",
                                               help="Look external context up in the feature store.")] = True,
    threshold: Annotated[Optional[float], typer.Option(
        min=0, max=1, help="Multi-select decision threshold (default: scoring.threshold, else the one tuned "
                           "when the model was trained).")] = None,
    abstain_below: Annotated[Optional[float], typer.Option(
        min=0, max=1, help="Predict no option for a single-select question whose most likely option is below "
                           "this probability (default: scoring.abstain_below, 0: never abstain).")] = None,
    use_serve: Annotated[bool, typer.Option("--serve", help="Send micro-batches to the Ray Serve app "
                                                            "(deployed from the registry if not running).")] = False,
    ray_actors: Annotated[int, typer.Option("--ray-actors", min=0, help="Run N consumers as Ray actors.")] = 0,
    ray_address: Annotated[Optional[str], typer.Option("--ray-address", help="Ray cluster (default: "
                                                       "$RAY_ADDRESS, else a local Ray).")] = None,
    metrics_port: MetricsPortOpt = None,
):
    """Consume completed sessions, score them in micro-batches, produce scores (at-least-once)."""
    from ray_jobs.scorers import local_scorer_factory, serve_scorer_factory
    from streaming.kafka_io import KafkaScorer

    s = settings_for(ctx, kafka=kafka_overrides(bootstrap), metrics=dict(port=metrics_port),
                     scoring=dict(threshold=threshold, abstain_below=abstain_below))
    if model is None and not use_serve:  # the Serve app loads the registry's champion itself
        model = champion_dir(s)
    if use_serve or ray_actors:
        from ray_jobs.cluster import connect

        connect(resolve_ray_address(ray_address))
    if use_serve:
        from ray import serve

        from ray_jobs.serve import deploy, feature_store_options

        if s.serve.app_name not in serve.status().applications:
            deploy(s.serve, features=feature_store_options(s.features) if use_features else None,
                   scoring=s.scoring, http=False)
        make = serve_scorer_factory(s.serve.app_name)
    else:
        make = local_scorer_factory(model, s.train.device, s.features, use_features, s.scoring)
    if ray_actors:
        from ray_jobs.actors import run_actors, total

        stats = total(run_actors(ray_actors, make, s.kafka, max_events, idle_exit))
    else:
        metrics, scorer = start_metrics(s), make()
        if metrics is not None and hasattr(scorer, "metrics"):  # a remote scorer's replicas record their own
            scorer.metrics = metrics
        stats = KafkaScorer(scorer, s.kafka, max_events, idle_exit, log=console.print, metrics=metrics).run()
    out.print(f"consumed {stats.consumed}, scored {stats.scored}, dead-lettered {stats.dead_lettered}, "
              f"degraded batches {stats.degraded_batches}, in {stats.batches} micro-batches")


def archive(
    ctx: typer.Context,
    out_dir: Annotated[Path, typer.Option("--out", help="Archive root (date=YYYY-MM-DD/part-*.parquet).")],
    data: Annotated[Optional[Path], typer.Option(help="Dataset directory whose questionnaire.json validates.")] = None,
    bootstrap: BootstrapOpt = None,
    max_events: Annotated[Optional[int], typer.Option(min=1)] = None,
    idle_exit: Annotated[Optional[float], typer.Option(help="Stop after this many idle seconds.")] = None,
    metrics_port: MetricsPortOpt = None,
):
    """Land validated sessions as date-partitioned parquet in the data contract: the retraining input."""
    from lantern.dataset.questionnaire import Questionnaire
    from lantern.dataset.schema import QUESTIONNAIRE_FILE
    from streaming.archive import run_archive

    s = settings_for(ctx, paths=dict(data=data), kafka=kafka_overrides(bootstrap), metrics=dict(port=metrics_port))
    q = Questionnaire.load(s.paths.data / QUESTIONNAIRE_FILE)
    archived, skipped = run_archive(s.kafka, q, out_dir, max_events=max_events, idle_exit_s=idle_exit,
                                    log=console.print, metrics=start_metrics(s))
    out.print(f"archived {archived} sessions to {out_dir}; skipped {skipped} invalid events (see the DLQ)")




def sink_scores(
    ctx: typer.Context,
    bootstrap: BootstrapOpt = None,
    max_events: Annotated[Optional[int], typer.Option(min=1)] = None,
    idle_exit: Annotated[Optional[float], typer.Option(help="Stop after this many idle seconds.")] = None,
    metrics_port: MetricsPortOpt = None,
):
    """Write the scores topic back to Feast's online `lantern_scores` view (latest score per user)."""
    from features.store import open_store
    from streaming.kafka_io import Stopper
    from streaming.score_sink import run_score_sink

    s = settings_for(ctx, kafka=kafka_overrides(bootstrap), metrics=dict(port=metrics_port))
    n = run_score_sink(s.kafka, open_store(s.features), Stopper(), max_events=max_events, idle_exit_s=idle_exit,
                       log=console.print, metrics=start_metrics(s))
    out.print(f"wrote {n} scores from {s.kafka.scores_topic} to the {s.features.online} online store")


def bench_stream_cmd(
    ctx: typer.Context,
    events: Annotated[int, typer.Option(min=1000, help="Completed sessions replayed at full rate.")] = 50_000,
    actors: Annotated[str, typer.Option(help="Comma-separated scorer-actor counts (Serve replicas + consumers).")]
    = "1,2",
    latency_seconds: Annotated[float, typer.Option(min=1, help="Paced replay per load level.")] = 20.0,
    preset: Annotated[str, typer.Option(help="Model preset: small | paper.")] = "small",
    paths: Annotated[str, typer.Option(help="Comma-separated model paths the pipeline runs: stored_external "
                                            "(each user's external encoding stored ahead), eager.")]
    = "stored_external,eager",
    json_out: Annotated[Path, typer.Option("--json")] = Path("reports/bench_stream.json"),
    bootstrap: BootstrapOpt = None,
):
    """End-to-end scored events/s through Kafka + Feast + Ray Serve, latency at 50 % / 90 % load,
    and each stage's own ceiling on the same messages, per model path."""
    import json

    from devtools.bench_stream import MODEL_PATHS, StreamBench, run_bench_stream

    chosen = tuple(p.strip() for p in paths.split(",") if p.strip())
    if not chosen or set(chosen) - set(MODEL_PATHS):
        raise typer.BadParameter(f"--paths takes some of {', '.join(MODEL_PATHS)}; got {paths!r}")
    s = settings_for(ctx)
    bench = StreamBench(events=events, actors=tuple(int(a) for a in actors.split(",")),
                        latency_seconds=latency_seconds, preset=preset, paths=chosen)
    result = run_bench_stream(s, bench, kafka_overrides(bootstrap)["bootstrap"], log=console.print)
    write_json(json_out, result)
    out.print(json.dumps({k: result[k] for k in ("model_path", "throughput_eps", "latency_ms", "ceilings_eps",
                                                "ratio_to_consume_ceiling", "runs", "scaling", "stages_by_path")},
                         indent=1))
    out.print(f"results in {json_out}")


def bench_gpu_cmd(
    ctx: typer.Context,
    dry_run: bool = typer.Option(False, "--dry-run", help="The same steps on the CPU at toy sizes (no GPU needed)."),
    json_out: Annotated[Path, typer.Option("--json")] = Path("reports/bench_gpu.json"),
    bootstrap: BootstrapOpt = None,
):
    """The GPU check: paper preset through bench serve (fp16, one GPU) and bench stream (num_gpus=1),
    fp16's F1 delta; one JSON, under 8 minutes on a GPU machine."""
    from devtools.gpu_check import run_gpu_check

    s = settings_for(ctx)
    result = run_gpu_check(s, dry_run, kafka_overrides(bootstrap)["bootstrap"], log=console.print)
    write_json(json_out, result, default=str)
    out.print(f"GPU check {'(dry run) ' if dry_run else ''}done in {result['seconds']['total']:.0f} s: "
              f"fp16 F1 delta {result['fp16']['f1_delta']:+.5f}; results in {json_out}")
