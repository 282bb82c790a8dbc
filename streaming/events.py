"""Event formats of the stream, as pure functions (no Kafka here; see docs/events.md).

* ``survey.sessions.completed``: one completed session (data contract) + ``schema_version`` and
  ``event_id`` (= ``session_id``), JSON, key = ``user_id``.
* ``lantern.scores``: the scores of one session; probabilities are base64 of little-endian
  float32 in response-key order (the questionnaire hash names that order).
* ``survey.sessions.completed.dlq``: the original bytes plus headers saying what was wrong and
  where the event came from.

Parsing returns data, never raises: a :class:`SessionEvent` or an :class:`EventError`.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import datetime, timezone

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lantern.dataset import schema
from lantern.dataset.questionnaire import Questionnaire
from lantern.dataset.validate import answers_problem
from lantern.errors import Problem

SCHEMA_VERSION = 1
MAX_EVENT_BYTES = 64 * 1024


@dataclass(frozen=True)
class SessionEvent:
    session_id: str
    user_id: str
    completed_at: datetime  # timezone-aware UTC
    answers: tuple[tuple[str, tuple[str, ...] | None], ...]  # None: presented, skipped


#: why an event cannot be scored: ``kind`` (one of ERROR_CLASSES), ``message``, ``field``
EventError = Problem


#: every class an input event can be dead-lettered with (docs/events.md lists the same set: tested)
ERROR_CLASSES = ("oversized", "bad_json", "wrong_types", "unknown_schema_version", "empty_answers", "key_mismatch",
                 "unknown_question", "unknown_option", "duplicate_answer", "repeated_option", "single_select",
                 "routing")

_is_str = str.__instancecheck__  # isinstance(x, str) as a C function, for map()


def _not_json(constant: str):
    raise ValueError(f"{constant} is not a JSON value")


def _wrong(field: str, expected: str, value) -> EventError:
    return EventError("wrong_types", f"{field} must be {expected}, got {type(value).__name__}", field)


class _Answer(msgspec.Struct, gc=False):  # strings only: no reference cycles, so not tracked by the collector
    question_id: str
    option_ids: tuple[str, ...] | None = None  # None or absent: presented, skipped


class _Event(msgspec.Struct, gc=False):  # the input event's shape, for the typed decoder (unknown fields ignored)
    schema_version: int
    event_id: str
    session_id: str
    user_id: str
    completed_at: str
    answers: list[_Answer]


_decode_event = msgspec.json.Decoder(_Event).decode


def _plain(value):
    """msgspec's hook for what it does not encode itself: numpy scalars (thresholds, gates)."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


_encode_json = msgspec.json.Encoder(enc_hook=_plain).encode  # compact UTF-8 JSON (score records)


def parse_event(raw: bytes, q: Questionnaire, max_bytes: int = MAX_EVENT_BYTES) -> SessionEvent | EventError:
    """Bytes of one input event → a validated session, or the reason it is not one.

    A typed decoder (msgspec: strict UTF-8 and JSON, types checked in C) takes every well-formed
    event; anything it refuses, or that fails a check after it, is parsed again by
    :func:`parse_event_untyped`, which names exactly what is wrong. So the outcome for every input
    is :func:`parse_event_untyped`'s (tested), and only valid events take the fast path."""
    if len(raw) > max_bytes:
        return EventError("oversized", f"event is {len(raw)} bytes, the limit is {max_bytes}")
    try:
        wire = _decode_event(raw)
    except msgspec.MsgspecError:
        return parse_event_untyped(raw, q, max_bytes)
    if (wire.schema_version != SCHEMA_VERSION or not wire.event_id or not wire.user_id or not wire.completed_at
            or wire.event_id != wire.session_id):
        return parse_event_untyped(raw, q, max_bytes)
    completed = _completed_at(wire.completed_at)
    answers = _valid_answers(wire.answers, q)
    if isinstance(completed, EventError) or answers is None:
        return parse_event_untyped(raw, q, max_bytes)
    return SessionEvent(wire.session_id, wire.user_id, completed.astimezone(timezone.utc), answers)


def _valid_answers(answers: list[_Answer], q: Questionnaire) -> tuple | None:
    """The answers as tuples when every contract check passes, in one pass; None otherwise (the
    reference parser then says what is wrong). The same checks as ``answers_problem``."""
    rules, given, out, answered = q.answer_rules, {}, [], False
    for a in answers:
        qid, options = a.question_id, a.option_ids
        rule = rules.get(qid)
        if rule is None or qid in given:
            return None
        if options is None:
            given[qid] = ()
            out.append((qid, None))
            continue
        if not rule[0].issuperset(options) or (len(options) > 1 and (rule[1] or len(set(options)) != len(options))):
            return None
        given[qid] = options
        out.append((qid, options))
        answered = answered or bool(options)
    for qid in given:
        parent = rules[qid][2]
        if parent is not None and rules[qid][3].isdisjoint(given.get(parent, ())):
            return None
    return tuple(out) if answered else None


def _completed_at(text: str) -> datetime | EventError:
    try:
        completed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return EventError("wrong_types", f"completed_at {text!r} is not an ISO 8601 time", "completed_at")
    if completed.tzinfo is None:
        return EventError("wrong_types", "completed_at needs a time zone (e.g. ...Z)", "completed_at")
    return completed


def _validated(session_id: str, user_id: str, completed: datetime, answers: tuple, q: Questionnaire):
    """The checks against the questionnaire, shared by both parsers."""
    if not any(options for _, options in answers):
        return EventError("empty_answers", "the session answers no question", "answers")
    problem = answers_problem(q, ((qid, options or ()) for qid, options in answers))
    if problem:
        return problem
    return SessionEvent(session_id, user_id, completed.astimezone(timezone.utc), answers)


def parse_event_untyped(raw: bytes, q: Questionnaire, max_bytes: int = MAX_EVENT_BYTES) -> SessionEvent | EventError:
    """The reference parser (``json`` + checks field by field): what :func:`parse_event` returns
    for every input, and where its error messages come from."""
    if len(raw) > max_bytes:
        return EventError("oversized", f"event is {len(raw)} bytes, the limit is {max_bytes}")
    try:  # strictly UTF-8 (no BOM, no UTF-16/32 guessing) and strictly JSON (no NaN / Infinity)
        body = json.loads(raw.decode("utf-8"), parse_constant=_not_json)
    except UnicodeDecodeError as exc:
        return EventError("bad_json", f"not UTF-8: {exc}")
    except (ValueError, RecursionError) as exc:  # json.JSONDecodeError is a ValueError
        return EventError("bad_json", f"not valid JSON: {exc}")
    if not isinstance(body, dict):
        return _wrong("event", "a JSON object", body)
    version = body.get("schema_version")
    if isinstance(version, bool) or not isinstance(version, (int, float)):  # `true` is no version
        return _wrong("schema_version", "an integer", version)  # 1.0 is JSON's integer 1, as in the schema
    if version != SCHEMA_VERSION:
        return EventError("unknown_schema_version", f"schema_version {version!r} is not {SCHEMA_VERSION}",
                          "schema_version")
    for name in ("event_id", "session_id", "user_id", "completed_at"):
        if not isinstance(body.get(name), str) or not body[name]:
            return _wrong(name, "a non-empty string", body.get(name))
    if body["event_id"] != body["session_id"]:
        return EventError("wrong_types", "event_id must equal session_id", "event_id")
    completed = _completed_at(body["completed_at"])
    if isinstance(completed, EventError):
        return completed
    answers = body.get("answers")
    if not isinstance(answers, list):
        return _wrong("answers", "a list", answers)
    parsed = []
    for i, a in enumerate(answers):
        if not isinstance(a, dict):
            return _wrong(f"answers[{i}]", "an object with question_id and option_ids", a)
        qid = a.get("question_id")
        if not isinstance(qid, str):
            return _wrong(f"answers[{i}].question_id", "a string", qid)
        options = a.get("option_ids")
        if options is None:  # presented, skipped ([] on a multi-select: answered, none chosen)
            parsed.append((qid, None))
            continue
        if not isinstance(options, list) or not all(map(_is_str, options)):
            return _wrong(f"answers[{i}].option_ids", "a list of strings or null", options)
        parsed.append((qid, tuple(options)))
    return _validated(body["session_id"], body["user_id"], completed, tuple(parsed), q)


def event_bytes(session_id: str, user_id: str, completed_at: datetime, answers) -> bytes:
    """One input event; ``answers`` as the contract's list of {question_id, option_ids}."""
    return json.dumps({
        "schema_version": SCHEMA_VERSION, "event_id": session_id, "session_id": session_id, "user_id": user_id,
        "completed_at": completed_at.astimezone(timezone.utc).isoformat().replace("+00:00", "Z"),
        "answers": [{"question_id": a["question_id"],
                     "option_ids": None if a["option_ids"] is None else list(a["option_ids"])} for a in answers],
    }, separators=(",", ":")).encode()


def in_completion_order(sessions: pa.Table) -> pa.Table:
    """Sessions sorted by ``completed_at``: the order a replay sends them in."""
    return sessions.take(pc.sort_indices(sessions, [("completed_at", "ascending")]))


def sessions_to_events(sessions: pa.Table) -> list[tuple[bytes, bytes]]:
    """A contract sessions table → (key, value) input events, in row order."""
    rows = sessions.to_pylist()
    return [(r["user_id"].encode(), event_bytes(r["session_id"], r["user_id"], r["completed_at"], r["answers"]))
            for r in rows]


def events_to_sessions(events: list[SessionEvent]) -> pa.Table:
    """Validated events → a contract sessions table (what the encoders and the archive take).
    The nested answers column is assembled from flat string arrays and offsets: no Python dict
    per answer for Arrow to convert (the encode stage 5.5x faster, docs/performance.md)."""
    qids: list[str] = []
    options: list[str] = []
    skipped: list[bool] = []  # option_ids null: presented, skipped
    answer_ends, option_ends = [0], [0]
    for event in events:
        for qid, opts in event.answers:
            qids.append(qid)
            skipped.append(opts is None)
            options.extend(opts or ())
            option_ends.append(len(options))
        answer_ends.append(len(qids))
    option_lists = pa.ListArray.from_arrays(pa.array(option_ends, pa.int32()), pa.array(options, pa.string()),
                                            mask=pa.array(skipped, pa.bool_()) if any(skipped) else None)
    answers = pa.StructArray.from_arrays([pa.array(qids, pa.string()), option_lists], fields=list(schema.ANSWER))
    return pa.table({
        "session_id": [e.session_id for e in events],
        "user_id": [e.user_id for e in events],
        "completed_at": pa.array([e.completed_at for e in events], schema.TIMESTAMP),
        "answers": pa.ListArray.from_arrays(pa.array(answer_ends, pa.int32()), answers),
    }, schema=schema.SESSIONS)


# ---- scores --------------------------------------------------------------------------------------
def decode_probabilities(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), "<f4")


def score_bytes(event: SessionEvent, probs: np.ndarray, q: Questionnaire, model_version: str, threshold: float,
                sources_used: list[str], gate_mean: float | None, scored_at: datetime, degraded: bool = False,
                predicted: np.ndarray | None = None, abstain_below: float = 0.0) -> bytes:
    """One session's score record; ``predicted``: (K,) bool decisions (``model.metrics.decide``), by
    default every key at ≥ threshold."""
    assert probs.shape == (q.n_keys,), probs.shape
    return score_records([event], probs[None], q, model_version, threshold, [sources_used], [gate_mean], scored_at,
                         degraded, None if predicted is None else predicted[None], abstain_below)[0]


def score_records(events: list[SessionEvent], probs: np.ndarray, q: Questionnaire, model_version: str,
                  threshold: float, sources_used: list[list[str]], gate_means: list[float | None],
                  scored_at: datetime, degraded: bool = False, predicted: np.ndarray | None = None,
                  abstain_below: float = 0.0) -> list[bytes]:
    """:func:`score_bytes` of a batch: ``probs`` and ``predicted`` (B, K). What every record shares
    is formatted once; the probabilities go to the encoder as bytes (it writes them as base64)."""
    assert probs.shape == (len(events), q.n_keys), probs.shape
    predicted = probs >= threshold if predicted is None else predicted
    f32, keys = np.ascontiguousarray(probs, "<f4"), np.asarray(q.response_keys, dtype=object)
    scored = scored_at.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
    return [_encode_json({
        "schema_version": SCHEMA_VERSION, "session_id": event.session_id, "user_id": event.user_id,
        "model_version": model_version, "questionnaire_hash": q.content_hash,
        "completed_at": event.completed_at.isoformat().replace("+00:00", "Z"), "scored_at": scored,
        "probabilities_f32": f32[i].tobytes(), "predicted_keys": keys[predicted[i]].tolist(),
        "threshold": threshold, "abstain_below": abstain_below, "external_sources_used": sources_used[i],
        "gate_mean": gate_means[i], "degraded": degraded,
    }) for i, event in enumerate(events)]


# ---- dead letters ------------------------------------------------------------------------------
def dlq_headers(error: EventError, topic: str, partition: int, offset: int,
                original: tuple[tuple[str, bytes], ...] = ()) -> list[tuple[str, bytes]]:
    """The original record's own headers (e.g. ``traceparent``), then KIP-1034-style headers: what
    was wrong and where the original record lives (a dead letter replayed and refused again gets
    fresh ``lantern.*`` headers, not a second set)."""
    kept = [(k, v) for k, v in original if not k.startswith("lantern.")]
    return kept + [("lantern.error.class", error.kind.encode()), ("lantern.error.message", error.message.encode()),
            ("lantern.error.field", error.field.encode()), ("lantern.source.topic", topic.encode()),
            ("lantern.source.partition", str(partition).encode()), ("lantern.source.offset", str(offset).encode())]
