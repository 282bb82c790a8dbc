"""Pure functions from data-contract tables to the model's input arrays.

Survey side: one token per presented question — ``q_idx`` (question index + 1, 0 = padding)
and ``sel`` (selected response-key indices + 1; 0 = nothing, i.e. skipped; ``n_keys + 1 + q`` =
multi-select question q answered "none of these") — plus ``y``, the multi-hot answers.

External side: a :class:`SourceSpec` per source, fitted on training data, turns that source's
columns into numeric / categorical / sequence arrays and a presence mask. The same spec shapes
rows read from parquet, from Feast's offline store or from its online store, so training and
serving see identical inputs.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from lantern.dataset import schema
from lantern.dataset.questionnaire import KEY_SEPARATOR, Questionnaire
from lantern.errors import DataValidationError

MAX_SEQ_LEN = 24


# ---- survey ------------------------------------------------------------------------------------
@dataclass
class SurveyArrays:
    q_idx: np.ndarray  # (N, T) int16, question index + 1, 0 = padding
    sel: np.ndarray  # (N, T, M) int16, response-key index + 1, 0 = nothing; n_keys + 1 + q: "none of these"
    y: np.ndarray  # (N, K) uint8 multi-hot answers

    def __len__(self) -> int:
        return len(self.q_idx)


def encode_surveys(q: Questionnaire, answers: pa.Array | pa.ChunkedArray) -> SurveyArrays:
    """Vectorised: ``answers`` is the contract's ``list<struct<question_id, option_ids>>`` column."""
    if isinstance(answers, pa.ChunkedArray):
        answers = answers.combine_chunks()
    n, n_q = len(answers), len(q.questions)
    max_opts = max(len(x.options) for x in q.questions)
    offsets = answers.offsets.to_numpy()
    tokens = answers.flatten()
    token_row = np.repeat(np.arange(n), np.diff(offsets))
    token_pos = np.arange(len(tokens)) - offsets[token_row]
    qids = tokens.field("question_id")
    q_index = pc.index_in(qids, value_set=pa.array([x.id for x in q.questions])).to_numpy(zero_copy_only=False)
    q_idx = np.zeros((n, n_q), dtype=np.int16)
    q_idx[token_row, token_pos] = q_index + 1
    opts = tokens.field("option_ids")
    multi = np.array([x.kind == "multi" for x in q.questions])
    none = (multi[q_index] & opts.is_valid().to_numpy(zero_copy_only=False)
            & (pc.fill_null(pc.list_value_length(opts), 0).to_numpy(zero_copy_only=False) == 0))

    opt_offsets = opts.offsets.to_numpy()
    opt_token = np.repeat(np.arange(len(tokens)), np.diff(opt_offsets))
    opt_pos = np.arange(len(opt_token)) - opt_offsets[opt_token]
    keys = pc.binary_join_element_wise(qids.take(pa.array(opt_token)), opts.flatten(), KEY_SEPARATOR)
    key_index = pc.index_in(keys, value_set=pa.array(q.response_keys)).to_numpy(zero_copy_only=False)
    sel = np.zeros((n, n_q, max_opts), dtype=np.int16)
    sel[token_row[opt_token], token_pos[opt_token], opt_pos] = key_index + 1
    sel[token_row[none], token_pos[none], 0] = q.n_keys + 1 + q_index[none]  # answered: none of these
    y = np.zeros((n, q.n_keys), dtype=np.uint8)
    y[token_row[opt_token], key_index] = 1
    return SurveyArrays(q_idx, sel, y)


# ---- external sources ----------------------------------------------------------------------------
def signed_log(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.log1p(np.abs(x))


def _numeric(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return np.asarray(pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)


def _as_strings(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode() if isinstance(values, pa.Array) else pc.cast(values, values.type.value_type)
    return pc.cast(values, pa.string())


@dataclass(frozen=True)
class SourceSpec:
    """How one source's columns become model inputs (fitted on training rows)."""

    name: str
    numeric: tuple[str, ...] = ()
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    categorical: tuple[str, ...] = ()
    vocab: tuple[tuple[str, ...], ...] = ()  # index 0 is reserved for missing / unknown
    seq_category: str | None = None  # list<int|string> column: one token per element
    seq_vocab: tuple[str, ...] = ()
    seq_values: tuple[str, ...] = ()  # list<float> columns aligned with seq_category
    seq_mean: tuple[float, ...] = ()
    seq_std: tuple[float, ...] = ()
    max_len: int = MAX_SEQ_LEN

    @property
    def columns(self) -> tuple[str, ...]:
        seq = (self.seq_category,) if self.seq_category else ()
        return self.numeric + self.categorical + seq + self.seq_values

    @classmethod
    def fit(cls, name: str, table: pa.Table, max_vocab: int = 1000) -> SourceSpec:
        numeric, mean, std, categorical, vocab = [], [], [], [], []
        seq_cat, seq_vocab, seq_values, seq_mean, seq_std = None, (), [], [], []
        for col in table.column_names:
            if col in schema.EXTERNAL_KEYS.names:
                continue
            kind, column = schema.feature_kind(table.schema.field(col).type), table.column(col)
            if kind == "numeric":
                x = signed_log(_numeric(column))
                numeric.append(col)
                mean.append(float(np.nanmean(x)) if np.isfinite(x).any() else 0.0)
                std.append(float(np.nanstd(x)) or 1.0 if np.isfinite(x).any() else 1.0)
            elif kind == "categorical":
                counts = pc.value_counts(pc.drop_null(_as_strings(column)))
                top = sorted(counts.to_pylist(), key=lambda c: (-c["counts"], c["values"]))[:max_vocab]
                categorical.append(col)
                vocab.append(tuple(c["values"] for c in top))
            elif pa.types.is_floating(column.type.value_type):
                x = signed_log(_numeric(pc.list_flatten(column)))
                seq_values.append(col)
                seq_mean.append(float(np.nanmean(x)) if len(x) else 0.0)
                seq_std.append(float(np.nanstd(x)) or 1.0 if len(x) else 1.0)
            else:
                if seq_cat is not None:
                    raise DataValidationError(
                        f"a source may have one categorical sequence column, found {seq_cat!r} and {col!r}",
                        file=name, field=col)
                seq_cat = col
                flat = _as_strings(pc.list_flatten(column))
                counts = pc.value_counts(flat.drop_null())
                top = sorted(counts.to_pylist(), key=lambda c: (-c["counts"], c["values"]))[:max_vocab]
                seq_vocab = tuple(c["values"] for c in top)
        if seq_values and seq_cat is None:
            raise DataValidationError("list<float> columns need a categorical sequence column", file=name)
        return cls(name, tuple(numeric), tuple(mean), tuple(std), tuple(categorical), tuple(vocab),
                   seq_cat, seq_vocab, tuple(seq_values), tuple(seq_mean), tuple(seq_std))


@dataclass
class SourceArrays:
    num: np.ndarray  # (N, n_num) float32, standardised, 0 where missing
    num_missing: np.ndarray  # (N, n_num) bool
    cat: np.ndarray  # (N, n_cat) int64, 0 = missing / unknown
    seq_cat: np.ndarray  # (N, L) int64, 0 = padding / unknown
    seq_val: np.ndarray  # (N, L, n_val) float32
    seq_mask: np.ndarray  # (N, L) bool, True = a real element
    present: np.ndarray  # (N,) bool, False = the user has no row in this source

    def take(self, idx: np.ndarray) -> SourceArrays:
        return SourceArrays(*(getattr(self, f)[idx] for f in self.__dataclass_fields__))


def absent_source(spec: SourceSpec, n: int) -> SourceArrays:
    """Arrays for ``n`` users that have no row in this source (everything masked)."""
    L = spec.max_len if spec.seq_category else 0
    return SourceArrays(np.zeros((n, len(spec.numeric)), np.float32), np.ones((n, len(spec.numeric)), bool),
                        np.zeros((n, len(spec.categorical)), np.int64), np.zeros((n, L), np.int64),
                        np.zeros((n, L, len(spec.seq_values)), np.float32), np.zeros((n, L), bool),
                        np.zeros(n, bool))


def _vocab_index(values: pa.Array, vocab: tuple[str, ...]) -> np.ndarray:
    idx = pc.index_in(_as_strings(values), value_set=pa.array(vocab, pa.string()))
    return np.asarray(pc.fill_null(pc.add(idx, 1), 0).to_numpy(zero_copy_only=False), dtype=np.int64)


def shape_source(spec: SourceSpec, table: pa.Table, present: np.ndarray) -> SourceArrays:
    """Rows of ``table`` (aligned with ``present``; absent rows may hold anything) → arrays."""
    n = len(present)
    assert table.num_rows == n, (table.num_rows, n)
    num = np.zeros((n, len(spec.numeric)), np.float32)
    missing = np.ones((n, len(spec.numeric)), bool)
    for j, col in enumerate(spec.numeric):
        x = (signed_log(_numeric(table.column(col))) - spec.mean[j]) / spec.std[j]
        ok = np.isfinite(x) & present
        num[ok, j], missing[ok, j] = x[ok], False
    cat = np.zeros((n, len(spec.categorical)), np.int64)
    for j, col in enumerate(spec.categorical):
        cat[:, j] = _vocab_index(table.column(col), spec.vocab[j]) * present
    L = spec.max_len if spec.seq_category else 0
    seq_cat = np.zeros((n, L), np.int64)
    seq_val = np.zeros((n, L, len(spec.seq_values)), np.float32)
    seq_mask = np.zeros((n, L), bool)
    if spec.seq_category:
        lists = pc.fill_null(table.column(spec.seq_category), pa.scalar([], table.column(spec.seq_category).type))
        lists = lists.combine_chunks() if isinstance(lists, pa.ChunkedArray) else lists
        lengths = np.where(present, pc.list_value_length(lists).to_numpy(zero_copy_only=False), 0)
        offsets = lists.offsets.to_numpy()
        keep = np.minimum(lengths, L)  # the most recent L elements (the list's tail)
        row = np.repeat(np.arange(n), keep)
        pos = np.arange(len(row)) - np.repeat(np.cumsum(keep) - keep, keep)
        src = np.repeat(offsets[:-1] + lengths - keep, keep) + pos
        seq_cat[row, pos] = _vocab_index(lists.values.take(pa.array(src)), spec.seq_vocab) if len(src) else 0
        seq_mask[row, pos] = True
        for j, col in enumerate(spec.seq_values):
            values = pc.fill_null(table.column(col), pa.scalar([], table.column(col).type))
            values = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
            if not np.array_equal(pc.list_value_length(values).to_numpy(zero_copy_only=False)[present],
                                  lengths[present]):
                raise DataValidationError(f"list lengths differ from {spec.seq_category!r}", file=spec.name, field=col)
            v_off = values.offsets.to_numpy()
            v_src = np.repeat(v_off[:-1] + lengths - keep, keep) + pos
            x = (signed_log(_numeric(values.values.take(pa.array(v_src)))) - spec.seq_mean[j]) / spec.seq_std[j]
            seq_val[row, pos, j] = np.nan_to_num(x)
    return SourceArrays(num, missing, cat, seq_cat, seq_val, seq_mask, present.astype(bool))


def shape_sources(spec: FeatureSpec, sources: dict, n: int) -> dict[str, SourceArrays]:
    """Every source of ``spec`` for ``n`` rows: ``sources[name]`` is ``(columns, present)`` or an
    already shaped :class:`SourceArrays`; a source the model knows but ``sources`` lacks is absent."""
    out = {}
    for s in spec.sources:
        given = sources.get(s.name)
        if given is None:
            out[s.name] = absent_source(s, n)
        elif isinstance(given, SourceArrays):
            out[s.name] = given
        else:
            table, present = given
            out[s.name] = shape_source(s, table.select(list(s.columns)), present)
    return out


# ---- point-in-time join ----------------------------------------------------------------------------
def point_in_time_rows(sessions: pa.Table, source: pa.Table, ttl_s: float | None = None) -> np.ndarray:
    """For each session, the row of ``source`` with the latest ``event_timestamp`` ≤ ``completed_at``
    for the same user (and within ``ttl_s`` when given), or -1."""
    left = pd.DataFrame({"user_id": sessions.column("user_id").to_numpy(zero_copy_only=False),
                         "ts": sessions.column("completed_at").to_numpy(), "pos": np.arange(sessions.num_rows)})
    right = pd.DataFrame({"user_id": source.column("user_id").to_numpy(zero_copy_only=False),
                          "ts": source.column("event_timestamp").to_numpy(), "row": np.arange(source.num_rows)})
    tolerance = pd.Timedelta(seconds=ttl_s) if ttl_s else None
    merged = pd.merge_asof(left.sort_values("ts"), right.sort_values("ts"), on="ts", by="user_id",
                           direction="backward", tolerance=tolerance)
    rows = np.full(sessions.num_rows, -1, np.int64)
    found = merged["row"].notna().to_numpy()
    rows[merged["pos"].to_numpy()[found]] = merged["row"].to_numpy()[found].astype(np.int64)
    return rows


@dataclass(frozen=True)
class FeatureSpec:
    """Every source's spec, in the model's source order; saved beside the model weights."""

    sources: tuple[SourceSpec, ...] = field(default_factory=tuple)

    @classmethod
    def fit(cls, external: dict[str, pa.Table]) -> FeatureSpec:
        return cls(tuple(SourceSpec.fit(name, external[name]) for name in sorted(external)))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps([asdict(s) for s in self.sources], indent=1))

    @classmethod
    def load(cls, path: str | Path) -> FeatureSpec:
        raw = json.loads(Path(path).read_text())
        specs = []
        for s in raw:
            s = {k: tuple(tuple(x) for x in v) if k == "vocab" else tuple(v) if isinstance(v, list) else v
                 for k, v in s.items()}
            specs.append(SourceSpec(**s))
        return cls(tuple(specs))
