"""Shared fixtures: a small simulated dataset (session-scoped) and its on-disk copy."""

from __future__ import annotations

import pytest
import torch

from lantern.dataset.io import save_dataset
from lantern.dataset.simulate import SimConfig, simulate

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def small_ds():
    return simulate(SimConfig(users=2000, seed=7))


@pytest.fixture(scope="session")
def small_dir(small_ds, tmp_path_factory):
    root = tmp_path_factory.mktemp("sim")
    save_dataset(small_ds, root)
    return root
