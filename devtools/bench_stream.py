"""`lantern bench stream`: the whole scoring stream at full rate, each stage measured beside it.

On embedded defaults (the embedded broker, SQLite Feast store, Ray Serve on this machine):

1. simulate ``events`` users, apply + materialize their features, fit the model one epoch and
   register it (throughput does not depend on the weights; a fitted model scores like one, and
   the number of predicted keys sizes each score record);
2. preload the completed-session events into an input topic at full rate;
3. stage ceilings on those same messages (devtools/stream_stages.py);
4. per scorer-actor count (``LanternScorer`` replicas, one ``StreamConsumer`` each): the
   consumers drain the preloaded topic; sustained throughput = scores after the first 5 %
   (warm-up) / the time they took, from the score records' timestamps;
5. with one actor, paced replays at 50 % and 90 % of that throughput: completion→score latency
   = score record timestamp − input record timestamp (the replayer's send time), p50 / p99.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
import warnings
from contextlib import ExitStack
from dataclasses import dataclass, replace
from datetime import datetime, timezone

import numpy as np

from lantern.settings import LanternSettings
from lantern.settings.kafka import KafkaConfig

WARMUP_FRACTION = 0.05
SESSION_ID_FIELD = b'"session_id":"'  # score records are compact JSON (streaming.events.score_bytes)


@dataclass(frozen=True)
class StreamBench:
    events: int = 50_000
    actors: tuple[int, ...] = (1, 2)
    loads: tuple[float, ...] = (0.5, 0.9)
    latency_seconds: float = 20.0  # of paced replay per load level
    preset: str = "small"
    paths: tuple[str, ...] = ("stored_external", "eager")  # model paths the pipeline runs (the first: top level)


MODEL_PATHS = ("eager", "stored_external")  # sources encoded per event; stored external encodings


class ScoreCollector:
    """Reads a scores topic from the start in a thread: (record timestamp ms, session id) of each."""

    def __init__(self, cfg: KafkaConfig, topic: str):
        self.cfg, self.topic = cfg, topic
        self.seen: list[tuple[int, bytes]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="score-collector", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from kafka import KafkaConsumer

        from streaming.kafka_io import assign_from_start

        consumer = KafkaConsumer(enable_auto_commit=False, **self.cfg.client_options())
        try:
            assign_from_start(consumer, self.topic)
            while not self._stop.is_set():
                for msgs in consumer.poll(timeout_ms=200).values():
                    self.seen += [(m.timestamp, _session_id(m.value)) for m in msgs]
        finally:
            consumer.close()

    def mark(self) -> int:
        """Where the next phase's scores start (every earlier phase's scores have arrived)."""
        return len(self.seen)

    def wait_for(self, count: int, start: int = 0, stall_s: float = 60.0) -> list[tuple[int, bytes]]:
        """Until ``count`` scores arrived after ``start`` (or none came for ``stall_s``). The wait
        only compares lengths: the pipeline it measures shares these cores."""
        last, changed = -1, time.monotonic()
        while (got := len(self.seen) - start) < count and time.monotonic() - changed <= stall_s:
            if got != last:
                last, changed = got, time.monotonic()
            time.sleep(0.1)
        return self.seen[start:]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def _session_id(value: bytes) -> bytes:
    start = value.index(SESSION_ID_FIELD) + len(SESSION_ID_FIELD)
    return value[start:value.index(b'"', start)]


def sustained_eps(stamps_ms: list[int]) -> float:
    """Scores per second after the first WARMUP_FRACTION of them."""
    stamps = np.sort(np.asarray(stamps_ms, np.int64))
    first = int(len(stamps) * WARMUP_FRACTION)
    span_s = (stamps[-1] - stamps[first]) / 1000
    return float((len(stamps) - 1 - first) / span_s) if span_s > 0 else float("nan")


def latency_figures(sent: dict[bytes, int], scored: list[tuple[int, bytes]]) -> dict:
    latency = np.array([ts - sent[sid] for ts, sid in scored if sid in sent], np.float64)
    return {"scored": int(len(latency)), "sent": len(sent),
            "p50": float(np.percentile(latency, 50)) if len(latency) else None,
            "p99": float(np.percentile(latency, 99)) if len(latency) else None}


def run_bench_stream(settings: LanternSettings, bench: StreamBench, bootstrap: str | None, log=print) -> dict:
    import feast  # noqa: F401 - imported first: Feast resets the DeprecationWarning filter on import

    warnings.filterwarnings("ignore", category=DeprecationWarning)  # libraries' notices, not the bench's
    from devtools.broker import launch_broker
    from ray_jobs.cluster import start_local

    root = settings.paths.reports / "bench_stream"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    with ExitStack() as stack:
        broker = stack.enter_context(launch_broker(bootstrap))
        log(f"{broker.kind} broker at {broker.bootstrap}")
        s, ds, scorers, model = _setup(settings, bench, root, log)
        events = _events(ds, bench.events)
        kafka = replace(s.kafka, bootstrap=broker.bootstrap, dlq_topic="bench.dlq")
        replay_eps = _preload(kafka, "bench.sessions.1", events)
        log(f"preloaded {len(events)} events at {replay_eps:,.0f}/s")
        stages = {}
        for path, scorer in scorers.items():  # side by side: sources encoded per event vs stored encodings
            stages[path] = _measure_stages(kafka, "bench.sessions.1", len(events), scorer, model)
            log(f"stage ceilings, {path} (events/s): "
                + ", ".join(f"{k} {v:,.0f}" for k, v in stages[path].ceilings_eps().items())
                + "; produce by client: " + ", ".join(
                    f"{k} {v:,.0f}" for k, v in stages[path].alternatives_eps()["produce"].items()))
        start_local(stack)
        sections = {}
        for path in bench.paths:
            runs = {n: _run_actors(s, kafka, events, n, bench if n == bench.actors[0] else None, log, path)
                    for n in bench.actors}
            sections[path] = _section(bench, stages[path], runs)
    return _result(s, bench, broker.kind, replay_eps, stages, sections)


def _setup(settings: LanternSettings, bench: StreamBench, root, log):
    """Simulated users, their features online, a fitted registered model and its external
    encodings stored (what the pipeline's replicas read), and in-process codecs on the same
    store and model for the stage ceilings: ``eager`` (sources encoded per event) and
    ``stored_external``."""
    from devtools.bench_serve import trained_registry
    from features.lookup import OnlineLookup
    from features.online import encode_online, fill_online, source_users
    from lantern.dataset.io import load_dataset, save_dataset
    from lantern.dataset.simulate import simulate
    from lantern.settings import local_run
    from model.checkpoint import tuned_threshold
    from model.inference import resolve_device, stored_version
    from streaming.scoring import BatchCodec

    s = local_run(settings, root)
    s = s.model_copy(update={"simulate": replace(s.simulate, users=bench.events),
                             "features": replace(s.features, repo=root / "feast"),
                             "serve": replace(s.serve, registry=root / "registry")})
    save_dataset(simulate(s.simulate), root / "data")
    ds = load_dataset(root / "data")
    store, _, _ = fill_online(s.features, ds)
    registry, _, _ = trained_registry(root, ds, s, log, preset=bench.preset)
    loaded = registry.load(None, str(resolve_device(s.serve.device)))  # the replicas' device: a GPU when there is one
    t0 = time.perf_counter()
    users = encode_online(store, loaded, "v0001", source_users(store, s.features))
    log(f"stored {users} users' external encodings in {time.perf_counter() - t0:.1f} s")
    scorers = {path: BatchCodec(loaded.questionnaire, loaded.features, OnlineLookup(store),
                                s.scoring.with_tuned(tuned_threshold(loaded.meta)),
                                stored_version=stored_version(loaded.model, "v0001") if path != "eager" else None)
               for path in MODEL_PATHS}
    return s, ds, scorers, loaded.model.eval()


def _events(ds, n: int) -> list[tuple[bytes, bytes]]:
    from streaming.events import in_completion_order, sessions_to_events

    sessions = in_completion_order(ds.sessions)
    return sessions_to_events(sessions.slice(max(0, sessions.num_rows - n)))


def _preload(kafka: KafkaConfig, topic: str, events) -> float:
    from streaming.kafka_io import replay

    t0 = time.perf_counter()
    replay(replace(kafka, input_topic=topic), events, rate=None, progress=False)
    return len(events) / (time.perf_counter() - t0)


def _measure_stages(kafka: KafkaConfig, topic: str, n: int, scorer, model):
    from devtools.stream_stages import measure_stages
    from streaming.kafka_io import ensure_topics

    ensure_topics(replace(kafka, scores_topic="bench.produce"))
    return measure_stages(kafka, topic, n, scorer, model, "bench.produce")


def _run_actors(s: LanternSettings, kafka: KafkaConfig, events, n: int, latency: StreamBench | None, log,
                path: str) -> dict:
    """``n`` scorer replicas and ``n`` consumers drain a preloaded topic; then the latency loads.
    ``path``: the replicas read the stored external encodings, or encode the sources (``eager``)."""
    from ray import serve

    from ray_jobs.consumers import CONSUMERS_APP, build_consumers, wait_assigned
    from ray_jobs.serve import deploy, feature_store_options
    from streaming.kafka_io import ensure_topics

    run = replace(kafka, input_topic=f"bench.sessions.{path}.{n}", scores_topic=f"bench.scores.{path}.{n}",
                  group_id=f"bench-{path}-{n}")
    _preload(kafka, run.input_topic, events)
    ensure_topics(run)
    features = feature_store_options(replace(s.features, encodings=path != "eager"))
    deploy(replace(s.serve, min_replicas=n, max_replicas=n), features=features, scoring=s.scoring, http=False)
    collector = ScoreCollector(run, run.scores_topic)
    try:
        wait_assigned(serve.run(build_consumers(run, n, s.serve.app_name), name=CONSUMERS_APP, route_prefix=None))
        scored = collector.wait_for(len(events))
        out = {"scored": len(scored), "throughput_eps": sustained_eps([ts for ts, _ in scored])}
        log(f"{path}, {n} scorer actor(s): {out['scored']} scored, {out['throughput_eps']:,.0f} events/s sustained")
        if latency is not None:
            out["latency_ms"] = {f"load{round(load * 100)}": _latency(run, events, load * out["throughput_eps"],
                                                                       latency.latency_seconds, collector, log)
                                 for load in latency.loads}
    finally:
        serve.delete(CONSUMERS_APP)
        serve.delete(s.serve.app_name)
        collector.stop()
    return out


def _latency(run: KafkaConfig, events, rate: float, seconds: float, collector: ScoreCollector, log) -> dict:
    from streaming.kafka_io import replay

    chosen = events[:max(1, min(len(events), int(rate * seconds)))]
    start = collector.mark()
    sent_ms: list[int] = []
    replay(run, chosen, rate=rate, progress=False, sent_ms=sent_ms)
    sent = {_session_id(value): ms for (_, value), ms in zip(chosen, sent_ms)}
    figures = {"rate_eps": rate, **latency_figures(sent, collector.wait_for(len(chosen), start))}
    shown = f"p50 {figures['p50']:.0f} ms, p99 {figures['p99']:.0f} ms" if figures["scored"] else "nothing scored"
    log(f"at {rate:,.0f} events/s: latency {shown} ({figures['scored']} of {figures['sent']} scored)")
    return figures


def _section(bench: StreamBench, stages, runs: dict) -> dict:
    """One model path's figures: its stage ceilings and bound, and the pipeline's runs against them."""
    first = runs[bench.actors[0]]
    ceilings, bound = stages.ceilings_eps(), stages.bound_eps(os.cpu_count() or 1)
    return {
        "throughput_eps": first["throughput_eps"],
        "latency_ms": first.get("latency_ms", {}),
        "ceilings_eps": ceilings,
        "ratio_to_consume_ceiling": first["throughput_eps"] / ceilings["consume"],
        "stage_bound_eps": bound,
        "ratio_to_stage_bound": first["throughput_eps"] / bound,
        "share_of_pipeline_time": stages.shares(first["throughput_eps"]),
        "runs": {str(n): {**{k: v for k, v in r.items() if k != "latency_ms"},
                          "ratio_to_stage_bound": r["throughput_eps"] / bound} for n, r in runs.items()},
        "scaling": {f"{n}_vs_{bench.actors[0]}": r["throughput_eps"] / first["throughput_eps"] for n, r in runs.items()
                    if n != bench.actors[0]},
    }


def _result(s: LanternSettings, bench: StreamBench, broker: str, replay_eps: float, stages: dict,
            sections: dict) -> dict:
    """The first pipeline path's section at the top level; every path's under ``paths``; every
    model path's stage ceilings and bound side by side under ``stages_by_path``."""
    cores = os.cpu_count() or 1
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "machine": f"{cores} cores",
        "broker": broker, "preset": bench.preset, "events": bench.events, "micro_batch": s.kafka.max_poll_records,
        "model_path": bench.paths[0], **sections[bench.paths[0]], "paths": sections,
        "producer": s.kafka.producer,
        "stages_by_path": {p: {"ceilings_eps": st.ceilings_eps(), "stage_bound_eps": st.bound_eps(cores),
                               "alternatives_eps": st.alternatives_eps()} for p, st in stages.items()},
        "replay_eps": replay_eps,
    }
