"""The GPU check is ready to run: on this CPU machine its dry run goes through every step (bench
serve, bench stream, the fp16 comparison) and writes its JSON; without --dry-run and without
CUDA it refuses with a message naming what is missing. The dry run is also `lantern bench
stream`'s run end to end: its section must account for every event and carry every measure."""

from __future__ import annotations

import json
import os
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
    assert_bench_stream_section(result["stream"])
    assert set(result["fp16"]) >= {"f1_fp32", "f1_fp16", "f1_delta", "decisions_flipped"}
    assert "fp16 F1 delta" in run.stdout


def assert_bench_stream_section(stream: dict) -> None:
    """bench stream's JSON (one actor, the stored-encoding path, one load): every event scored
    once, each stage's ceiling for both model paths and both produce clients, the ratios."""
    from devtools.stream_stages import STAGES

    assert {n: r["scored"] for n, r in stream["runs"].items()} == {"1": stream["events"]}  # every event, once
    assert set(stream["ceilings_eps"]) == set(STAGES) and all(v > 0 for v in stream["ceilings_eps"].values())
    assert stream["throughput_eps"] > 0 and stream["scaling"] == {}
    assert stream["ratio_to_consume_ceiling"] == pytest.approx(stream["throughput_eps"] / stream["ceilings_eps"]["consume"])
    figures = stream["latency_ms"]["load50"]
    assert figures["scored"] == figures["sent"] > 0 and 0 < figures["p50"] <= figures["p99"]
    assert set(stream["share_of_pipeline_time"]) == set(STAGES)
    bound = os.cpu_count() / sum(1 / v for v in stream["ceilings_eps"].values())  # all cores on the stages alone
    assert stream["stage_bound_eps"] == pytest.approx(bound)
    assert stream["runs"]["1"]["ratio_to_stage_bound"] == pytest.approx(stream["runs"]["1"]["throughput_eps"] / bound)
    assert stream["model_path"] == "stored_external" and list(stream["paths"]) == ["stored_external"]
    both = stream["stages_by_path"]  # the stages measured side by side for both model paths
    assert set(both) == {"eager", "stored_external"} and both["stored_external"]["ceilings_eps"] == stream["ceilings_eps"]
    for b in both.values():  # the produce stage through the configured client, beside the other one
        assert set(b["ceilings_eps"]) == set(STAGES)
        clients = b["alternatives_eps"]["produce"]
        assert set(clients) == {"librdkafka", "kafka-python"} and all(v > 0 for v in clients.values())
        assert clients[stream["producer"]] == b["ceilings_eps"]["produce"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the refusal cannot be shown here")
def test_without_cuda_the_real_check_refuses_and_says_why(tmp_path):
    run = subprocess.run([str(SCRIPT), "--json", str(tmp_path / "gpu.json")], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 2 and "no CUDA device" in run.stdout + run.stderr
    assert not (tmp_path / "gpu.json").exists()
