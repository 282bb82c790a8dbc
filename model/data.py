"""Dataset → encoded arrays → torch batches; user-level splits; masked-question hiding."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from lantern.dataset.io import Dataset
from lantern.dataset.questionnaire import Questionnaire
from model.encoding import (
    FeatureSpec,
    SourceArrays,
    SurveyArrays,
    encode_surveys,
    point_in_time_rows,
    shape_sources,
)
from model.lantern import PRESETS, Batch, LanternConfig, SourceBatch, SourceDims


@dataclass
class EncodedData:
    survey: SurveyArrays
    sources: list[SourceArrays]
    user_ids: np.ndarray

    def __len__(self) -> int:
        return len(self.survey)

    def take(self, idx: np.ndarray) -> EncodedData:
        s = self.survey
        return EncodedData(SurveyArrays(s.q_idx[idx], s.sel[idx], s.y[idx]),
                           [src.take(idx) for src in self.sources], self.user_ids[idx])


SourceRows = dict[str, tuple[pa.Table, np.ndarray]]  # source → (its columns per session, present mask)


def joined_sources(ds: Dataset) -> SourceRows:
    """Point-in-time rows of every external source for every session (pyarrow + pandas)."""
    out = {}
    for name, table in ds.external.items():
        rows = point_in_time_rows(ds.sessions, table)
        present = rows >= 0
        out[name] = (table.take(pa.array(np.where(present, rows, 0))), present)
    return out


def encode_sessions(q: Questionnaire, sessions: pa.Table, spec: FeatureSpec,
                    sources: SourceRows | dict[str, SourceArrays]) -> EncodedData:
    """Encode sessions with their already-joined source rows (from parquet, Feast, or a stream) or
    already shaped source arrays (the online lookup's); a source the data lacks is absent."""
    survey = encode_surveys(q, sessions.column("answers"))
    arrays = list(shape_sources(spec, sources, sessions.num_rows).values())
    return EncodedData(survey, arrays, sessions.column("user_id").to_numpy(zero_copy_only=False))


def encode_dataset(ds: Dataset, spec: FeatureSpec, sources: SourceRows | None = None) -> EncodedData:
    """Encode every session with its point-in-time external rows (joined here unless given)."""
    return encode_sessions(ds.questionnaire, ds.sessions, spec, joined_sources(ds) if sources is None else sources)


def split_users(user_ids: np.ndarray, seed: int, val: float = 0.1, test: float = 0.1):
    """Row indices of (train, val, test); every user's sessions land in one split."""
    users = np.unique(user_ids)
    perm = np.random.default_rng(seed).permutation(len(users))
    n_test, n_val = int(len(users) * test), int(len(users) * val)
    part = np.empty(len(users), np.int8)
    part[perm[:n_test]], part[perm[n_test:n_test + n_val]], part[perm[n_test + n_val:]] = 2, 1, 0
    row_part = part[np.searchsorted(users, user_ids)]
    return tuple(np.flatnonzero(row_part == k) for k in (0, 1, 2))


def model_config(q: Questionnaire, spec: FeatureSpec, variant: str, preset: str, **overrides) -> LanternConfig:
    dims = tuple(
        SourceDims(n_num=len(s.numeric), cat_cards=tuple(len(v) for v in s.vocab),
                   seq_card=len(s.seq_vocab) if s.seq_category else 0, n_seq_vals=len(s.seq_values),
                   max_len=s.max_len if s.seq_category else 0)
        for s in spec.sources
    )
    return LanternConfig(n_questions=len(q.questions), n_keys=q.n_keys,
                         max_selected=max(len(x.options) for x in q.questions),
                         sources=dims, variant=variant, key_question=tuple(q.key_question),
                         single_select=tuple(x.kind == "single" for x in q.questions),
                         **{**PRESETS[preset], **overrides})


def question_parents(q: Questionnaire) -> np.ndarray:
    """(Q,) index of the question each question is routed on, -1 for unconditional ones."""
    return np.array([q.question_index[x.condition.question_id] if x.condition else -1 for x in q.questions])


def hide_questions(q_idx: np.ndarray, sel: np.ndarray, key_question: np.ndarray, frac: float | np.ndarray,
                   rng: np.random.Generator, parent: np.ndarray | None = None):
    """Masked-response modelling: hide ``frac`` of each session's answered questions (≥ 1), and
    with each hidden question every follow-up routed on it (``parent``), so that no visible
    follow-up gives a hidden gate's answer away.

    Returns the visible ``q_idx``/``sel`` and the loss mask (B, K) over the keys of the hidden
    questions that were answered (a presented but skipped follow-up is hidden, never scored).
    ``frac`` may be per row, (B, 1): 1.0 hides a whole session.
    """
    answered = (q_idx > 0) & (sel > 0).any(-1)  # (B, T)
    r = rng.random(q_idx.shape)
    hidden = answered & (r < frac)
    need = answered.any(1) & ~hidden.any(1)
    pick = np.argmax(np.where(answered, r, -1.0), 1)
    hidden[need, pick[need]] = True
    n_q = int(key_question.max()) + 1
    hidden_q = np.zeros((len(q_idx), n_q + 1), bool)  # column 0: padding
    rows, cols = np.nonzero(hidden)
    hidden_q[rows, q_idx[rows, cols]] = True
    if parent is not None:
        for child in np.flatnonzero(parent >= 0):  # conditions point backwards: one forward pass
            hidden_q[:, child + 1] |= hidden_q[:, parent[child] + 1]
        hidden = np.take_along_axis(hidden_q, q_idx.astype(np.int64), 1) & (q_idx > 0)
    answered_q = np.zeros_like(hidden_q)
    rows, cols = np.nonzero(answered)
    answered_q[rows, q_idx[rows, cols]] = True
    scored = (hidden_q & answered_q)[:, key_question + 1]
    return np.where(hidden, 0, q_idx), np.where(hidden[..., None], 0, sel), scored


def to_batch(q_idx: np.ndarray, sel: np.ndarray, sources: list[SourceArrays], device="cpu") -> Batch:
    """numpy → torch, trimming survey padding to the longest session in the batch and each
    sequence's padding to the longest sequence in the batch."""
    t = max(1, int((q_idx > 0).sum(1).max(initial=0)))
    order = np.argsort(q_idx == 0, axis=1, kind="stable")[:, :t]  # pack visible tokens left
    q_idx = np.take_along_axis(q_idx, order, 1)
    sel = np.take_along_axis(sel, order[..., None], 1)

    def tensor(x, dtype):
        return torch.as_tensor(np.ascontiguousarray(x)).to(device=device, dtype=dtype)

    def source(s: SourceArrays) -> SourceBatch:
        # sequences are left-aligned: trailing positions no row uses are padding for everyone
        L = max(1, int(s.seq_mask.sum(1).max(initial=0))) if s.seq_mask.shape[1] else 0
        assert not s.seq_mask[:, L:].any(), "sequence elements must be left-aligned (model.encoding)"
        return SourceBatch(tensor(s.num, torch.float32), tensor(s.num_missing, torch.bool),
                           tensor(s.cat, torch.long), tensor(s.seq_cat[:, :L], torch.long),
                           tensor(s.seq_val[:, :L], torch.float32), tensor(s.seq_mask[:, :L], torch.bool),
                           tensor(s.present, torch.bool))

    return Batch(q_idx=tensor(q_idx, torch.long), sel=tensor(sel, torch.long), sources=[source(s) for s in sources])
