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

#: test folders whose tests start Ray → their xdist group. ``ray``: one local cluster in the pytest
#: process (tests/ray_jobs/conftest.py), Serve and Ray Train on it; ``ray-cli``: commands in a child
#: process, each with its own local Ray (demo, bench stream, the GPU check). The tests of a group
#: run one after another in one worker; the two groups may run beside each other, so at most two
#: local clusters at a time (no fixed ports: Serve's HTTP port comes from free_port or is off).
RAY_GROUPS = {"ray_jobs": "ray", "lantern": "ray-cli"}

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


def pytest_itemcollected(item):
    """Each Ray test in its folder's group (RAY_GROUPS); the other tests are shared out between
    the workers, and fill the cores while the Ray tests wait on servers. Marked as each test is
    collected: xdist reads the mark into the test's id (``…::test_x@ray``, what `pytest -v`
    shows) in its own collection_modifyitems, which runs before a conftest's."""
    group = RAY_GROUPS.get(item.path.parent.name)
    if group:
        item.add_marker(pytest.mark.xdist_group(group))


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session):
    """Refuse to run when xdist's loadgroup would not keep each Ray group in one worker (pytest 9.2
    moved a test's id where xdist 3.8 cannot rename it: both workers ran Ray tests at once)."""
    if not session.config.getvalue("loadgroup"):
        return
    loose = [i.nodeid for i in session.items
             if (g := RAY_GROUPS.get(i.path.parent.name)) and not i.nodeid.endswith(f"@{g}")]
    if loose:
        raise pytest.UsageError(f"the Ray tests are not grouped in xdist workers (first: {loose[0]}); "
                                "pytest-xdist no longer renames test ids with this pytest")
