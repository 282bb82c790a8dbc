"""`lantern archive`: validated sessions from the input topic → date-partitioned parquet.

A separate consumer group (``lantern-archive``), so archiving never competes with scoring. Per
micro-batch: parse and validate → write ``OUT/date=YYYY-MM-DD/part-<uuid>.parquet`` (fsync'd,
atomically renamed) → commit. Invalid events are skipped here (the scorer dead-letters them).
At-least-once: a crash can write a batch twice; :func:`read_archive` keeps one row per session.
"""

from __future__ import annotations

import os
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lantern.dataset import schema
from lantern.dataset.questionnaire import Questionnaire
from lantern.settings.scoring import MAX_CLOCK_SKEW_S
from streaming.events import SessionEvent, events_to_sessions, parse_event


def write_partitioned(events: list[SessionEvent], out: Path) -> list[Path]:
    """One parquet file per completion date; each written to a temp name, fsync'd, renamed."""
    table = events_to_sessions(events)
    dates = pc.strftime(table.column("completed_at"), format="%Y-%m-%d").to_pylist()
    written = []
    for day in sorted(set(dates)):
        part = table.filter(pa.array([d == day for d in dates]))
        folder = out / f"date={day}"
        folder.mkdir(parents=True, exist_ok=True)
        final = folder / f"part-{uuid.uuid4().hex}.parquet"
        tmp = final.with_suffix(".tmp")
        pq.write_table(part, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        tmp.rename(final)
        written.append(final)
    return written


def archive_batch(values: list[bytes], q: Questionnaire, out: Path,
                  max_clock_skew_s: float = MAX_CLOCK_SKEW_S) -> tuple[int, int]:
    """(archived, skipped) for one batch of raw input events: a session the scorer would refuse
    (a completion time ahead of the clock included) is never training data."""
    not_after = datetime.now(timezone.utc) + timedelta(seconds=max_clock_skew_s)
    parsed = [parse_event(v, q, not_after=not_after) for v in values]
    good = [p for p in parsed if isinstance(p, SessionEvent)]
    if good:
        write_partitioned(good, out)
    return len(good), len(parsed) - len(good)


def read_archive(root: str | Path) -> pa.Table:
    """Every archived session once (redeliveries dropped), in the data contract's schema."""
    files = sorted(Path(root).glob("date=*/part-*.parquet"))
    if not files:
        return schema.SESSIONS.empty_table()
    table = pa.concat_tables(pq.read_table(f, schema=schema.SESSIONS) for f in files)
    ids = table.column("session_id").to_pylist()
    seen, keep = set(), []
    for i, sid in enumerate(ids):
        if sid not in seen:
            seen.add(sid)
            keep.append(i)
    return table.take(pa.array(keep))


def run_archive(cfg, q: Questionnaire, out: Path, group_id: str = "lantern-archive", max_events: int | None = None,
                idle_exit_s: float | None = None, log=lambda msg: None, metrics=None) -> tuple[int, int]:
    """The archive consumer group: (archived, skipped) sessions."""
    from streaming.kafka_io import run_group
    from streaming.loop import LoopOptions

    totals = [0, 0]

    def handle(records) -> None:
        archived, skipped = archive_batch([r.value for r in records], q, out)
        totals[0] += archived
        totals[1] += skipped

    run_group(cfg, group_id, handle, opts=LoopOptions(max_events, idle_exit_s, log=log, metrics=metrics))
    return totals[0], totals[1]
