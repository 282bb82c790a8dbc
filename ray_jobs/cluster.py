"""The one place lantern starts or joins Ray: a local cluster for the demo and the benchmarks,
or an existing one (``--ray-address`` / ``$RAY_ADDRESS``, resolved at the entry point)."""

from __future__ import annotations

import logging
import os
from contextlib import ExitStack

QUIET = dict(include_dashboard=False, log_to_driver=False)


def connect(address: str | None, **options) -> None:
    """Join the cluster at ``address`` (None: Ray's own resolution, else a new local one)."""
    import ray

    ray.init(address=address, **{**QUIET, **options})


def start_local(stack: ExitStack, num_cpus: int | None = None) -> None:
    """A fresh local Ray on this machine's cores, stopped when ``stack`` closes."""
    import ray.data  # noqa: F401 - Ray Data sets its loggers up on import: before quiet()

    stack.callback(stop)  # first: an interrupt inside ray.init must still stop what it started
    # its own local Ray, whatever RAY_ADDRESS says: local runs keep storage and registry on local paths
    connect("local", num_cpus=num_cpus or os.cpu_count(), logging_level=logging.ERROR)
    quiet()


def quiet() -> None:
    """Ray's loggers to warnings: the caller's own lines and bars say what Ray is doing (Serve sets
    its logger up when it starts: call again after a deploy)."""
    for name in ("ray", "ray.data", "ray.serve", "ray.train"):
        logging.getLogger(name).setLevel(logging.WARNING)


def stop() -> None:
    """The local Ray cluster, and with it Serve's controller and replicas; safe to call twice."""
    import ray

    ray.shutdown()
