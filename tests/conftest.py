"""Shared fixtures: a small simulated dataset (session-scoped) and its on-disk copy."""

from __future__ import annotations

import os

import pytest
import torch

from lantern.dataset.io import save_dataset
from lantern.dataset.simulate import SimConfig, simulate

torch.set_num_threads(2)

# Serve's autoscaler counts ongoing requests reported by the replicas, not by the caller's handle:
# the handle's reports from a pytest process (output captured) often never reached the controller,
# so tests/ray_jobs/test_autoscaling.py saw no scale-up in 3 of 8 runs. Set before anything imports Ray.
os.environ.setdefault("RAY_SERVE_COLLECT_AUTOSCALING_METRICS_ON_HANDLE", "0")


@pytest.fixture(scope="session")
def small_ds():
    return simulate(SimConfig(users=2000, seed=7))


@pytest.fixture(scope="session")
def small_dir(small_ds, tmp_path_factory):
    root = tmp_path_factory.mktemp("sim")
    save_dataset(small_ds, root)
    return root
