"""Serve replicas' metrics reach Ray's Prometheus endpoint under lantern's names (``ray_`` prefix,
Serve's application label): after N valid + M bad events sent to a fresh app, a scrape shows the
replica-side counts exactly."""

from __future__ import annotations

import json
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families
from ray import serve

from lantern.settings.serve import ServeConfig
from model.registry import Registry
from streaming.events import sessions_to_events
from streaming.scoring import Record

pytestmark = pytest.mark.slow
N_VALID, BAD = 40, [b"{not json", b'{"schema_version": 7}']


def _app_samples(url: str, app: str) -> dict[str, list]:
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    out: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.startswith("ray_lantern_") and s.labels.get("application") == app:
                out.setdefault(s.name, []).append(s)
    return out


def test_replica_metrics_on_rays_endpoint_count_exactly_what_was_sent(ray_cluster, model_dirs, recent_ds,
                                                                       sqlite_store, tmp_path):
    from ray_jobs.serve import deploy, feature_store_options

    _, features_cfg = sqlite_store
    reg = Registry(tmp_path / "registry")
    path, f1 = model_dirs[0]
    reg.register(path, {"val_f1": f1})
    reg.promote("v0001")
    app = "metrics-test"
    cfg = ServeConfig(app_name=app, registry=reg.root, num_cpus=0.5, min_replicas=1, max_replicas=1)
    events = sessions_to_events(recent_ds.sessions.slice(0, N_VALID))
    records = [Record("in", 0, i, k, v) for i, (k, v) in enumerate(events)]
    records += [Record("in", 0, N_VALID + i, b"k", v) for i, v in enumerate(BAD)]
    handle = deploy(cfg, features=feature_store_options(features_cfg), http=False)
    try:
        first = handle.score.remote(records[:25]).result()
        second = handle.score.remote(records[25:]).result()
        assert len(first.scores) + len(second.scores) == N_VALID and len(second.dead) == len(BAD)
        scores = [json.loads(v) for _, v in first.scores + second.scores]
        with_external = sum(bool(o["external_sources_used"]) for o in scores)
        # Ray exports each replica's metrics every second (the fixture's setting), so one report
        # may hold a batch's lookups and not yet the gates recorded after its forward pass: wait
        # for the first and the last metric a batch records
        expected = {"ray_lantern_sessions_looked_up_total": N_VALID, "ray_lantern_session_gate_count": with_external}
        deadline, got = time.monotonic() + 30, {}
        while time.monotonic() < deadline:
            got = _app_samples(ray_cluster, app)
            if all(sum(s.value for s in got.get(name, ())) >= n for name, n in expected.items()):
                break
            time.sleep(0.5)
    finally:
        serve.shutdown()  # Serve started without HTTP here: later tests start it with HTTP
    total = {name: sum(s.value for s in samples) for name, samples in got.items()}
    assert total["ray_lantern_sessions_looked_up_total"] == N_VALID
    assert total["ray_lantern_session_gate_count"] == with_external > 0  # one gate per session with context
    by_source = {s.labels["source"]: s.value for s in got["ray_lantern_sessions_external_total"]}
    for source, n in by_source.items():
        assert n == sum(source in o["external_sources_used"] for o in scores)
    assert total["ray_lantern_model_forward_seconds_count"] == 2  # a forward pass per micro-batch, never merged
    assert total.get("ray_lantern_events_degraded_total", 0) == 0
    assert [s.labels["model_version"] for s in got["ray_lantern_model_info"] if s.value == 1] == ["v0001"]
    assert all(s.labels["deployment"] == "LanternScorer" for samples in got.values() for s in samples)
