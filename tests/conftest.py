"""Shared fixtures: a small simulated dataset (session-scoped) and its on-disk copy, and a Kafka
broker per test module that asks for one."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings


from devtools.broker import launch_broker
from lantern.dataset.io import save_dataset
from lantern.dataset.simulate import SimConfig, simulate

# the suite runs in two pytest-xdist workers on two cores: one torch thread each (two would
# oversubscribe the cores); run alone (-n 0), two
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)

#: test folders whose tests start Ray (a local cluster, Serve, Ray Train), in-process or in a child
RAY_FOLDERS = ("ray_jobs", "lantern")

# Serve's autoscaler counts ongoing requests reported by the replicas, not by the caller's handle:
# the handle's reports from a pytest process (output captured) often never reached the controller,
# so tests/ray_jobs/test_autoscaling.py saw no scale-up in 3 of 8 runs. Set before anything imports Ray.
os.environ.setdefault("RAY_SERVE_COLLECT_AUTOSCALING_METRICS_ON_HANDLE", "0")


# Property-based tests (tests/streaming/test_fuzz.py): a fixed-seed sample in `make test` ("ci"),
# a long random run on demand (HYPOTHESIS_PROFILE=fuzz); no example database written to the tree
_QUIET = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
settings.register_profile("ci", max_examples=150, deadline=None, derandomize=True, database=None,
                          suppress_health_check=_QUIET)
settings.register_profile("fuzz", max_examples=20_000, deadline=None, database=None, suppress_health_check=_QUIET)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session")
def small_ds():
    return simulate(SimConfig(users=2000, seed=7))


@pytest.fixture(scope="session")
def small_dir(small_ds, tmp_path_factory):
    root = tmp_path_factory.mktemp("sim")
    save_dataset(small_ds, root)
    return root


@pytest.fixture(scope="module")
def broker():
    """``KAFKA_BOOTSTRAP`` when set, else an embedded broker, one per test module."""
    with launch_broker(os.environ.get("KAFKA_BOOTSTRAP")) as b:
        yield b


def pytest_collection_modifyitems(items):
    """Every test that starts Ray runs in the same xdist worker, one after another (one Ray
    cluster on the machine at a time, as in a serial run); the rest are shared out between
    the workers. Most of the Ray tests wait on servers, so the other worker's tests fill the
    cores meanwhile."""
    for item in items:
        if item.path.parent.name in RAY_FOLDERS:
            item.add_marker(pytest.mark.xdist_group("ray"))
