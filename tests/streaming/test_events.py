"""Event parsing, validation, round trips and encodings — pure, no broker."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import numpy as np
import pytest

from lantern.settings.kafka import DLQ_TOPIC
from streaming.events import (
    EventError,
    SessionEvent,
    decode_probabilities,
    dlq_headers,
    events_to_sessions,
    parse_event,
    parse_event_untyped,
    score_bytes,
    sessions_to_events,
)
from streaming.testing import hostile_text_events


@pytest.fixture(scope="module")
def events(small_ds):
    return sessions_to_events(small_ds.sessions.slice(0, 300))


def test_sessions_round_trip_through_events(small_ds, events):
    parsed = [parse_event(value, small_ds.questionnaire) for _, value in events]
    assert all(isinstance(p, SessionEvent) for p in parsed)
    assert [k for k, _ in events] == [p.user_id.encode() for p in parsed]
    table = events_to_sessions(parsed)
    assert table.equals(small_ds.sessions.slice(0, 300))  # skipped (null) and "none of these" ([]) kept apart
    options = [a["option_ids"] for r in table.column("answers").to_pylist() for a in r]
    assert None in options and [] in options
    assert b'"option_ids":null' in b"".join(v for _, v in events)


def _mutate(raw: bytes, fn) -> bytes:
    body = json.loads(raw)
    fn(body)
    return json.dumps(body).encode()


def _first_single(q):
    return next(x for x in q.questions if x.kind == "single" and x.condition is None)


@pytest.mark.parametrize("kind", ["oversized", "bad_json", "deep_json", "unknown_schema_version", "wrong_types",
                                  "bad_time", "empty_answers", "unknown_question", "unknown_option",
                                  "single_select", "routing", "not_an_object"])
def test_every_poison_pill_is_an_error_with_its_kind(small_ds, events, kind):
    q, raw = small_ds.questionnaire, events[0][1]
    single = _first_single(q)
    routed = next(x for x in q.questions if x.condition)
    bad = {
        "oversized": raw + b" " * 70_000,
        "bad_json": raw[:-5],
        "deep_json": b"[" * 20_000 + b"]" * 20_000,  # under the size limit, past the parser's depth
        "unknown_schema_version": _mutate(raw, lambda b: b.update(schema_version=99)),
        "wrong_types": _mutate(raw, lambda b: b.update(user_id=42)),
        "bad_time": _mutate(raw, lambda b: b.update(completed_at="yesterday")),
        "empty_answers": _mutate(raw, lambda b: b.update(answers=[])),
        "unknown_question": _mutate(raw, lambda b: b["answers"].append({"question_id": "zz", "option_ids": []})),
        "unknown_option": _mutate(raw, lambda b: b.update(answers=[{"question_id": single.id, "option_ids": ["o99"]}])),
        "single_select": _mutate(raw, lambda b: b.update(
            answers=[{"question_id": single.id, "option_ids": ["o1", "o2"]}])),
        "routing": _mutate(raw, lambda b: b.update(answers=[{"question_id": routed.id, "option_ids": ["o1"]}])),
        "not_an_object": b"[1, 2, 3]",
    }[kind]
    got = parse_event(bad, q)
    assert isinstance(got, EventError), kind
    expected = {"deep_json": "bad_json", "bad_time": "wrong_types", "not_an_object": "wrong_types"}.get(kind, kind)
    assert got.kind == expected and got.message


@pytest.mark.parametrize("answers, field", [
    (["q01"], "answers[0]"),
    ([{"question_id": 3, "option_ids": []}], "answers[0].question_id"),
    ([{"question_id": "q01", "option_ids": "o1"}], "answers[0].option_ids"),
    ([{"question_id": "q01", "option_ids": ["o1", 2]}], "answers[0].option_ids"),
    ([{"question_id": "q01", "option_ids": ["o1", "o1"]}], "answers[0].option_ids"),
])
def test_each_answer_is_checked_and_the_error_names_its_field(small_ds, events, answers, field):
    got = parse_event(_mutate(events[0][1], lambda b: b.update(answers=answers)), small_ds.questionnaire)
    assert isinstance(got, EventError) and got.field == field, got


def _variants(raw: bytes) -> list[bytes]:
    """Valid and invalid neighbours of one event: every field retyped, emptied or dropped, and
    encodings the typed decoder and ``json`` might read differently."""
    body, out = json.loads(raw), [raw]
    for name in ("schema_version", "event_id", "session_id", "user_id", "completed_at", "answers"):
        for value in (None, True, 1, 1.0, "", "x", [], {}, float("nan"), 2 ** 70):
            out.append(json.dumps({**body, name: value}).encode())
        out.append(json.dumps({k: v for k, v in body.items() if k != name}).encode())
    first = body["answers"][0]
    for answer in ({**first, "option_ids": None}, {"question_id": first["question_id"]}, {**first, "extra": 1},
                   {**first, "question_id": 7}, {**first, "option_ids": [None]}, [first], "x"):
        out.append(json.dumps({**body, "answers": [answer] + body["answers"][1:]}).encode())
    answers = body["answers"]
    for i, a in enumerate(answers):  # contract checks: routing (a parent dropped), options, duplicates
        out.append(json.dumps({**body, "answers": answers[:i] + answers[i + 1:]}).encode())
        opts = a["option_ids"] or []
        for changed in (opts + opts[:1], opts + ["o1"], opts + ["o2"], ["o99"], []):
            out.append(json.dumps({**body, "answers": answers[:i] + [{**a, "option_ids": changed}]
                                   + answers[i + 1:]}).encode())
    out.append(json.dumps({**body, "answers": answers + answers[:1]}).encode())
    out.append(json.dumps({**body, "answers": [{**a, "option_ids": None} for a in answers]}).encode())
    out.append(json.dumps({**body, "answers": answers + [{"question_id": "zz", "option_ids": []}]}).encode())
    text = raw.decode()
    out += [raw[:-1], raw + b" ", b" " + raw, b"\xef\xbb\xbf" + raw, raw.replace(b'"u', b'"\xff', 1),
            text.replace('"user_id":"', '"user_id":"\\ud800', 1).encode(),  # a lone surrogate escape
            text.replace('{', '{"user_id":"dup",', 1).encode(),  # duplicate key: the last one counts
            text.replace('"schema_version":1', '"schema_version":1.0').encode(),
            text.replace('"schema_version":1', '"schema_version":1e0').encode(),
            text.replace("Z", "+02:00", 1).encode(), text.replace("Z", "", 1).encode(),
            raw.replace(b",", b" , "), text.encode("utf-16"), b"null", b"[]", b"{}"]
    out += [v for v, _ in hostile_text_events(raw)]  # legal JSON, not legal text
    out += [text.replace('{', '{"note\\udfff":"x",', 1).encode(),  # a key, of a field nobody reads
            text.replace('{', '{"note":["\\ud83d\\ude00", "\\udc00"],', 1).encode(),  # a pair is text, one alone not
            text.replace('"user_id":"', '"user_id":"\\u0085', 1).encode(),  # a C1 control, escaped
            text.replace('"user_id":"', '"user_id":"\u0085', 1).encode(),  # ... and raw (valid UTF-8)
            text.replace('"user_id":"', '"user_id":"\u00e9\u20ac', 1).encode()]  # printable non-ASCII: fine
    for when in ("9999-12-31T23:59:59Z", "0001-01-01T00:00:00+05:00", "9999-12-31T23:30:00-01:00",
                 "2026-11-30T12:10:00Z", "2026-11-30T12:20:00Z", "1900-01-01T00:00:00Z"):
        out.append(json.dumps({**body, "completed_at": when}).encode())
    return out


def test_the_typed_decoder_answers_exactly_as_the_reference_parser(small_ds, events):
    """parse_event (msgspec first) and parse_event_untyped (json) agree on every input: the same
    session, or the same error kind, message and field."""
    q, checked = small_ds.questionnaire, 0
    for _, raw in events[:40]:
        for variant in _variants(raw):
            assert parse_event(variant, q, not_after=NOT_AFTER) == parse_event_untyped(variant, q, not_after=NOT_AFTER), \
                variant[:200]
            checked += 1
    valid = sum(isinstance(parse_event(v, q, not_after=NOT_AFTER), SessionEvent) for v in _variants(events[0][1]))
    kinds = {getattr(parse_event(v, q, not_after=NOT_AFTER), "kind", "ok") for _, raw in events[:40]
             for v in _variants(raw)}
    assert checked > 5000 and valid > 5 and {"ok", "routing", "single_select", "unknown_option", "duplicate_answer",
                                               "repeated_option", "unknown_question", "empty_answers", "bad_json",
                                               "bad_text", "wrong_types", "future_time",
                                               "unknown_schema_version"} <= kinds


#: the scorer's clock plus its skew, for the tests that pass one
NOT_AFTER = datetime(2026, 11, 30, 12, 15, tzinfo=timezone.utc)


def test_text_that_is_not_unicode_is_refused_with_the_field_it_is_in(small_ds, events):
    """Lone UTF-16 surrogates (legal JSON escapes, not legal strings) and control characters in
    ids are ``bad_text``; every message and DLQ header built from them encodes as UTF-8."""
    q = small_ds.questionnaire
    variants = hostile_text_events(events[0][1])
    assert len(variants) == 5
    for raw, field in variants:
        got = parse_event(raw, q)
        assert (got.kind, got.field) == ("bad_text", field), got
        got.message.encode("utf-8")  # no surrogate leaked into the reason
        assert all(isinstance(v, bytes) for _, v in dlq_headers(got, "in", 0, 1))
    emoji = _mutate(events[0][1], lambda b: b.update(user_id="u-\U0001f600-é"))  # astral and accented: text
    assert isinstance(parse_event(emoji, q), SessionEvent)
    c1 = _mutate(events[0][1], lambda b: b["answers"][0].update(question_id="q\x85"))
    assert (parse_event(c1, q).kind, parse_event(c1, q).field) == ("bad_text", "answers[0].question_id")


def test_completion_times_past_the_clock_skew_or_outside_utc_years_are_refused(small_ds, events):
    q = small_ds.questionnaire
    at = lambda when: _mutate(events[0][1], lambda b: b.update(completed_at=when))  # noqa: E731
    future = parse_event(at("9999-12-31T23:59:59Z"), q, not_after=NOT_AFTER)
    assert (future.kind, future.field) == ("future_time", "completed_at") and "days past" in future.message
    assert isinstance(parse_event(at("2026-11-30T12:14:59Z"), q, not_after=NOT_AFTER), SessionEvent)
    assert parse_event(at("2026-11-30T12:15:01Z"), q, not_after=NOT_AFTER).kind == "future_time"
    old = parse_event(at("1900-01-01T00:00:00Z"), q, not_after=NOT_AFTER)  # old: accepted (backfills, replays)
    assert isinstance(old, SessionEvent) and old.completed_at.year == 1900
    for edge in ("0001-01-01T00:00:00+05:00", "9999-12-31T23:30:00-01:00"):  # no UTC time: not a crash
        got = parse_event(at(edge), q)
        assert (got.kind, got.field) == ("wrong_types", "completed_at"), got
    ahead = parse_event(at("2026-11-30T14:15:00+02:00"), q, not_after=NOT_AFTER)  # 12:15 UTC: compared in UTC
    assert isinstance(ahead, SessionEvent) and ahead.completed_at.tzinfo == timezone.utc


def test_an_internal_errors_headers_carry_the_exception(small_ds):
    from streaming.events import internal_error

    error = internal_error(KeyError("\ud800"), "format")
    headers = dict(dlq_headers(error, "in", 2, 9))
    assert headers["lantern.error.class"] == b"internal" and headers["lantern.error.exception"] == b"KeyError"
    assert headers["lantern.error.message"].startswith(b"format: KeyError: ")
    assert b"\\ud800" in headers["lantern.error.message"]  # escaped, not refused


def test_scores_carry_exact_float32_probabilities(small_ds, events):
    q = small_ds.questionnaire
    event = parse_event(events[0][1], q)
    probs = np.random.default_rng(0).random(q.n_keys).astype(np.float32)
    body = json.loads(score_bytes(event, probs, q, "v7", 0.5, ["engagement"], 0.3,
                                  datetime(2026, 11, 22, tzinfo=timezone.utc)))
    np.testing.assert_array_equal(decode_probabilities(body["probabilities_f32"]), probs)
    assert body["predicted_keys"] == [q.response_keys[i] for i in np.flatnonzero(probs >= 0.5)]
    assert (body["session_id"], body["model_version"], body["questionnaire_hash"]) == (
        event.session_id, "v7", q.content_hash)


def test_dlq_headers_say_what_and_where():
    headers = dict(dlq_headers(EventError("bad_json", "not valid JSON", ""), DLQ_TOPIC[:-4], 3, 1234))
    assert headers["lantern.error.class"] == b"bad_json"
    assert headers["lantern.source.partition"] == b"3" and headers["lantern.source.offset"] == b"1234"


def test_the_documented_error_classes_are_the_codes():
    import re
    from pathlib import Path

    from streaming.events import ERROR_CLASSES

    doc = (Path(__file__).resolve().parents[2] / "docs" / "events.md").read_text()
    table = doc.split("| class | when |", 1)[1].split("\n\n", 1)[0]
    documented = {name for line in table.splitlines()[2:] for name in re.findall(r"`([a-z_]+)`", line.split("|")[1])}
    assert documented == set(ERROR_CLASSES)
    validate_source = (Path(__file__).resolve().parents[2] / "lantern" / "dataset" / "validate.py").read_text()
    contract_kinds = set(re.findall(r'Problem\("([a-z_]+)"', validate_source))  # every kind the contract raises
    assert contract_kinds == {"unknown_question", "duplicate_answer", "unknown_option", "repeated_option",
                              "single_select", "routing"}
    assert contract_kinds <= set(ERROR_CLASSES)


def test_dead_letters_keep_the_producers_own_headers_first():
    original = (("traceparent", b"00-abc-def-01"), ("lantern.error.class", b"old"), ("tenant", b"t1"))
    headers = dlq_headers(EventError("bad_json", "not valid JSON", ""), "in", 0, 7, original)
    assert headers[:2] == [("traceparent", b"00-abc-def-01"), ("tenant", b"t1")]
    assert [v for k, v in headers if k == "lantern.error.class"] == [b"bad_json"]  # fresh, not doubled


def _documented_schemas() -> dict:
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "events.md").read_text()
    blocks = [json.loads(b) for b in re.findall(r"```json\n(.*?)\n```", doc, re.S) if '"$schema"' in b]
    return {b["title"]: b for b in blocks}


def test_the_documented_schemas_match_what_the_code_reads_and_writes(small_ds, events):
    from datetime import datetime, timezone

    import jsonschema

    schemas = _documented_schemas()
    inputs, scores = schemas["survey.sessions.completed v1"], schemas["lantern.scores v1"]
    for _, value in events[:50]:
        jsonschema.validate(json.loads(value), inputs)  # what replay writes (skips as null included)
    q = small_ds.questionnaire
    event = parse_event(events[0][1], q)
    now = datetime.now(timezone.utc)
    probs = np.full(q.n_keys, 0.25, np.float32)
    for gate in (0.3, None):  # a number, or null where the gate does not apply
        jsonschema.validate(json.loads(score_bytes(event, probs, q, "v1", 0.4, ["engagement"], gate, now)), scores)
    body = json.loads(events[0][1])
    hostile = [json.loads(raw) for raw, _ in hostile_text_events(events[0][1])]
    for bad in [{**body, "schema_version": True}, {**body, "answers": "x"},
                {k: v for k, v in body.items() if k != "user_id"}] + hostile:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, inputs)
        assert isinstance(parse_event(json.dumps(bad).encode(), q), EventError)  # the code refuses it too
