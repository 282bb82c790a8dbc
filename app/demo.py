"""`make demo` / `lantern demo`: the whole system, end to end, on one machine.

embedded broker → simulate → Feast apply + materialize (SQLite) → Feast point-in-time training
set → Ray Train (LANTERN, ``retrain.num_workers`` CPU workers) → registry (register + promote) →
every user's external encoding by the champion stored online → Ray Serve (``LanternScorer`` +
``StreamConsumer`` apps) → replay completed sessions (with a few
broken ones) through Kafka → scores to the scores topic and, through the score sink, to Feast →
the quality ablation on the same split → ``reports/demo/`` (summary.md, demo.json, plots).

Everything it starts — broker, Ray (and with it Serve and the consumers), the sink thread — is
stopped on the way out, also on Ctrl-C. Its working state lives under ``reports/demo/`` (Feast repo,
model registry, Ray Train storage) and is replaced on every run; the dataset goes to ``paths.data``.
"""

from __future__ import annotations

import os
import shutil
import time
import warnings
from contextlib import ExitStack
from dataclasses import replace
from datetime import datetime, timezone

from app.cli_common import console
from lantern.settings import LanternSettings, local_run
from ray_jobs.cluster import quiet, start_local
from ray_jobs.cluster import stop as stop_ray


class Steps:
    """Numbered step headings and how long each took."""

    def __init__(self, total: int):
        self.total, self.n, self.seconds, self._name, self._t = total, 0, {}, None, 0.0

    def __call__(self, name: str) -> None:
        self.done()
        self.n += 1
        self._name, self._t = name, time.perf_counter()
        console.rule(f"{self.n}/{self.total} {name}")

    def done(self) -> None:
        if self._name is not None:
            self.seconds[self._name] = time.perf_counter() - self._t
            self._name = None


def run_demo(settings: LanternSettings, bootstrap: str | None) -> dict:
    import feast  # noqa: F401 - imported first: Feast resets the DeprecationWarning filter on import

    warnings.filterwarnings("ignore", category=DeprecationWarning)  # libraries' notices, not the demo's
    s = local_run(settings, settings.paths.reports / "demo")
    root = s.paths.reports / "demo"
    shutil.rmtree(root, ignore_errors=True)  # a fresh run: registry, checkpoints, report
    root.mkdir(parents=True)
    steps = Steps(7)
    t0 = time.perf_counter()
    with ExitStack() as stack:
        from devtools.broker import launch_broker

        steps("broker")
        broker = stack.enter_context(launch_broker(bootstrap))
        kafka = replace(s.kafka, bootstrap=broker.bootstrap)
        console.print(f"{broker.kind} broker at {broker.bootstrap}")

        steps("simulate")
        ds = _simulate(s)

        steps("feature store")
        store = _fill_feature_store(s, ds)

        steps("train with Ray Train")
        start_local(stack)
        trained, result = _train(s, ds, store)

        steps("deploy on Ray Serve")
        _store_encodings(s, store)
        _serve(s)

        steps("stream: replay → score → Kafka + Feast")
        streamed = _stream(s, kafka, ds, store)

        steps("quality ablation")
        from lantern.dataset.oracle import simulate_truth
        from model.ablation import ABLATION, ablate

        stop_ray()  # frees the CPUs for the single-process fits
        ablation = ablate(result.prepared, ds, s.train, ABLATION, trained={"lantern": trained}, log=console.print,
                          truth=simulate_truth(s.simulate))

        steps.done()
        console.rule("report")
        from app.report import print_summary, write_report

        summary = _summary(s, broker, ds, result, streamed, ablation, steps.seconds, time.perf_counter() - t0)
        paths = write_report(root, summary, ablation, streamed)
        print_summary(summary, ablation)
        console.print(f"report: {', '.join(str(p) for p in paths)}")
    return summary


def _simulate(s: LanternSettings):
    from lantern.dataset.io import load_dataset, save_dataset
    from lantern.dataset.simulate import simulate

    save_dataset(simulate(s.simulate), s.paths.data)
    ds = load_dataset(s.paths.data)
    console.print(f"{s.simulate.users} users, {ds.sessions.num_rows} sessions, {ds.questionnaire.n_keys} "
                  f"response keys, sources {', '.join(sorted(ds.external))} → {s.paths.data}")
    return ds


def _fill_feature_store(s: LanternSettings, ds):
    from features.online import fill_online

    store, views, users = fill_online(s.features, ds)
    console.print(f"applied {views} source views + FeatureService lantern_v1 to {s.features.repo}; "
                  f"materialized into {s.features.online}, {users} user vectors online")
    return store


def _train(s: LanternSettings, ds, store):
    """Feast point-in-time training set → Ray Train → register → promote. Returns the model with its
    history (for the ablation) and the RetrainResult (its prepared split)."""
    from features.store import point_in_time_sources
    from ray_jobs.train import register_retrained, retrain

    t = time.perf_counter()
    sources = point_in_time_sources(store, ds.sessions)
    console.print(f"Feast point-in-time training set: {ds.sessions.num_rows} sessions in {time.perf_counter() - t:.0f} s")
    result = retrain(ds, s.train, s.retrain, sources=sources, log=console.print, progress=True)
    register_retrained(s, ds, result, promote=True, log=console.print)
    history = {"history": result.history, "best_val_f1": result.best_val_f1,
               "best_val_loss": result.best["val_loss"], "multi_threshold": result.best["multi_threshold"],
               "seconds": result.seconds, "trainer": f"Ray Train, {s.retrain.num_workers} workers"}
    return (result.model, history), result


def _store_encodings(s: LanternSettings, store) -> None:
    """The champion's external encoding of every user, stored online: the replicas read it."""
    from features.online import encode_online, source_users
    from model.registry import Registry

    t = time.perf_counter()
    registry = Registry(s.serve.registry)
    version = registry.champion()
    users = encode_online(store, registry.load(version), version, source_users(store, s.features))
    console.print(f"stored {users} users' external encodings by {version} in {time.perf_counter() - t:.1f} s")


def _serve(s: LanternSettings) -> None:
    from ray_jobs.serve import deploy, feature_store_options

    deploy(s.serve, features=feature_store_options(s.features), scoring=s.scoring, http=False)
    quiet()  # Serve sets its own logger up when it starts
    console.print(f"Serve app {s.serve.app_name!r}: champion from {s.serve.registry}, "
                  f"{s.serve.min_replicas}–{s.serve.max_replicas} replicas")


def _stream(s: LanternSettings, kafka, ds, store):
    from app.demo_stream import check_feast, stream, with_bad_events
    from streaming.events import in_completion_order, sessions_to_events

    sessions = in_completion_order(ds.sessions)
    sessions = sessions.slice(max(0, sessions.num_rows - s.demo.sessions))  # the latest completions
    events, ids = with_bad_events(sessions_to_events(sessions), s.demo.bad_events, s.simulate.seed)
    console.print(f"replaying {sessions.num_rows} sessions + {s.demo.bad_events} broken events at "
                  f"{s.demo.rate:g}/s to {kafka.input_topic}")
    result = stream(kafka, events, ids, store, s.demo.consumers, s.serve.app_name, s.demo.rate)
    result.feast_check = check_feast(store, result.scored)
    return result


def _summary(s, broker, ds, result, streamed, ablation, step_seconds, total_s) -> dict:
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} cores, CPU only",
        "broker": broker.kind, "users": s.simulate.users, "sessions": ds.sessions.num_rows,
        "response_keys": ds.questionnaire.n_keys,
        "training": {"trainer": f"Ray Train, {s.retrain.num_workers} workers", "epochs": len(result.history),
                     "best_val_f1": result.best_val_f1, "best_val_loss": result.best["val_loss"],
                     "seconds": result.seconds},
        "stream": streamed.summary(), "replay_rate_per_s": s.demo.rate,
        "steps_s": step_seconds, "total_s": total_s,
        "ablation_epochs": s.train.epochs,
    }
