"""`lantern bench stream`: its measures on known inputs. Its run end to end (a child process:
embedded broker, Feast, Ray Serve with a scorer actor), whose JSON must account for every event,
is the GPU check's dry run (tests/lantern/test_gpu_check.py): one run of the command for both."""

from __future__ import annotations

import os
from datetime import datetime, timezone

import numpy as np
import pytest

from devtools.bench_stream import StreamBench, _section, _session_id, latency_figures, sustained_eps
from devtools.stream_stages import STAGES, StageTimes


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
