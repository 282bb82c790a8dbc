"""Ray Serve and registry settings: plain data, no Ray import (the CLI reads them at start-up)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lantern.errors import ConfigError


@dataclass(frozen=True)
class ServeConfig:
    app_name: str = "lantern"
    registry: Path = Path("registry")
    model_version: str | None = None  # None: the registry's champion
    # batching of HTTP requests (one event each): a replica joins up to max_batch_size of them into
    # one forward pass. A Kafka micro-batch is one forward pass of its own, never merged (one model
    # thread per replica, docs/serving.md). Retuned live through user_config → reconfigure.
    max_batch_size: int = 8
    batch_wait_timeout_s: float = 0.002
    max_ongoing_requests: int = 32  # must let batches fill: ≥ max_batch_size
    # beyond this many waiting requests a caller gets BackPressureError (and retries with backoff)
    # instead of queueing without bound; -1 = unbounded (Serve's default)
    max_queued_requests: int = 64
    # placement and scaling
    num_cpus: float = 1.0
    num_gpus: float = 0.0  # fractional allowed; 0 = CPU replicas
    device: str = "auto"  # auto | cpu | cuda: chosen when the replica starts
    half: bool = False  # fp16 on CUDA only; never on CPU (see docs/serving.md)
    min_replicas: int = 1
    max_replicas: int = 2
    target_ongoing_requests: float = 4.0
    # how fast the autoscaler reacts (Serve's defaults); docs/operations.md has the measured timeline
    upscale_delay_s: float = 30.0
    downscale_delay_s: float = 600.0
    look_back_period_s: float = 30.0
    metrics_interval_s: float = 10.0
    # HTTP ingress (POST /score, GET /healthz), loopback unless told otherwise
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    # promotion policy
    promote_metric: str = "val_f1"
    promote_min_gain: float = 0.0

    def __post_init__(self):
        if self.max_ongoing_requests < self.max_batch_size:
            raise ConfigError(f"serve.max_ongoing_requests ({self.max_ongoing_requests}) must be ≥ "
                              f"serve.max_batch_size ({self.max_batch_size}), or batches cannot fill")
        if not 1 <= self.min_replicas <= self.max_replicas:
            raise ConfigError(f"serve replicas need 1 ≤ min_replicas ({self.min_replicas}) ≤ max_replicas "
                              f"({self.max_replicas})")

    def user_config(self, model_version: str | None) -> dict:
        """What replicas reconfigure from: batching and the model version (a live update)."""
        return {"max_batch_size": self.max_batch_size, "batch_wait_timeout_s": self.batch_wait_timeout_s,
                "model_version": model_version}


@dataclass(frozen=True)
class RetrainConfig:
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    storage: Path = Path("reports/ray_train")  # Ray Train run storage (checkpoints, encoded rows)
    run_name: str = "lantern-retrain"  # rerunning with the same name resumes from its last checkpoint
    max_failures: int = 1  # worker failures survived per run, each resumed from the last checkpoint

    def __post_init__(self):
        if self.num_workers < 1:
            raise ConfigError(f"retrain.num_workers must be ≥ 1 (got {self.num_workers})")


def config_from_args(cls, args: dict, what: str):
    """A settings dataclass from a Serve config's ``args``; unknown keys are an error naming them."""
    from dataclasses import fields

    known = {f.name for f in fields(cls)}
    unknown = sorted(set(args) - known)
    if unknown:
        raise ConfigError(f"unknown {what} settings {unknown}; known: {sorted(known)}")
    return cls(**args)
