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
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

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


#: every class an input event can be dead-lettered with (docs/events.md lists the same set: tested);
#: ``internal``: handling the event raised an unexpected exception (a bug, isolated to that event)
ERROR_CLASSES = ("oversized", "bad_json", "bad_text", "wrong_types", "future_time", "unknown_schema_version",
                 "empty_answers", "key_mismatch", "unknown_question", "unknown_option", "duplicate_answer",
                 "repeated_option", "single_select", "routing", "internal")
#: the fields that are ids: besides valid Unicode, free of control characters (NUL included)
ID_FIELDS = ("event_id", "session_id", "user_id")
_SURROGATE = re.compile(r"[\ud800-\udfff]")  # a lone one: JSON's \uXXXX escape can make it, UTF-8 cannot
_BAD_ID = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")  # Unicode's control characters (Cc), surrogates
# the escapes that can make either in a JSON string (raw control bytes are not JSON; raw C1
# characters are caught on the decoded ids): an event holding one takes the reference parser
_SUSPECT_ESCAPE = re.compile(rb"\\u(?:[dD][89a-fA-F]|00[01]|007[fF]|00[89][0-9a-fA-F])")

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


def parse_event(raw: bytes, q: Questionnaire, max_bytes: int = MAX_EVENT_BYTES,
                not_after: datetime | None = None) -> SessionEvent | EventError:
    """Bytes of one input event → a validated session, or the reason it is not one.
    ``not_after``: the latest completion time accepted (the scorer's clock plus the allowed skew).

    A typed decoder (msgspec: strict UTF-8 and JSON, types checked in C) takes every well-formed
    event; anything it refuses, or that fails a check after it, is parsed again by
    :func:`parse_event_untyped`, which names exactly what is wrong. So the outcome for every input
    is :func:`parse_event_untyped`'s (tested), and only valid events take the fast path."""
    if len(raw) > max_bytes:
        return EventError("oversized", f"event is {len(raw)} bytes, the limit is {max_bytes}")
    try:
        wire = _decode_event(raw)
    except (msgspec.MsgspecError, RecursionError):  # deep nesting, even in a field it skips, is a RecursionError
        return parse_event_untyped(raw, q, max_bytes, not_after)
    if (wire.schema_version != SCHEMA_VERSION or not wire.event_id or not wire.user_id or not wire.completed_at
            or wire.event_id != wire.session_id or _BAD_ID.search(wire.user_id) or _BAD_ID.search(wire.session_id)
            or (b"\\u" in raw and _SUSPECT_ESCAPE.search(raw))):
        return parse_event_untyped(raw, q, max_bytes, not_after)
    completed = _completed_at(wire.completed_at, not_after)
    answers = _valid_answers(wire.answers, q)
    if isinstance(completed, EventError) or answers is None:
        return parse_event_untyped(raw, q, max_bytes, not_after)
    return SessionEvent(wire.session_id, wire.user_id, completed, answers)


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


def _completed_at(text: str, not_after: datetime | None) -> datetime | EventError:
    """The completion time in UTC, or why it is not one: not ISO 8601 with a zone, outside the
    years a UTC time can have, or later than ``not_after`` (a client whose clock runs ahead)."""
    try:
        completed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        if completed.tzinfo is None:
            return EventError("wrong_types", "completed_at needs a time zone (e.g. ...Z)", "completed_at")
        completed = completed.astimezone(timezone.utc)
    except ValueError:
        return EventError("wrong_types", f"completed_at {text!r} is not an ISO 8601 time", "completed_at")
    except OverflowError:  # e.g. 0001-01-01T00:00:00+01:00: before year 1 in UTC
        return EventError("wrong_types", f"completed_at {text!r} is outside the years 1-9999 in UTC", "completed_at")
    if not_after is not None and completed > not_after:
        ahead = completed - not_after
        return EventError("future_time", f"completed_at {text!r} is {_duration(ahead)} past the scorer's clock "
                                         "plus the allowed skew (scoring.max_clock_skew_s)", "completed_at")
    return completed


def _duration(delta: timedelta) -> str:
    return f"{delta.days} days" if delta.days >= 2 else f"{delta.total_seconds():.0f} s"


def _validated(session_id: str, user_id: str, completed: datetime, answers: tuple, q: Questionnaire):
    """The checks against the questionnaire, shared by both parsers."""
    if not any(options for _, options in answers):
        return EventError("empty_answers", "the session answers no question", "answers")
    problem = answers_problem(q, ((qid, options or ()) for qid, options in answers))
    if problem:
        return problem
    return SessionEvent(session_id, user_id, completed, answers)


def _text_problem(body) -> EventError | None:
    """The first string (key or value, anywhere in the event) that is not valid Unicode: a lone
    UTF-16 surrogate, which JSON's ``\\uD800`` escape can encode but no UTF-8 text can hold (every
    later ``.encode()`` of it would fail). Iterative: the parser's depth limit is the only bound."""
    stack = [("", body)]
    while stack:  # depth first, in document order (children pushed last to first)
        path, value = stack.pop()
        if isinstance(value, dict):
            for key in value:
                if _SURROGATE.search(key):
                    return _bad_text(path or "event", key, f"a key of {path or 'the event'}")
            stack.extend((f"{path}.{key}" if path else key, item) for key, item in reversed(value.items()))
        elif isinstance(value, list):
            stack.extend((f"{path}[{i}]", value[i]) for i in range(len(value) - 1, -1, -1))
        elif isinstance(value, str) and _SURROGATE.search(value):
            return _bad_text(path or "event", value, path or "the event")
    return None


def _bad_text(field: str, value: str, what: str,
              rule: str = "a lone UTF-16 surrogate escape, which is not Unicode text") -> EventError:
    shown = ascii(value[:40]) + ("..." if len(value) > 40 else "")  # escaped: the message itself stays valid text
    return EventError("bad_text", f"{what} holds {rule}: {shown}", field)


def _id_problem(field: str, value: str) -> EventError | None:
    if _BAD_ID.search(value):
        return _bad_text(field, value, f"the id {field}", "a control character (ids are printable text)")
    return None


def parse_event_untyped(raw: bytes, q: Questionnaire, max_bytes: int = MAX_EVENT_BYTES,
                        not_after: datetime | None = None) -> SessionEvent | EventError:
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
    problem = _text_problem(body)
    if problem is not None:
        return problem
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
        problem = _id_problem(name, body[name]) if name in ID_FIELDS else None
        if problem is not None:
            return problem
    if body["event_id"] != body["session_id"]:
        return EventError("wrong_types", "event_id must equal session_id", "event_id")
    completed = _completed_at(body["completed_at"], not_after)
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
        if not isinstance(options, (list, type(None))) or not all(map(_is_str, options or ())):
            return _wrong(f"answers[{i}].option_ids", "a list of strings or null", options)
        problem = _id_problem(f"answers[{i}].question_id", qid) or next(
            (p for j, o in enumerate(options or ()) if (p := _id_problem(f"answers[{i}].option_ids[{j}]", o))), None)
        if problem is not None:
            return problem
        # None: presented, skipped ([] on a multi-select: answered, none chosen)
        parsed.append((qid, None if options is None else tuple(options)))
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
    fresh ``lantern.*`` headers, not a second set). An ``internal`` error adds the exception's type
    (``lantern.error.exception``); text that is not valid Unicode is written escaped, never refused."""
    kept = [(k, v) for k, v in original if not k.startswith("lantern.")]
    ours = [("lantern.error.class", error.kind), ("lantern.error.message", error.message),
            ("lantern.error.field", error.field)]
    if error.exception:
        ours.append(("lantern.error.exception", error.exception))
    ours += [("lantern.source.topic", topic), ("lantern.source.partition", str(partition)),
             ("lantern.source.offset", str(offset))]
    return kept + [(k, v.encode("utf-8", "backslashreplace")) for k, v in ours]


def internal_error(exc: BaseException, stage: str) -> EventError:
    """An unexpected exception while handling one event (at ``stage``: parse, features, format), as
    that event's dead-letter reason: the exception's type and message."""
    kind = type(exc)
    name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    try:
        text = str(exc)
    except Exception:  # noqa: BLE001 - an exception whose message cannot be built still has a type
        text = "(no message)"
    return EventError("internal", f"{stage}: {kind.__name__}: {text}"[:1000], "", name)
