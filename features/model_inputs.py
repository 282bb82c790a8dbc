"""Precomputed vectors → the model's external inputs, with no table in between.

The scorer needs :class:`model.encoding.SourceArrays` (what the external encoders take), not
columns. :func:`model.encoding.shape_source` makes them from columns (parquet, Feast's offline
store, the SDK's online answer); :class:`InputShaper` makes the same arrays straight from a
:class:`features.vector.ParsedBatch`: numerics from the vectors' headers, categories as their
value hashes looked up among the hashes of the model's vocabularies (no string is touched), and
only the last ``max_len`` elements of each sequence gathered. Tests hold the two equal, for every
column kind and on real stores. Pure functions, no Feast import.
"""

from __future__ import annotations

import numpy as np

from features.packing import SourceLayout
from features.vector import ParsedBatch, gather, kept_elements, value_hash
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


class _Words:
    """Every vocabulary word of a model, by value hash: hashes → position among them (the last
    slot: no word; "" hashes to 0, which is never a word), and per vocabulary a lookup table
    from that position to the vocabulary's index + 1 (0 = unknown)."""

    def __init__(self, words: set[str]):
        self.hashes = np.unique(np.array([value_hash(w) for w in words if w], np.uint64))  # sorted

    def positions(self, hashes: np.ndarray) -> np.ndarray:
        if not len(self.hashes):
            return np.zeros(hashes.shape, np.int64)
        at = np.minimum(np.searchsorted(self.hashes, hashes), len(self.hashes) - 1)
        return np.where(self.hashes[at] == hashes, at, len(self.hashes))

    def table(self, vocab: tuple[str, ...]) -> np.ndarray:
        table = np.zeros(len(self.hashes) + 1, np.int64)
        known = [(i, value_hash(v)) for i, v in enumerate(vocab, 1) if v]
        table[np.searchsorted(self.hashes, np.array([h for _, h in known], np.uint64))] = [i for i, _ in known]
        return table


class SourceShaper:
    def __init__(self, spec: SourceSpec, layout: SourceLayout, words: _Words):
        self.kinds = kinds = dict(layout.sequences)
        lacking = [c for c in spec.columns if c not in layout.numeric + layout.categorical + tuple(kinds)]
        if lacking:
            raise ModelError(f"the model reads {spec.name} columns {lacking} that the feature repo's view lacks; "
                             f"run `lantern features apply` with the model's data")
        self.spec, self.layout = spec, layout
        self.num_cols = np.array([layout.numeric.index(c) for c in spec.numeric], np.int64)
        self.mean, self.std = np.array(spec.mean, np.float64), np.array(spec.std, np.float64)
        self.words = words
        self.cat_cols = np.array([layout.categorical.index(c) for c in spec.categorical], np.int64)
        self.vocabs = np.stack([words.table(v) for v in spec.vocab]) if spec.vocab else None  # (k, words + 1)
        self.seq_kind = kinds.get(spec.seq_category)
        if self.seq_kind == "string":
            self.seq_vocab = words.table(spec.seq_vocab)
        elif self.seq_kind is not None:
            self.seq_vocab = _IntVocab(spec.seq_vocab)

    @staticmethod
    def vocab_strings(spec: SourceSpec, layout: SourceLayout) -> set[str]:
        seq = spec.seq_vocab if dict(layout.sequences).get(spec.seq_category) == "string" else ()
        return {v for vocab in spec.vocab for v in vocab} | set(seq)

    def shape(self, p: ParsedBatch) -> SourceArrays:
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
        if len(s.categorical):
            word = self.words.positions(p.categories[name][:, self.cat_cols])  # (m, k)
            out.cat[p.rows_of] = np.where(here[:, None], self.vocabs[np.arange(len(s.categorical)), word], 0)
        if s.seq_category:
            self._sequences(p, out, here)
        return out

    def _sequences(self, p: ParsedBatch, out: SourceArrays, here: np.ndarray) -> None:
        s, name = self.spec, self.layout.name
        count = p.counts[name]
        keep = np.where(here, np.minimum(count, s.max_len), 0)  # (m,) the most recent max_len elements
        skip = count - keep
        owner, number = kept_elements(skip, keep)  # (E,) each kept element's vector and number
        row, pos = p.rows_of[owner], number - skip[owner]

        def column(col: str) -> np.ndarray:
            return gather(p.buf, p.blocks[name, col], owner, number, self.kinds[col])

        if self.seq_kind == "string":
            out.seq_cat[row, pos] = self.seq_vocab[self.words.positions(column(s.seq_category))]
        else:
            out.seq_cat[row, pos] = self.seq_vocab(column(s.seq_category))
        out.seq_mask[row, pos] = True
        for j, col in enumerate(s.seq_values):
            x = (signed_log(column(col).astype(np.float64)) - s.seq_mean[j]) / s.seq_std[j]
            out.seq_val[row, pos, j] = np.nan_to_num(x)


class InputShaper:
    """One model's :class:`FeatureSpec` against the repo's layouts; a model source the repo lacks
    comes back absent for every user (the model degrades to what it has)."""

    def __init__(self, spec: FeatureSpec, layouts: list[SourceLayout]):
        by_name = {x.name: x for x in layouts}
        known = [s for s in spec.sources if s.name in by_name]
        words = _Words(set().union(*(SourceShaper.vocab_strings(s, by_name[s.name]) for s in known)))
        self.spec = spec
        self.sources = {s.name: SourceShaper(s, by_name[s.name], words) for s in known}

    def shape(self, p: ParsedBatch) -> dict[str, SourceArrays]:
        return {s.name: self.sources[s.name].shape(p) if s.name in self.sources else absent_source(s, p.n)
                for s in self.spec.sources}
