"""The GPU check is ready to run: on this CPU machine its dry run goes through every step (bench
serve, bench stream, the fp16 comparison) and writes its JSON; without --dry-run and without
CUDA it refuses with a message naming what is missing."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu-check.sh"

pytestmark = pytest.mark.slow


def test_the_dry_run_goes_through_every_step_and_writes_one_json(tmp_path):
    out = tmp_path / "gpu.json"
    run = subprocess.run([str(SCRIPT), "--dry-run", "--json", str(out)], cwd=tmp_path, capture_output=True,
                         text=True, timeout=480)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["dry_run"] is True and result["preset"] == "small"
    assert result["serve"]["batches"]["64"]["serve_rows_per_s"] > 0
    assert result["stream"]["runs"]["1"]["scored"] == result["stream"]["events"]
    assert set(result["fp16"]) >= {"f1_fp32", "f1_fp16", "f1_delta", "decisions_flipped"}
    assert "fp16 F1 delta" in run.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the refusal cannot be shown here")
def test_without_cuda_the_real_check_refuses_and_says_why(tmp_path):
    run = subprocess.run([str(SCRIPT), "--json", str(tmp_path / "gpu.json")], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 2 and "no CUDA device" in run.stdout + run.stderr
    assert not (tmp_path / "gpu.json").exists()
