"""`lantern bench autoscale`: the LanternScorer app under a sustained load, then none — replicas,
offered load and p99 over time, failed requests and the model version of every output.

Offered load is ``clients`` closed-loop callers, each sending one micro-batch through the Serve
handle and the next as soon as it returns (what the StreamConsumer replicas do under a backlog).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from ray_jobs.serve import running_replicas


@dataclass
class _Load:
    clients: int
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (finished at, seconds)
    failures: list[str] = field(default_factory=list)
    versions: set = field(default_factory=set)
    stop: threading.Event = field(default_factory=threading.Event)

    def client(self, handle, records) -> None:
        while not self.stop.is_set():
            t0 = time.monotonic()
            try:
                batch = handle.score.remote(records).result()
                self.versions |= {json.loads(v)["model_version"] for _, v in batch.scores}
                self.latencies.append((time.monotonic(), time.monotonic() - t0))
            except Exception as exc:  # noqa: BLE001 - every failure is counted and reported
                self.failures.append(repr(exc))


def run_autoscale(handle, app: str, records, min_replicas: int, clients: int = 6, hold_s: float = 5.0,
                  max_wait_s: float = 120.0, sample_s: float = 0.5, log=print) -> dict:
    """Load until the app has scaled above ``min_replicas`` and ``hold_s`` more, then no load until
    it is back at ``min_replicas``; a timeline sample every ``sample_s``."""
    load, timeline, t0 = _Load(clients), [], time.monotonic()
    threads = [threading.Thread(target=load.client, args=(handle, records), daemon=True) for _ in range(clients)]

    def sample(offered: int) -> int:
        now, n = time.monotonic(), running_replicas(app)
        window = [s for done, s in load.latencies if done > now - 2.0]
        timeline.append({"t_s": round(now - t0, 2), "replicas": n, "offered_clients": offered,
                         "p99_ms": round(float(np.percentile(window, 99)) * 1000, 1) if window else None,
                         "requests_per_s": round(len(window) / 2.0, 1)})
        return n

    for t in threads:
        t.start()
    up_at = _until(lambda: sample(clients) > min_replicas, max_wait_s, sample_s)
    log(f"scaled up to {timeline[-1]['replicas']} replicas after {up_at:.1f} s of load" if up_at is not None
        else f"no scale-up within {max_wait_s:.0f} s")
    _until(lambda: sample(clients) < 0, hold_s, sample_s)  # keep the load on for hold_s
    load.stop.set()
    for t in threads:
        t.join(timeout=60)
    stop_at = time.monotonic()
    down_at = _until(lambda: sample(0) <= min_replicas, max_wait_s, sample_s)
    log(f"back to {min_replicas} replica(s) {down_at:.1f} s after the load stopped" if down_at is not None
        else f"no scale-down within {max_wait_s:.0f} s")
    return {"clients": clients, "requests": len(load.latencies), "failed": len(load.failures),
            "failures": load.failures[:5], "model_versions": sorted(load.versions),
            "max_replicas": max(s["replicas"] for s in timeline), "final_replicas": timeline[-1]["replicas"],
            "scale_up_after_s": up_at, "scale_down_after_s": down_at,
            "load_seconds": round(stop_at - t0, 1), "timeline": timeline}


def _until(done, timeout_s: float, every_s: float) -> float | None:
    """Seconds until ``done()`` held, None after ``timeout_s``."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if done():
            return time.monotonic() - t0
        time.sleep(every_s)
    return None


def bench_autoscale(settings, users: int, clients: int, log=print) -> dict:
    """A model trained on ``users`` simulated users, served with fractional CPUs per replica and
    quick autoscaling; the timeline of :func:`run_autoscale`."""
    import tempfile
    from dataclasses import replace
    from pathlib import Path

    from ray import serve

    from devtools.bench_serve import trained_registry
    from lantern.dataset.simulate import simulate
    from ray_jobs.cluster import connect, stop
    from ray_jobs.serve import deploy
    from streaming.events import sessions_to_events
    from streaming.scoring import Record

    ds = simulate(replace(settings.simulate, users=users))
    with tempfile.TemporaryDirectory() as tmp:
        reg, _, _ = trained_registry(Path(tmp), ds, settings, log)
        cfg = replace(settings.serve, registry=reg.root, num_cpus=0.5, min_replicas=1, max_replicas=3,
                      target_ongoing_requests=1.0, upscale_delay_s=1.0, downscale_delay_s=3.0,
                      look_back_period_s=2.0, metrics_interval_s=0.5)
        records = [Record("bench", 0, i, k, v) for i, (k, v) in enumerate(sessions_to_events(ds.sessions.slice(0, 64)))]
        connect(None, num_cpus=2)
        try:
            handle = deploy(cfg, http=False)
            result = run_autoscale(handle, cfg.app_name, records, cfg.min_replicas, clients=clients, log=log)
            serve.delete(cfg.app_name)
        finally:
            stop()
    return {"settings": {"num_cpus_per_replica": cfg.num_cpus, "min_replicas": cfg.min_replicas,
                         "max_replicas": cfg.max_replicas, "target_ongoing_requests": cfg.target_ongoing_requests,
                         "max_ongoing_requests": cfg.max_ongoing_requests, "max_batch_size": cfg.max_batch_size,
                         "upscale_delay_s": cfg.upscale_delay_s, "downscale_delay_s": cfg.downscale_delay_s},
            "micro_batch": len(records), **result}
