"""`lantern demo` end to end at a small size, in a child process like `make demo`: every step runs,
the printed figures are the report's, nothing is lost, and nothing outlives it (also on Ctrl-C)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.slow

BAD = 12
MARK = "LANTERN_TEST_RUN"  # every process the demo starts inherits it: how we find them afterwards


def started_by(run: str) -> set[int]:
    """Live processes carrying this run's mark (broker, Ray's processes, workers), not the
    processes of other tests or programs on the machine."""
    found = set()
    for p in psutil.process_iter():
        try:
            if p.environ().get(MARK) == run and p.status() != psutil.STATUS_ZOMBIE:
                found.add(p.pid)
        except psutil.Error:
            continue
    return found


def assert_nothing_left(run: str, timeout_s: float = 60.0) -> None:
    """Every process the run started has exited within ``timeout_s`` (Ray's agents exit on their own
    poll after the raylet: seconds, more while another Ray test loads the cores)."""
    deadline = time.monotonic() + timeout_s
    while (left := started_by(run)) and time.monotonic() < deadline:
        time.sleep(0.5)
    described = []
    for pid in left:
        try:
            described.append(" ".join(psutil.Process(pid).cmdline())[:120])
        except psutil.Error:
            continue
    assert not described, f"processes outlived the demo: {described}"


def demo_env(tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP"}  # the demo starts its own broker
    env[MARK] = str(tmp_path)
    env.update(LANTERN_PATHS__DATA=str(tmp_path / "data"), LANTERN_PATHS__REPORTS=str(tmp_path / "reports"),
               LANTERN_FEATURES__REPO=str(tmp_path / "feast"), LANTERN_DEMO__BAD_EVENTS=str(BAD),
               LANTERN_DEMO__USERS="1200", LANTERN_DEMO__EPOCHS="1", LANTERN_DEMO__SESSIONS="600",
               LANTERN_DEMO__RATE="300", COLUMNS="200")
    return env


def test_demo_runs_every_step_and_prints_what_it_reports(tmp_path):
    run = subprocess.run([sys.executable, "-m", "app.cli", "demo"], env=demo_env(tmp_path),
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert_nothing_left(str(tmp_path))

    root = tmp_path / "reports" / "demo"
    summary = json.loads((root / "demo.json").read_text())["summary"]
    stream = summary["stream"]
    assert stream["sessions_replayed"] == 600 + BAD and stream["bad_events_sent"] == BAD
    assert stream["sessions_scored"] == 600  # every valid session scored once
    assert stream["dead_lettered"] == BAD  # every broken one dead-lettered, with its reason
    assert set(stream["dlq_reasons"]) == {"bad_json", "unknown_question", "wrong_types", "bad_text", "future_time"}
    assert stream["feast"]["sample_matches"] == stream["feast"]["sampled"] > 0  # scores readable from Feast
    assert 0 < stream["latency_p50_ms"] <= stream["latency_p99_ms"]
    assert stream["with_external_context"] > stream["sessions_scored"] / 2  # features were found online

    from app.report import PLOTS, headline

    markdown = (root / "summary.md").read_text()
    for label, value in headline(summary):
        assert f"{label:>30}: {value}" in run.stdout  # printed …
        assert f"| {label} | {value} |" in markdown  # … and the same in the report
    for name in PLOTS:
        assert (root / name).stat().st_size > 5000, name
    ablation = json.loads((root / "demo.json").read_text())["ablation"]
    assert set(ablation["variants"]) == {"survey_only", "external_only", "early_fusion", "lantern", "logistic",
                                         "answer_rates", "oracle"}  # beside the models: the reference and the ceiling
    assert ablation["variants"]["lantern"]["training"]["trainer"].startswith("Ray Train")
    variants = ablation["variants"]
    assert variants["oracle"]["log_loss"] < variants["lantern"]["log_loss"] < variants["answer_rates"]["log_loss"]
    assert "never_presented" in variants["lantern"] and "lantern - survey_only" in ablation["comparisons"]["hidden"]


def test_ctrl_c_leaves_no_process_behind(tmp_path):
    # as from a terminal: a runner started in the background (nohup, `cmd &`) hands its children
    # SIGINT ignored, and Python then never turns Ctrl-C into KeyboardInterrupt
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "demo"], env=demo_env(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        for line in proc.stdout:  # interrupt once Ray and the broker are both up
            if "train with Ray Train" in line:
                break
        time.sleep(8)
        assert proc.poll() is None, "the demo ended before it could be interrupted"
        running = started_by(str(tmp_path))
        assert len(running) >= 3, running  # the marker finds them: the broker, Ray's processes, the demo
        proc.send_signal(signal.SIGINT)
        rest = proc.communicate(timeout=120)[0]
        assert proc.returncode == 130, rest[-2000:]  # the CLI's exit code for an interrupt
        # … through the CLI's own exit, not Typer's SystemExit(130): finalizing the interpreter
        # after an interrupt inside ray.init crashed with SIGSEGV (app/cli.py)
        assert "interrupted" in rest, rest[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert_nothing_left(str(tmp_path))
