"""`lantern bench gpu`: the GPU check, one command and one JSON.

On a machine with CUDA: the ``paper`` preset through `bench serve` (replica on one GPU, fp16) and
`bench stream` (Serve replicas with ``num_gpus=1``), plus fp16's effect on F1 against fp32 on the
held-out set — sized to finish in under 8 minutes. ``--dry-run`` runs the same steps on the CPU
at toy sizes (``small`` preset, no GPU requested): what `make test` runs, so the script is known
to work before a GPU machine is ever lent.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

from lantern.errors import ConfigError


@dataclass(frozen=True)
class GpuCheckSizes:
    preset: str
    users: int  # the bench serve model's training users
    serve_rows: int
    serve_batches: tuple[int, ...]
    stream_events: int
    stream_latency_s: float


FULL = GpuCheckSizes("paper", 3000, 8192, (256, 1024), 20_000, 10.0)
DRY_RUN = GpuCheckSizes("small", 400, 128, (64,), 1000, 1.0)


def device_info() -> dict:
    import torch

    if not torch.cuda.is_available():
        return {"cuda": False, "torch": torch.__version__}
    props = torch.cuda.get_device_properties(0)
    return {"cuda": True, "torch": torch.__version__, "name": props.name, "memory_gib": props.total_memory / 2**30,
            "capability": f"{props.major}.{props.minor}", "cuda_version": torch.version.cuda}


def run_gpu_check(settings, dry_run: bool, bootstrap: str | None = None, log=print) -> dict:
    """Serve and stream benchmarks on the GPU (or, ``dry_run``, the same steps on the CPU)."""
    from devtools.bench_serve import bench_serve
    from devtools.bench_stream import StreamBench, run_bench_stream

    info = device_info()
    if not dry_run and not info["cuda"]:
        raise ConfigError("no CUDA device here: `lantern bench gpu` needs one (--dry-run checks the steps on the CPU)")
    sizes = DRY_RUN if dry_run else FULL
    serve_cfg = replace(settings.serve, device="cpu" if dry_run else "cuda", num_gpus=0.0 if dry_run else 1.0,
                        half=not dry_run)
    s = settings.model_copy(update={"serve": serve_cfg})
    t0 = time.perf_counter()
    log(f"GPU check ({'dry run on the CPU' if dry_run else info['name']}): preset {sizes.preset}")
    served = bench_serve(s, users=sizes.users, rows=sizes.serve_rows, rounds=1 if dry_run else 3, log=log,
                         preset=sizes.preset, batches=sizes.serve_batches)
    serve_s = time.perf_counter() - t0
    stream = run_bench_stream(s, StreamBench(events=sizes.stream_events, actors=(1,), loads=(0.5,),
                                             latency_seconds=sizes.stream_latency_s, preset=sizes.preset,
                                             paths=("stored_external",)),
                              bootstrap, log=log)
    return {"dry_run": dry_run, "device": info, "preset": sizes.preset, "sizes": sizes.__dict__,
            "serve": served, "fp16": served["half_precision"], "stream": stream,
            "seconds": {"serve": serve_s, "total": time.perf_counter() - t0}}
