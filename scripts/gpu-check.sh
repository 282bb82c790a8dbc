#!/usr/bin/env bash
# The GPU check (issue 22): run on a machine with CUDA, from the repository root, after `make install`.
#   scripts/gpu-check.sh                 # paper preset: bench serve (fp16, 1 GPU) + bench stream (num_gpus=1)
#   scripts/gpu-check.sh --dry-run       # the same steps on the CPU at toy sizes (what make test runs)
# Writes reports/bench_gpu.json (or --json PATH); stops after 8 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
exec timeout 480 .venv/bin/lantern bench gpu "$@"
