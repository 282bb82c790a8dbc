"""Property-based tests (Hypothesis): no input can crash the scorer or stall a partition.

Inputs are generated, not picked: arbitrary bytes; arbitrary JSON values; and events near the
contract — the questionnaire's own ids beside arbitrary text, every field retyped or dropped,
duplicate keys, huge and out-of-range numbers, deep nesting, lone surrogates and control
characters, serialized as ASCII JSON, as UTF-8, as invalid UTF-8, with whitespace, truncated.
The invariants: the parser returns a session or a documented error class (never raises), the
typed decoder agrees with the reference parser, and the whole in-memory loop ends with every
record scored or dead-lettered and every partition committed to its end.

Budget: the ``ci`` profile (tests/conftest.py) runs a fixed-seed sample in ``make test``; a long
run: ``HYPOTHESIS_PROFILE=fuzz pytest -n 0 -p no:cacheprovider tests/streaming/test_fuzz.py``
(docs/reliability.md has its figures).
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import hypothesis.strategies as st
from hypothesis import given, note

from lantern.settings.kafka import DLQ_TOPIC, SCORES_TOPIC
from streaming.events import ERROR_CLASSES, SessionEvent, dlq_headers, parse_event, parse_event_untyped
from streaming.testing import MemoryConsumer, MemorySink, memory_source, run_in_memory

NOT_AFTER = datetime.now(timezone.utc) + timedelta(minutes=15)

#: characters that break naive text handling, drawn often beside arbitrary ones
HOSTILE = ["\ud800", "\udbff", "\udc00", "\udfff", "\x00", "\x1f", "\x7f", "\x85", "\u2028", "\ufeff", "\U0001f600",
           "é", '"', "\\", "/", "\n"]
chars = st.one_of(st.sampled_from(HOSTILE), st.characters(exclude_categories=()))
texts = st.text(chars, max_size=24)
numbers = st.one_of(st.integers(), st.integers(min_value=-(2 ** 80), max_value=2 ** 80),
                    st.floats(allow_nan=False, allow_infinity=False), st.sampled_from([0, 1, -1, 1.0, 2, 10 ** 30]))
scalars = st.one_of(st.none(), st.booleans(), numbers, texts)
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=5),
                                                           st.dictionaries(texts, inner, max_size=5)), max_leaves=20)
zones = st.sampled_from([timezone.utc, timezone(timedelta(hours=14)), timezone(timedelta(hours=-12, minutes=-30))])
times = st.one_of(st.datetimes(timezones=zones).map(lambda d: d.isoformat().replace("+00:00", "Z")),
                  st.sampled_from(["9999-12-31T23:59:59Z", "0001-01-01T00:00:00+05:00", "2026-01-05T10:00:00",
                                   "2026-02-30T00:00:00Z", "yesterday", "2026-01-05T10:00:00\x00Z"]),
                  texts)


def _near_events(q):
    """Event bodies close to the contract: the questionnaire's ids and arbitrary values mixed."""
    qids = st.one_of(st.sampled_from([x.id for x in q.questions]), texts)
    opts = st.one_of(st.sampled_from(sorted({o for x in q.questions for o in x.option_ids})), texts)
    answer = st.one_of(
        st.fixed_dictionaries({"question_id": qids, "option_ids": st.one_of(st.none(), st.lists(opts, max_size=4))},
                              optional={"extra": json_values}),
        json_values)
    ids = st.one_of(st.text(st.characters(min_codepoint=48, max_codepoint=122), min_size=1, max_size=12), texts)

    @st.composite
    def body(draw):
        sid = draw(ids)
        event = {"schema_version": draw(st.one_of(st.just(1), json_values)), "event_id": sid, "session_id": sid,
                 "user_id": draw(ids), "completed_at": draw(times), "answers": draw(st.lists(answer, max_size=8))}
        for name in draw(st.lists(st.sampled_from(sorted(event)), max_size=2, unique=True)):  # retype or drop a field
            if draw(st.booleans()):
                event[name] = draw(json_values)
            else:
                event.pop(name)
        if draw(st.booleans()):
            event.update(draw(st.dictionaries(texts, json_values, max_size=3)))  # fields nobody reads
        return event
    return body()


@st.composite
def _serialized(draw, bodies):
    """A body as the bytes some producer might send."""
    value = draw(bodies)
    style = draw(st.sampled_from(["ascii", "utf8", "surrogatepass", "duplicate", "spaced", "truncated"]))
    if style == "utf8":  # raw UTF-8 where it can be (a surrogate cannot: replaced)
        return json.dumps(value, ensure_ascii=False).encode("utf-8", "replace")
    if style == "surrogatepass":  # UTF-8-encoded surrogates: not UTF-8 at all
        return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")
    raw = json.dumps(value)
    if style == "duplicate" and isinstance(value, dict) and value:
        key = draw(st.sampled_from(sorted(value)))
        raw = "{" + json.dumps(key) + ":" + json.dumps(draw(json_values)) + "," + raw[1:]  # the first of two
    elif style == "spaced":
        raw = raw.replace(",", " ,\t").replace(":", " : ")
    elif style == "truncated":
        raw = raw[:draw(st.integers(0, max(0, len(raw) - 1)))]
    return raw.encode()


def _extremes():
    """Hand-made byte strings: huge numbers, deep nesting, big strings, near the size limit."""
    return st.sampled_from([b"1e999", b"-1e999", b'{"schema_version": 1e400}', b'{"schema_version": ' + b"9" * 5000 + b"}",
                            b"[" * 5000 + b"]" * 5000, b'{"a":' * 3000 + b"1" + b"}" * 3000, b'"' + b"x" * 65_000 + b'"',
                            b"\x00" * 10, b"\xef\xbb\xbf{}", b"", b" ", b"nul", b'{"answers": [' + b"{}," * 20_000 + b"{}]}"])


def _inputs(q):
    return st.one_of(st.binary(max_size=256), _serialized(json_values), _serialized(_near_events(q)), _extremes())


def _check_outcome(raw: bytes, q) -> None:
    got = parse_event(raw, q, not_after=NOT_AFTER)
    assert got == parse_event_untyped(raw, q, not_after=NOT_AFTER)  # the fast path changes nothing
    if not isinstance(got, SessionEvent):
        assert got.kind in ERROR_CLASSES and got.kind != "internal", got
        got.message.encode("utf-8")  # every reason is text a header, a log line and a 400 can carry
        got.field.encode("utf-8")
        dlq_headers(got, "in", 0, 0)
    else:  # what is accepted is text all the way: ids encode, times are UTC and not ahead of the clock
        (got.user_id + got.session_id).encode("utf-8")
        assert got.completed_at.tzinfo == timezone.utc and got.completed_at <= NOT_AFTER


def test_the_parser_never_raises_and_answers_as_the_reference(small_ds):
    q = small_ds.questionnaire

    @given(_inputs(q))
    def check(raw):
        note(repr(raw[:300]))
        _check_outcome(raw, q)
    check()


def test_the_whole_loop_scores_or_dead_letters_every_record_and_commits_to_the_end(small_ds, scorer):
    """Batches of generated records, valid events among them, through poll → score → write →
    flush → commit: every record ends as a score or a dead letter of a documented class (not
    ``internal``: a fuzz find), and the consumer's committed offsets are the log ends."""
    from streaming.events import sessions_to_events

    q, valid = small_ds.questionnaire, sessions_to_events(small_ds.sessions.slice(0, 50))

    @given(st.lists(st.one_of(_inputs(q), st.integers(0, len(valid) - 1).map(lambda i: valid[i][1])), min_size=1, max_size=24),
           st.integers(1, 3), st.integers(1, 16))
    def check(values, partitions, batch):
        records = memory_source([(None, v) for v in values], partitions=partitions)
        consumer = MemoryConsumer(records, batch)
        sink = run_in_memory(scorer, records, MemorySink(), batch_size=batch, consumer=consumer)
        dead = [dict(h)["lantern.error.class"].decode() for _, _, h in sink[DLQ_TOPIC]]
        assert len(sink[SCORES_TOPIC]) + len(dead) == len(records)
        assert set(dead) <= set(ERROR_CLASSES) - {"internal"}, dead
        assert consumer.committed == {tp: rs[-1].offset + 1 for tp, rs in consumer.parts.items()}
    check()
