"""Data-contract validation. Pure functions; errors name file, row and field.

:func:`answers_problem` is the per-session check the stream scorer reuses on every event.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from lantern.dataset import schema
from lantern.dataset.questionnaire import Questionnaire
from lantern.errors import DataValidationError, Problem

Answer = tuple[str, Sequence[str]]


def answers_problem(q: Questionnaire, answers: Iterable[Answer]) -> Problem | None:
    """The first contract violation in one session's answers, else None."""
    given: dict[str, Sequence[str]] = {}
    by_id = q.by_id
    for i, (qid, options) in enumerate(answers):  # runs on every stream event: set operations, no loops
        question = by_id.get(qid)
        if question is None:
            return Problem("unknown_question", f"unknown question id {qid!r}", f"answers[{i}].question_id")
        if qid in given:
            return Problem("duplicate_answer", f"question {qid!r} answered twice", f"answers[{i}].question_id")
        if not question.option_ids.issuperset(options):
            unknown = [o for o in options if o not in question.option_ids]
            return Problem("unknown_option", f"unknown option ids {unknown} for question {qid!r}",
                           f"answers[{i}].option_ids")
        if len(options) > 1:
            if len(set(options)) != len(options):
                return Problem("repeated_option", f"repeated option ids for question {qid!r}",
                               f"answers[{i}].option_ids")
            if question.kind == "single":
                return Problem("single_select", f"single-select question {qid!r} has {len(options)} options "
                                               "selected", f"answers[{i}].option_ids")
        given[qid] = options
    for i, qid in enumerate(given):
        cond = by_id[qid].condition
        if cond is None:
            continue
        parent = given.get(cond.question_id, ())
        if not set(parent) & set(cond.option_ids):
            return Problem("routing", f"question {qid!r} is presented only if {cond.question_id!r} is one of "
                           f"{list(cond.option_ids)}, but it was answered with {list(parent)}",
                           f"answers[{i}].question_id")
    return None


def conform(table: pa.Table, expected: pa.Schema, file: str) -> pa.Table:
    """Select and cast ``table`` to ``expected``; a missing or incompatible column is an error."""
    columns = []
    for field in expected:
        if field.name not in table.column_names:
            raise DataValidationError("missing column", file=file, field=field.name)
        column = table.column(field.name)
        try:
            column = column.cast(field.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise DataValidationError(
                f"type {column.type} does not match the contract's {field.type}", file=file, field=field.name
            ) from exc
        if not field.nullable and column.null_count:
            row = pc.index(pc.is_null(column), True).as_py()
            raise DataValidationError("null value", file=file, row=row, field=field.name)
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=expected)


def validate_sessions(table: pa.Table, q: Questionnaire, file: str = schema.SESSIONS_FILE) -> pa.Table:
    """Check a sessions table against the contract; return it cast to :data:`schema.SESSIONS`."""
    table = conform(table, schema.SESSIONS, file)
    ids = table.column("session_id")
    if pc.count_distinct(ids).as_py() != len(ids):
        seen: set[str] = set()
        for row, sid in enumerate(ids.to_pylist()):
            if sid in seen:
                raise DataValidationError(f"duplicate session id {sid!r}", file=file, row=row, field="session_id")
            seen.add(sid)
    for row, answers in enumerate(table.column("answers").to_pylist()):
        problem = answers_problem(q, ((a["question_id"], a["option_ids"] or ()) for a in answers))
        if problem:
            raise DataValidationError(problem.message, file=file, row=row, field=problem.field)
    return table


def validate_external(table: pa.Table, file: str) -> pa.Table:
    """Check an external source: key columns present and every feature column of a usable type."""
    keys = conform(table, schema.EXTERNAL_KEYS, file)
    features = [name for name in table.column_names if name not in schema.EXTERNAL_KEYS.names]
    if not features:
        raise DataValidationError("no feature columns besides user_id and event_timestamp", file=file)
    for name in features:
        if schema.feature_kind(table.schema.field(name).type) is None:
            raise DataValidationError(
                f"unsupported type {table.schema.field(name).type} (use numeric, string or list columns)",
                file=file,
                field=name,
            )
    return pa.Table.from_arrays(
        keys.columns + [table.column(n) for n in features], names=keys.column_names + features
    )
