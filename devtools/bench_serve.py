"""`lantern bench serve`: the Serve path vs the same model in process, side by side in one run.

Both paths do the same work per micro-batch — parse, feature lookup (the same SQLite Feast
store), encode, forward, score records — with the same CPU share (one core, one torch thread),
so the ratio is what Serve's hop (handle → replica, serialisation, batching) costs.
"""

from __future__ import annotations

import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

BATCHES = (64, 256, 1024)


def trained_registry(root: Path, ds, settings, log, preset: str = "small", epochs: int = 1):
    """LANTERN (``preset``) fitted for ``epochs`` on ``ds``, registered and promoted as v0001 in
    ``root/registry``: a benchmark's model, trained enough to score like one."""
    from model.checkpoint import save_model
    from model.registry import Registry
    from model.train import fit, prepare

    tc = replace(settings.train, variant="lantern", preset=preset, epochs=epochs)
    prep = prepare(ds, tc)
    model, history = fit(prep, tc, progress=False)
    reg = Registry(root / "registry")
    reg.register(save_model(root / "model", model, prep.features, ds.questionnaire, {"training": history}),
                 {"val_f1": history["best_val_f1"]})
    reg.promote("v0001")
    log(f"trained and registered v0001 (val F1 {history['best_val_f1']:.4f})")
    return reg, prep, model


def half_precision_effect(model, hs, device: str = "cpu") -> dict:
    """Test-set F1 of the model under fp16 autocast vs fp32 (the Serve ``half`` switch). On a CPU
    this uses CPU fp16 kernels: a proxy for CUDA's, which also accumulate in fp32."""
    from model.inference import forward
    from model.metrics import prf

    def probs(half: bool) -> np.ndarray:
        parts = []
        for start in range(0, len(hs.y), 1024):
            sub = hs.data.take(np.arange(start, min(start + 1024, len(hs.y))))
            parts.append(forward(model, sub.survey.q_idx, sub.survey.sel, sub.sources, torch.device(device), half)[0])
        return np.concatenate(parts)

    p32, p16 = probs(False), probs(True)
    f32, f16 = (prf(p, hs.y, hs.loss_mask)["f1"] for p in (p32, p16))
    return {"device": device, "f1_fp32": f32, "f1_fp16": f16, "f1_delta": f16 - f32,
            "max_abs_prob_delta": float(np.abs(p32 - p16).max()),
            "decisions_flipped": int(((p32 >= 0.5) != (p16 >= 0.5)).sum()), "decisions": int(p32.size)}


def _rate(fn, batches) -> tuple[float, list[float]]:
    latencies = []
    t0 = time.perf_counter()
    for records in batches:
        t = time.perf_counter()
        fn(records)
        latencies.append(time.perf_counter() - t)
    return sum(len(b) for b in batches) / (time.perf_counter() - t0), latencies


def _concurrent_rate(fn, batches, callers: int) -> float:
    """Rows/s with ``callers`` threads each sending every batch (several consumers, one app)."""
    threads = [threading.Thread(target=lambda: [fn(b) for b in batches]) for _ in range(callers)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return callers * sum(len(b) for b in batches) / (time.perf_counter() - t0)


def bench_serve(settings, users: int = 3000, rows: int = 4096, rounds: int = 3, log=print, preset: str = "small",
                batches: tuple[int, ...] = BATCHES) -> dict:
    """Rows/s through the Serve app vs the same model in process, per micro-batch size; in process
    both with the sources encoded per event (eager) and with each user's external encoding stored
    ahead (what the replica reads), side by side. The replica's placement (``num_gpus``, ``half``,
    ``device``) comes from ``settings.serve``."""
    from ray import serve

    from devtools.bench_features import historic_store
    from features.lookup import OnlineLookup
    from features.online import encode_online, source_users
    from lantern.dataset.simulate import simulate
    from lantern.settings.scoring import ScoringConfig
    from model.checkpoint import tuned_threshold
    from model.inference import InProcessPredictor, resolve_device
    from ray_jobs.cluster import connect, stop
    from ray_jobs.serve import ServeScorer, deploy, feature_store_options
    from streaming.events import sessions_to_events
    from streaming.scoring import BatchScorer, Record

    torch.set_num_threads(1)  # the replica's share: one CPU, one torch thread
    ds = simulate(replace(settings.simulate, users=users))
    events = sessions_to_events(ds.sessions)
    with tempfile.TemporaryDirectory(prefix="lantern-bench-serve-") as tmp:
        root = Path(tmp)
        reg, prep, model = trained_registry(root, ds, settings, log, preset=preset)
        device = str(resolve_device(settings.serve.device))
        half = half_precision_effect(model.to(device), prep.test, device)
        log(f"fp16 autocast vs fp32: F1 {half['f1_fp16']:.5f} vs {half['f1_fp32']:.5f} "
            f"(delta {half['f1_delta']:+.5f}), {half['decisions_flipped']} of {half['decisions']} decisions flipped")
        # fresh at the wall clock the scorers use
        store, fcfg, _ = historic_store(ds, "sqlite", root / "features", ttl_days=10_000, log=log)
        loaded = reg.load(None, device)
        encode_online(store, loaded, "v0001", source_users(store, fcfg), log=log)  # what the replica reads
        predictor = InProcessPredictor(loaded.model, "v0001", device)
        local, stored = (BatchScorer(loaded.questionnaire, loaded.features, predictor, OnlineLookup(store),
                                     ScoringConfig(threshold=tuned_threshold(loaded.meta)), stored_version=version)
                         for version in (None, predictor.stored_version))
        cfg = replace(settings.serve, registry=root / "registry", min_replicas=1, max_replicas=1, num_cpus=1)
        gpus = {"num_gpus": 1} if cfg.num_gpus else {}
        connect(None, num_cpus=2, **gpus)
        try:
            remote = ServeScorer(deploy(cfg, features=feature_store_options(fcfg), http=False))
            result = {"users": users, "preset": preset, "device": device, "num_gpus": cfg.num_gpus, "half": cfg.half,
                      "torch_threads": 1, "replicas": 1, "max_batch_size": cfg.max_batch_size,
                      "half_precision": half, "batches": {}}
            for size in batches:
                batches = [[Record("bench", 0, i + j, k, v) for j, (k, v) in enumerate(events[i:i + size])]
                           for i in range(0, min(len(events), max(rows, 4 * size)) - size + 1, size)]
                local.score(batches[0]), stored.score(batches[0]), remote.score(batches[0])  # warm all
                runs = [(_rate(local.score, batches), _rate(remote.score, batches), _rate(stored.score, batches))
                        for _ in range(rounds)]  # interleaved
                local_rps = float(np.median([r[0][0] for r in runs]))
                serve_rps = float(np.median([r[1][0] for r in runs]))
                stored_rps = float(np.median([r[2][0] for r in runs]))
                lat = np.array([x for r in runs for x in r[1][1]]) * 1e3
                row = {"in_process_rows_per_s": local_rps, "in_process_stored_rows_per_s": stored_rps,
                       "stored_vs_eager": stored_rps / local_rps, "serve_rows_per_s": serve_rps,
                       "ratio": serve_rps / stored_rps, "serve_p50_ms": float(np.percentile(lat, 50)),
                       "serve_p99_ms": float(np.percentile(lat, 99)), "calls": len(batches) * rounds,
                       "serve_rows_per_s_4_callers": _concurrent_rate(remote.score, batches, 4)}
                result["batches"][str(size)] = row
                log(f"batch {size:>4}: in-process eager {local_rps:8.0f} rows/s, stored encodings {stored_rps:8.0f} "
                    f"({row['stored_vs_eager']:.2f}x), Serve (stored) {serve_rps:8.0f} rows/s ({row['ratio']:.2f}x), "
                    f"p50 {row['serve_p50_ms']:.1f} ms, p99 {row['serve_p99_ms']:.1f} ms, "
                    f"4 callers {row['serve_rows_per_s_4_callers']:.0f} rows/s")
        finally:
            serve.shutdown()
            stop()
    return result


def bench_train(settings, users: int = 5000, epochs: int = 6, log=print) -> dict:
    """Samples/s of Ray Train (2 workers × 1 CPU, DDP) vs the single-process loop (2 torch threads:
    the machine's two cores either way), same data, split, epochs; both include each epoch's
    validation pass. Also the end-to-end time of the Ray run (start-up, encoding, data shards)."""
    from lantern.dataset.simulate import simulate
    from lantern.settings.serve import RetrainConfig
    from model.evaluate import predict
    from model.metrics import prf
    from model.train import fit, prepare
    from ray_jobs.cluster import connect, stop
    from ray_jobs.train import retrain

    ds = simulate(replace(settings.simulate, users=users))
    tc = replace(settings.train, variant="lantern", preset="small", epochs=epochs, patience=epochs + 1)
    torch.set_num_threads(2)
    prep = prepare(ds, tc)
    t0 = time.perf_counter()
    model, history = fit(prep, tc, progress=False)
    single_s = time.perf_counter() - t0
    n_train = len(prep.train_idx)
    single_sps = n_train * len(history["history"]) / single_s
    single_f1 = prf(predict(model, prep.test), prep.test.y, prep.test.loss_mask)["f1"]
    log(f"single process: {single_sps:.0f} samples/s ({single_s:.1f} s, test F1 {single_f1:.4f})")
    connect(None, num_cpus=2)
    try:
        with tempfile.TemporaryDirectory(prefix="lantern-bench-train-") as tmp:
            t0 = time.perf_counter()
            result = retrain(ds, tc, RetrainConfig(num_workers=2, storage=Path(tmp), run_name="bench"), log=log)
            ray_total_s = time.perf_counter() - t0
    finally:
        stop()
    ray_sps = float(np.mean([h["samples_per_s"] for h in result.history]))
    ray_f1 = prf(predict(result.model, result.prepared.test), result.prepared.test.y,
                 result.prepared.test.loss_mask)["f1"]
    out = {"users": users, "train_sessions": n_train, "epochs": epochs,
           "single_process": {"samples_per_s": single_sps, "seconds": single_s, "torch_threads": 2, "test_f1": single_f1},
           "ray_train_2_workers": {"samples_per_s": ray_sps, "end_to_end_s": ray_total_s,
                                   "end_to_end_samples_per_s": n_train * epochs / ray_total_s, "test_f1": ray_f1,
                                   "epochs": result.history},
           "ratio": ray_sps / single_sps, "overhead": 1 - ray_sps / single_sps, "f1_gap": ray_f1 - single_f1}
    log(f"Ray Train 2 workers: {ray_sps:.0f} samples/s per epoch ({out['ratio']:.2f}x single, overhead "
        f"{out['overhead']:.0%}), end to end {ray_total_s:.1f} s, test F1 {ray_f1:.4f} (gap {out['f1_gap']:+.4f})")
    return out
