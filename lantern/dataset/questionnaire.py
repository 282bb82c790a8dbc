"""The questionnaire of an adaptive survey: questions, options, routing, response keys.

Response keys are every (question, option) pair, ordered by question order in the file and
then option order within the question; the key name is ``"<question_id>=<option_id>"``.
That order is the model's output order and never changes for a given questionnaire file
(its :attr:`Questionnaire.content_hash` pins it).
"""

from __future__ import annotations

import hashlib
import json
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lantern.errors import DataValidationError

KEY_SEPARATOR = "="


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Option(_Frozen):
    id: str = Field(min_length=1)
    text: str = ""


class Condition(_Frozen):
    """The question is presented only if ``question_id`` was answered with any of ``option_ids``."""

    question_id: str
    option_ids: tuple[str, ...] = Field(min_length=1)


class Question(_Frozen):
    id: str = Field(min_length=1)
    text: str = ""
    kind: Literal["single", "multi"]
    options: tuple[Option, ...] = Field(min_length=2)
    condition: Condition | None = None
    ordinal: bool = False  # single-select whose options, in order, are points on a scale

    @model_validator(mode="after")
    def _ordinal_is_single(self) -> Question:
        if self.ordinal and self.kind != "single":
            raise ValueError(f"question {self.id!r}: only a single-select question can be ordinal")
        return self

    @cached_property
    def option_ids(self) -> frozenset[str]:
        return frozenset(o.id for o in self.options)


class Questionnaire(_Frozen):
    version: str = "1"
    questions: tuple[Question, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _check_ids_and_routing(self) -> Questionnaire:
        seen: dict[str, Question] = {}
        for q in self.questions:
            if q.id in seen:
                raise ValueError(f"duplicate question id {q.id!r}")
            if len(q.option_ids) != len(q.options):
                raise ValueError(f"question {q.id!r} has duplicate option ids")
            if q.condition is not None:
                parent = seen.get(q.condition.question_id)
                if parent is None:
                    raise ValueError(
                        f"question {q.id!r} is routed on {q.condition.question_id!r}, "
                        "which is not an earlier question"
                    )
                unknown = set(q.condition.option_ids) - parent.option_ids
                if unknown:
                    raise ValueError(f"question {q.id!r} routes on unknown options {sorted(unknown)}")
            seen[q.id] = q
        return self

    # ---- derived lookups (computed once) -------------------------------------------------
    @cached_property
    def by_id(self) -> dict[str, Question]:
        return {q.id: q for q in self.questions}

    @cached_property
    def answer_rules(self) -> dict[str, tuple[frozenset[str], bool, str | None, frozenset[str]]]:
        """Per question id: its option ids, whether single-select, and its routing (the parent
        question id, or None, and the parent's options that present it): one lookup per answer."""
        return {q.id: (q.option_ids, q.kind == "single", q.condition.question_id if q.condition else None,
                       frozenset(q.condition.option_ids) if q.condition else frozenset()) for q in self.questions}

    @cached_property
    def question_index(self) -> dict[str, int]:
        return {q.id: i for i, q in enumerate(self.questions)}

    @cached_property
    def response_keys(self) -> tuple[str, ...]:
        return tuple(f"{q.id}{KEY_SEPARATOR}{o.id}" for q in self.questions for o in q.options)

    @cached_property
    def key_index(self) -> dict[tuple[str, str], int]:
        pairs = ((q.id, o.id) for q in self.questions for o in q.options)
        return {pair: i for i, pair in enumerate(pairs)}

    @cached_property
    def key_question(self) -> tuple[int, ...]:
        """For each response key, the index of its question."""
        return tuple(i for i, q in enumerate(self.questions) for _ in q.options)

    def to_json(self) -> dict:
        """The file form; ``ordinal`` appears only where set (older files and hashes unchanged)."""
        raw = self.model_dump(mode="json")
        for q in raw["questions"]:
            if not q["ordinal"]:
                del q["ordinal"]
        return raw

    @cached_property
    def content_hash(self) -> str:
        canonical = json.dumps(self.to_json(), sort_keys=True).encode()
        return hashlib.sha256(canonical).hexdigest()[:16]

    @property
    def n_keys(self) -> int:
        return len(self.response_keys)

    # ---- io --------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path) -> Questionnaire:
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise DataValidationError("file not found", file=str(path)) from exc
        except json.JSONDecodeError as exc:
            raise DataValidationError(f"not valid JSON: {exc}", file=str(path)) from exc
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"])
            raise DataValidationError(first["msg"], file=str(path), field=field) from exc

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=1))
