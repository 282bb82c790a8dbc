"""`lantern bench stream`: its measures on known inputs, and one small run end to end in a child
process (embedded broker, Feast, Ray Serve with 2 scorer actors) whose JSON must account for every
event. The 1-actor run end to end is the GPU check's dry run (tests/lantern/test_gpu_check.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timezone

import numpy as np
import pytest

from devtools.bench_stream import StreamBench, _section, _session_id, latency_figures, sustained_eps
from devtools.stream_stages import STAGES, StageTimes

pytestmark = pytest.mark.slow


def test_sustained_rate_skips_the_warm_up_and_latency_matches_by_session():
    # 20 slow scores (warm-up: the first 5 % of 400), then 380 at one per 2 ms
    stamps = list(range(0, 20_000, 1000)) + [20_000 + 2 * i for i in range(380)]
    assert sustained_eps(stamps) == pytest.approx(500, rel=0.01)
    sent = {b"s1": 1000, b"s2": 1000, b"s3": 1000}
    got = latency_figures(sent, [(1010, b"s1"), (1100, b"s2"), (1050, b"other")])
    assert (got["scored"], got["sent"], got["p50"]) == (2, 3, 55.0)


def test_the_session_id_is_read_from_a_real_score_record():
    from lantern.dataset.questionnaire import Questionnaire
    from lantern.dataset.simulate import SimConfig, simulate
    from streaming.events import SessionEvent, score_bytes

    q: Questionnaire = simulate(SimConfig(users=100)).questionnaire
    event = SessionEvent("sess-7", "user-3", datetime.now(timezone.utc), ())
    value = score_bytes(event, np.zeros(q.n_keys, np.float32), q, "v0001", 0.5, [], None, datetime.now(timezone.utc))
    assert _session_id(value) == b"sess-7"


def test_stage_shares_are_seconds_per_event_over_the_pipelines():
    times = StageTimes(1000, {"consume": 0.1, "model": 0.5})
    assert times.ceilings_eps() == {"consume": 10_000, "model": 2000}
    assert times.shares(1000) == pytest.approx({"consume": 0.1, "model": 0.5})
    assert times.bound_eps(cores=2) == pytest.approx(2 * 1000 / 0.6)  # both cores on these stages alone


def test_each_actor_count_is_scaled_against_the_first_and_held_to_the_stage_bound():
    stages = StageTimes(1000, {stage: 0.01 for stage in STAGES})
    runs = {1: {"throughput_eps": 1000.0, "scored": 1000, "latency_ms": {"load50": {"p99": 9.0}}},
            2: {"throughput_eps": 1500.0, "scored": 1000}}
    section = _section(StreamBench(actors=(1, 2)), stages, runs)
    bound = stages.bound_eps(os.cpu_count() or 1)
    assert section["scaling"] == {"2_vs_1": 1.5} and section["throughput_eps"] == 1000.0
    assert section["runs"]["2"] == {"throughput_eps": 1500.0, "scored": 1000, "ratio_to_stage_bound": 1500 / bound}
    assert section["latency_ms"] == {"load50": {"p99": 9.0}} and "latency_ms" not in section["runs"]["1"]


def test_bench_stream_end_to_end_with_two_actors(tmp_path):
    out = tmp_path / "bench_stream.json"
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP"}  # its own embedded broker
    env.update(LANTERN_PATHS__REPORTS=str(tmp_path / "reports"), COLUMNS="200")
    run = subprocess.run([sys.executable, "-m", "app.cli", "bench", "stream", "--events", "1000",
                          "--actors", "2", "--latency-seconds", "2", "--paths", "stored_external",
                          "--json", str(out)],
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert set(result["ceilings_eps"]) == set(STAGES) and all(v > 0 for v in result["ceilings_eps"].values())
    assert {n: r["scored"] for n, r in result["runs"].items()} == {"2": 1000}  # every event, once
    assert result["throughput_eps"] > 0 and result["scaling"] == {}
    assert result["ratio_to_consume_ceiling"] == pytest.approx(result["throughput_eps"]
                                                               / result["ceilings_eps"]["consume"])
    for load in ("load50", "load90"):
        figures = result["latency_ms"][load]
        assert figures["scored"] == figures["sent"] > 0 and 0 < figures["p50"] <= figures["p99"]
    assert set(result["share_of_pipeline_time"]) == set(STAGES)
    bound = os.cpu_count() / sum(1 / v for v in result["ceilings_eps"].values())  # all cores on the stages alone
    assert result["stage_bound_eps"] == pytest.approx(bound)
    assert result["runs"]["2"]["ratio_to_stage_bound"] == pytest.approx(result["runs"]["2"]["throughput_eps"]
                                                                        / result["stage_bound_eps"])
    assert result["model_path"] == "stored_external" and list(result["paths"]) == ["stored_external"]
    both = result["stages_by_path"]  # the stages measured side by side for both model paths
    assert set(both) == {"eager", "stored_external"}
    assert both["stored_external"]["ceilings_eps"] == result["ceilings_eps"]
    assert all(set(b["ceilings_eps"]) == set(STAGES) for b in both.values())
    for b in both.values():  # the produce stage through the configured client, beside the other one
        clients = b["alternatives_eps"]["produce"]
        assert set(clients) == {"librdkafka", "kafka-python"} and all(v > 0 for v in clients.values())
        assert clients[result["producer"]] == b["ceilings_eps"]["produce"]
