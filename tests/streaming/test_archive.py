"""The archive round-trips: replayed sessions → archive group → parquet that passes the
data-contract validator and equals the replayed sessions."""

from __future__ import annotations

import pyarrow.compute as pc

from lantern.dataset.validate import validate_sessions
from streaming.archive import read_archive, run_archive, write_partitioned
from streaming.events import parse_event, sessions_to_events
from streaming.kafka_io import replay
from tests.streaming.test_kafka_scorer import topics


def _sorted(table):
    return table.take(pc.sort_indices(table, [("session_id", "ascending")]))


def test_archive_round_trips_through_the_broker(small_ds, broker, tmp_path):
    cfg = topics(broker)
    sessions = small_ds.sessions.slice(0, 250)
    replay(cfg, sessions_to_events(sessions)[:100] + [(b"k", b"{bad")] + sessions_to_events(sessions)[100:],
           progress=False)
    archived, skipped = run_archive(cfg, small_ds.questionnaire, tmp_path, group_id=f"archive-{cfg.group_id}",
                                    max_events=251, idle_exit_s=20)
    assert (archived, skipped) == (250, 1)
    assert {p.name.split("=")[1] for p in tmp_path.glob("date=*")} == set(
        pc.strftime(sessions.column("completed_at"), format="%Y-%m-%d").to_pylist())
    table = read_archive(tmp_path)
    validate_sessions(table, small_ds.questionnaire)
    assert _sorted(table).equals(_sorted(sessions))


def test_a_batch_written_twice_reads_back_once(small_ds, tmp_path):
    events = [parse_event(v, small_ds.questionnaire) for _, v in sessions_to_events(small_ds.sessions.slice(0, 30))]
    write_partitioned(events, tmp_path)
    write_partitioned(events[:10], tmp_path)  # a redelivered batch after a crash
    table = read_archive(tmp_path)
    assert table.num_rows == 30
    validate_sessions(table, small_ds.questionnaire)
