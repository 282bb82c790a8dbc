"""Ray fixtures: two model versions in a registry, trained on the feature-store dataset."""

from __future__ import annotations

import pytest

from model.checkpoint import save_model
from model.registry import Registry
from model.train import TrainConfig, fit, prepare
from tests.features.conftest import recent_ds, sqlite_store  # noqa: F401  (shared fixtures)


@pytest.fixture(scope="session")
def model_dirs(recent_ds, tmp_path_factory):  # noqa: F811
    """Two tiny lantern models (1 epoch, different seeds) and their validation F1."""
    out = []
    for seed in (1, 2):
        tc = TrainConfig(variant="lantern", epochs=1, batch_size=128, seed=seed)
        prep = prepare(recent_ds, tc)
        model, history = fit(prep, tc, progress=False)
        path = save_model(tmp_path_factory.mktemp(f"model{seed}"), model, prep.features, recent_ds.questionnaire,
                          {"training": history})
        out.append((path, history["best_val_f1"]))
    return out


@pytest.fixture
def registry(model_dirs, tmp_path):
    reg = Registry(tmp_path / "registry")
    for path, f1 in model_dirs:
        reg.register(path, {"val_f1": f1}, {"sessions": 1})
    return reg


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray for the session (2 CPUs, no dashboard); Serve and Ray stopped at the end.
    Yields the URL of Ray's Prometheus endpoint (metrics reported every second)."""
    import ray
    from ray import serve

    from devtools.servers import free_port

    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _metrics_export_port=port,
             _system_config={"metrics_report_interval_ms": 1000})
    yield f"http://127.0.0.1:{port}/metrics"
    serve.shutdown()
    ray.shutdown()
