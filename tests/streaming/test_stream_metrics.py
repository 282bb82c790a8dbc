"""Metrics as an operator sees them: after a known stream (N valid + M bad events) through the
whole loop, a scrape of the Prometheus endpoint shows exactly those counts, and `lantern top`,
run in a terminal (tmux), shows the same numbers."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from app.top import View, scrape
from streaming.events import sessions_to_events
from streaming.metrics import Metrics, serve_metrics
from streaming.testing import MemoryConsumer, MemorySink, memory_source, run_in_memory

BAD = [(b"k", b"{not json"), (b"k", b'{"schema_version": 7}'), (b"k", b"x" * 70_000)]
N_VALID = 120


@pytest.fixture(scope="module")
def endpoint(small_ds, scorer):
    """A finished stream of N_VALID sessions + the BAD events, its metrics on a loopback endpoint."""
    registry = CollectorRegistry()
    metrics = Metrics.prometheus(registry)
    scorer.metrics = metrics
    events = sessions_to_events(small_ds.sessions.slice(0, N_VALID))
    records = memory_source(events[:50] + BAD + events[50:], partitions=2)
    try:
        run_in_memory(scorer, records, MemorySink(), batch_size=32, consumer=MemoryConsumer(records, 32),
                      metrics=metrics)
    finally:
        scorer.metrics = None
    server = serve_metrics(0, registry=registry)
    yield f"http://127.0.0.1:{server.server_port}/metrics"
    server.shutdown()


def _families(url: str) -> dict:
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def _value(families, name, suffix="_total", **labels) -> float:
    return sum(s.value for s in families[name].samples
               if s.name == name + suffix and all(s.labels.get(k) == v for k, v in labels.items()))


def test_a_scrape_shows_exactly_the_streams_counts(endpoint, scorer):
    f = _families(endpoint)
    assert _value(f, "lantern_events_consumed", topic="survey.sessions.completed") == N_VALID + len(BAD)
    assert _value(f, "lantern_events_scored") == N_VALID
    for kind in ("bad_json", "unknown_schema_version", "oversized"):
        assert _value(f, "lantern_events_dead_lettered", error_class=kind) == 1
    assert _value(f, "lantern_events_dead_lettered") == len(BAD)
    assert _value(f, "lantern_events_degraded") == 0
    assert _value(f, "lantern_sessions_looked_up") == N_VALID
    assert _value(f, "lantern_batch_size_events", "_sum") == N_VALID + len(BAD)
    assert _value(f, "lantern_completion_to_score_seconds", "_count") == N_VALID
    assert _value(f, "lantern_model_forward_seconds", "_count") == _value(f, "lantern_feature_lookup_seconds",
                                                                            "_count") > 0
    assert _value(f, "lantern_model_info", "", model_version="v-test") == 1
    lags = [s.value for s in f["lantern_consumer_lag_events"].samples]
    assert len(lags) == 2 and all(v == 0 for v in lags)  # both partitions drained
    with_gate = _value(f, "lantern_session_gate", "_count")
    assert 0 < with_gate <= N_VALID  # users without external data have no gate


def test_the_top_view_computes_the_same_figures(endpoint):
    samples, down = scrape([endpoint])
    figures = View(samples, down=down).figures()
    assert not down
    assert (figures["scored"], figures["dead_lettered"], figures["consumed"]) == (N_VALID, len(BAD), N_VALID + 3)
    assert figures["dlq_by_class"] == {"bad_json": 1, "unknown_schema_version": 1, "oversized": 1}
    assert figures["model_version"] == "v-test" and figures["lag_total"] == 0


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux missing: `make test` installs it (Makefile servers)")
def test_lantern_top_in_a_terminal_shows_the_numbers(endpoint):
    """As a person runs it: the live view in a real terminal, read back with tmux capture-pane."""
    session = f"lantern-top-{uuid.uuid4().hex[:8]}"
    lantern = Path(sys.executable).with_name("lantern")
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "160", "-y", "40",
                    f"{lantern} top --url {endpoint} --interval 0.5"], check=True)
    try:
        screen, deadline = "", time.monotonic() + 60
        while time.monotonic() < deadline and "lag by partition" not in screen:
            time.sleep(0.5)
            screen = subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True,
                                    text=True).stdout
        lines = {line.split()[0]: line.split() for line in screen.splitlines() if line.split()}
        assert lines["scored"][1] == str(N_VALID), screen
        assert lines["dead-lettered"][1] == str(len(BAD)), screen
        assert "v-test" in screen and "bad_json" in screen and "oversized" in screen, screen
        assert subprocess.run(["tmux", "has-session", "-t", session]).returncode == 0  # still live
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)


def test_two_registries_in_one_process_keep_their_own_counts_with_feast_imported():
    """Feast sets PROMETHEUS_MULTIPROC_DIR when imported, which would make every registry in the
    process share values by metric name (lantern/__init__.py guards against it), and its children
    would write into Feast's temp dir: neither happens."""
    import os
    import subprocess

    import feast  # noqa: F401 - sets the variable in this process, as every scorer's import of it does

    first, second = CollectorRegistry(), CollectorRegistry()
    Metrics.prometheus(first).polled({"t": 5}, 5)
    Metrics.prometheus(second).polled({"t": 7}, 7)
    assert first.get_sample_value("lantern_events_consumed_total", {"topic": "t"}) == 5
    assert second.get_sample_value("lantern_events_consumed_total", {"topic": "t"}) == 7
    child = subprocess.run([sys.executable, "-c", "import lantern, os; from prometheus_client import values; "
                            "print(values.ValueClass.__name__, os.environ.get('PROMETHEUS_MULTIPROC_DIR'))"],
                           capture_output=True, text=True, env=os.environ, timeout=60)
    assert child.stdout.split() == ["MutexValue", "None"], child.stdout + child.stderr
