"""Autoscaling seen: under a sustained load the LanternScorer app scales from min_replicas up, and
back down when the load stops — with zero failed requests and every output's model_version intact."""

from __future__ import annotations

import pytest
from ray import serve

from devtools.bench_autoscale import run_autoscale
from lantern.settings.serve import ServeConfig
from model.registry import Registry
from streaming.events import sessions_to_events
from streaming.scoring import Record

pytestmark = pytest.mark.slow


def test_the_scorer_app_scales_up_under_load_and_back_down_with_no_failed_request(
        ray_cluster, model_dirs, recent_ds, tmp_path):
    from ray_jobs.serve import deploy

    reg = Registry(tmp_path / "registry")
    for path, f1 in model_dirs:
        reg.register(path, {"val_f1": f1})
    reg.promote("v0001")
    cfg = ServeConfig(app_name="autoscale", registry=reg.root, num_cpus=0.5, min_replicas=1, max_replicas=2,
                      target_ongoing_requests=1.0, max_ongoing_requests=8, max_batch_size=4,
                      upscale_delay_s=1.0, downscale_delay_s=2.0, look_back_period_s=2.0, metrics_interval_s=0.5)
    records = [Record("in", 0, i, k, v) for i, (k, v) in enumerate(sessions_to_events(recent_ds.sessions.slice(0, 64)))]
    handle = deploy(cfg, http=False)
    try:
        result = run_autoscale(handle, cfg.app_name, records, cfg.min_replicas, clients=4, hold_s=3.0,
                               max_wait_s=90.0, log=lambda m: None)
    finally:
        serve.shutdown()  # Serve started without HTTP here: later tests start it with HTTP
    assert result["failed"] == 0, result["failures"]
    assert result["model_versions"] == ["v0001"]
    assert result["max_replicas"] >= 2 and result["scale_up_after_s"] is not None, result["timeline"]
    assert result["final_replicas"] == 1 and result["scale_down_after_s"] is not None, result["timeline"]
    assert result["timeline"][0]["replicas"] == 1  # it started at min_replicas
