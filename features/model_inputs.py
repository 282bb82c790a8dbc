"""Precomputed vectors → the model's external inputs, with no table in between.

The scorer needs :class:`model.encoding.SourceArrays` (what the external encoders take), not
columns. :func:`model.encoding.shape_source` makes them from columns (parquet, Feast's offline
store, the SDK's online answer); :class:`InputShaper` makes the same arrays straight from a
:class:`features.vector.ParsedBatch`: numerics from the vectors' headers, categories through the
model's vocabularies, and only the last ``max_len`` elements of each sequence gathered. A test
holds the two equal on a real store. Pure functions, no Feast import.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from features.packing import SourceLayout
from features.vector import ParsedBatch, elements, ranges
from lantern.errors import ModelError
from model.encoding import FeatureSpec, SourceArrays, SourceSpec, absent_source, signed_log


class _IntVocab:
    """Integer category ids → vocabulary index + 1 (0 = unknown): a dense table over the ids'
    range when it is small, else a binary search."""

    DENSE_MAX = 1 << 20

    def __init__(self, vocab: tuple[str, ...]):
        ids = np.array([int(v) for v in vocab], np.int64)
        self.low = int(ids.min()) if len(ids) else 0
        span = int(ids.max()) - self.low + 1 if len(ids) else 0
        self.dense = np.zeros(span + 1, np.int64) if span <= self.DENSE_MAX else None  # last slot: out of range
        if self.dense is not None:
            self.dense[ids - self.low] = np.arange(1, len(ids) + 1)
        self.order = np.argsort(ids, kind="stable")
        self.sorted = ids[self.order]

    def __call__(self, values: np.ndarray) -> np.ndarray:
        if not len(self.sorted):
            return np.zeros(len(values), np.int64)
        if self.dense is not None:
            slot = values - self.low
            return self.dense[np.where((slot >= 0) & (slot < len(self.dense) - 1), slot, len(self.dense) - 1)]
        at = np.minimum(np.searchsorted(self.sorted, values), len(self.sorted) - 1)
        return np.where(self.sorted[at] == values, self.order[at] + 1, 0)


def _lut(vocab: tuple[str, ...], universe: dict[str, int]) -> np.ndarray:
    """Position in ``universe`` (its last slot: not found) → index in ``vocab`` + 1, 0 = unknown."""
    table = np.zeros(len(universe) + 1, np.int64)
    table[[universe[v] for v in vocab]] = np.arange(1, len(vocab) + 1)
    return table


class SourceShaper:
    def __init__(self, spec: SourceSpec, layout: SourceLayout, universe: dict[str, int]):
        kinds = dict(layout.sequences)
        lacking = [c for c in spec.columns if c not in layout.numeric + layout.categorical + tuple(kinds)]
        if lacking:
            raise ModelError(f"the model reads {spec.name} columns {lacking} that the feature repo's view lacks; "
                             f"run `lantern features apply` with the model's data")
        self.spec, self.layout = spec, layout
        self.num_cols = np.array([layout.numeric.index(c) for c in spec.numeric], np.int64)
        self.mean, self.std = np.array(spec.mean, np.float64), np.array(spec.std, np.float64)
        self.vocabs = [_lut(v, universe) for v in spec.vocab]
        self.seq_kind = kinds.get(spec.seq_category)
        if self.seq_kind == "string":
            self.seq_vocab = _lut(spec.seq_vocab, universe)
        elif self.seq_kind is not None:
            self.seq_vocab = _IntVocab(spec.seq_vocab)

    @staticmethod
    def vocab_strings(spec: SourceSpec, layout: SourceLayout) -> set[str]:
        seq = spec.seq_vocab if dict(layout.sequences).get(spec.seq_category) == "string" else ()
        return {v for vocab in spec.vocab for v in vocab} | set(seq)

    def shape(self, p: ParsedBatch, word: np.ndarray) -> SourceArrays:
        """``word``: each of the batch's strings as its position in the universe (last slot: none)."""
        s, name, n = self.spec, self.layout.name, p.n
        present = p.present[name]
        here = p.present_stored(name)  # (m,)
        out = absent_source(s, n)
        out.present = present.copy()
        if len(s.numeric):
            x = (signed_log(p.numerics[name][:, self.num_cols]) - self.mean) / self.std  # (m, k)
            ok = np.isfinite(x) & here[:, None]
            out.num[p.rows_of] = np.where(ok, x, 0.0)
            out.num_missing[p.rows_of] = ~ok
        for j, col in enumerate(s.categorical):
            at = p.first_string[name, col]
            out.cat[p.rows_of, j] = np.where(here & p.filled[at], self.vocabs[j][word[at]], 0)
        if s.seq_category:
            self._sequences(p, out, here, word)
        return out

    def _sequences(self, p: ParsedBatch, out: SourceArrays, here: np.ndarray, word: np.ndarray) -> None:
        s, name = self.spec, self.layout.name
        count = p.counts[name]
        keep = np.where(here, np.minimum(count, s.max_len), 0)  # (m,) the most recent max_len elements
        skip = count - keep
        row = np.repeat(p.rows_of, keep)
        pos = np.arange(len(row)) - np.repeat(np.cumsum(keep) - keep, keep)
        if self.seq_kind == "string":
            out.seq_cat[row, pos] = self.seq_vocab[word[ranges(p.first_string[name, s.seq_category] + skip, keep)]]
        else:
            out.seq_cat[row, pos] = self.seq_vocab(self._elements(p, s.seq_category, skip, keep))
        out.seq_mask[row, pos] = True
        for j, col in enumerate(s.seq_values):
            x = (signed_log(self._elements(p, col, skip, keep).astype(np.float64)) - s.seq_mean[j]) / s.seq_std[j]
            out.seq_val[row, pos, j] = np.nan_to_num(x)

    def _elements(self, p: ParsedBatch, col: str, skip: np.ndarray, keep: np.ndarray) -> np.ndarray:
        return elements(p.buf, p.blocks[self.layout.name, col], skip, keep, dict(self.layout.sequences)[col])


class InputShaper:
    """One model's :class:`FeatureSpec` against the repo's layouts; a model source the repo lacks
    comes back absent for every user (the model degrades to what it has)."""

    def __init__(self, spec: FeatureSpec, layouts: list[SourceLayout]):
        by_name = {x.name: x for x in layouts}
        known = [s for s in spec.sources if s.name in by_name]
        words = sorted(set().union(*(SourceShaper.vocab_strings(s, by_name[s.name]) for s in known)))
        self.universe = pa.array(words, pa.string())  # every vocabulary's strings: one lookup per batch
        universe = {w: i for i, w in enumerate(words)}
        self.spec = spec
        self.sources = {s.name: SourceShaper(s, by_name[s.name], universe) for s in known}

    def shape(self, p: ParsedBatch) -> dict[str, SourceArrays]:
        word = pc.fill_null(pc.index_in(p.strings, value_set=self.universe), len(self.universe))
        word = np.asarray(word.to_numpy(zero_copy_only=False), np.int64)
        return {s.name: self.sources[s.name].shape(p, word) if s.name in self.sources else absent_source(s, p.n)
                for s in self.spec.sources}
