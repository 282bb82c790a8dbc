"""One precomputed value per user holding every source: the online lookup's single read.

Binary layout of one user's vector (little endian; pure functions, no Feast import):

    header   per source: event time f8 (NaN = the user has no row)
             per source with numerics: k values f8
             per source with sequences: element count u4
    elements per sequence source, per non-string sequence column: count × (i8 | f4)
    strings  UTF-8, every categorical value and string-sequence element, each followed by US (0x1f)

A batch decodes with numpy gathers over the concatenated vectors (no per-value or per-user
parsing): one gather per numeric column, one gather and one split for all the batch's strings.
Every source keeps its own event time, so TTLs still apply per source at read time.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from features.packing import SEQ_TYPES, SourceLayout

SEP = "\x1f"
SEP_BYTE = ord(SEP)
VALUE_BYTES_TAG = 0x0A  # protobuf Value.bytes_val: field 1, length-delimited
ELEMENTS = {"int": ("<i8", 8), "float": ("<f4", 4)}


def _numeric_seqs(layout: SourceLayout) -> list[tuple[str, str]]:
    return [(c, k) for c, k in layout.sequences if k != "string"]


def header_size(layouts: list[SourceLayout]) -> int:
    return 8 * len(layouts) + sum(8 * len(x.numeric) for x in layouts) + sum(4 for x in layouts if x.sequences)


def encode(layouts: list[SourceLayout], rows: dict[str, dict], stamps: dict[str, float | None]) -> bytes:
    """One user's vector. ``rows[source]`` maps that source's columns to values (None = absent)."""
    head, elems, strings = [], [], []
    for x in layouts:
        head.append(struct.pack("<d", stamps[x.name] if stamps.get(x.name) is not None else float("nan")))
    for x in layouts:
        if x.numeric:
            values = [rows[x.name].get(c) if x.name in rows else None for c in x.numeric]
            head.append(np.array([np.nan if v is None else v for v in values], "<f8").tobytes())
    for x in layouts:
        if not x.sequences:
            continue
        row = rows.get(x.name, {})
        n = len(row.get(x.sequences[0][0]) or [])
        head.append(struct.pack("<I", n))
        for col, kind in _numeric_seqs(x):
            elems.append(np.asarray(row.get(col) or [], ELEMENTS[kind][0]).tobytes())
    for x in layouts:
        row = rows.get(x.name, {})
        strings += [row.get(c) or "" for c in x.categorical]
        for col, kind in x.sequences:
            if kind == "string":
                strings += list(row.get(col) or [])
    if any(SEP in t for t in strings):
        raise ValueError(f"a string feature holds the reserved separator 0x1f: {[t for t in strings if SEP in t]!r}")
    return b"".join(head) + b"".join(elems) + "".join(t + SEP for t in strings).encode()


def ranges(begin: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Indices ``begin[i] .. begin[i] + count[i]`` of every i, concatenated (one vector op)."""
    first = np.cumsum(count) - count
    return np.arange(int(count.sum())) + np.repeat(begin - first, count)


def windows(buf: np.ndarray, width: int) -> np.ndarray:
    """Every ``width``-byte window of ``buf`` (a strided view, no copy): ``windows(buf, 8)[starts]``
    gathers one unaligned 8-byte value per start with a single fancy index."""
    if len(buf) < width:
        return np.zeros((0, width), np.uint8)
    return np.lib.stride_tricks.as_strided(buf, (len(buf) - width + 1, width), (1, 1), writeable=False)


def elements(buf: np.ndarray, block: np.ndarray, first: np.ndarray, count: np.ndarray, kind: str) -> np.ndarray:
    """Elements ``first .. first + count`` of each vector's element block starting at byte ``block``."""
    dtype, size = ELEMENTS[kind]
    before = np.cumsum(count) - count  # elements taken from earlier vectors
    at = np.repeat(block + (first - before) * size, count) + np.arange(int(count.sum())) * size
    return windows(buf, size)[at].view(dtype).reshape(-1)


def _list_array(counts: np.ndarray, values: pa.Array, kind: str) -> pa.Array:
    offsets = np.zeros(len(counts) + 1, np.int32)
    np.cumsum(counts, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), values, type=SEQ_TYPES[kind])


def _strings(data: np.ndarray) -> tuple[pa.Array, np.ndarray]:
    """SEP-terminated UTF-8 strings → a string array built on the bytes (no Python str objects),
    and whether each is non-empty. UTF-8 never has a 0x1f byte inside a multi-byte character."""
    is_sep = data == SEP_BYTE
    ends = np.flatnonzero(is_sep)
    offsets = np.zeros(len(ends) + 1, np.int32)
    offsets[1:] = ends - np.arange(len(ends))  # ends once the separators are dropped
    array = pa.StringArray.from_buffers(len(ends), pa.py_buffer(offsets), pa.py_buffer(data[~is_sep]))
    return array, np.diff(offsets) > 0


@dataclass
class ParsedBatch:
    """A batch of vectors located, not yet converted: m = users with a vector, n = requested."""

    n: int
    rows_of: np.ndarray  # (m,) request position of each stored vector
    buf: np.ndarray  # every vector's bytes, concatenated (uint8)
    present: dict[str, np.ndarray]  # source → (n,) bool: has a row, within the TTL
    numerics: dict[str, np.ndarray]  # source → (m, k) float64, NaN = missing
    counts: dict[str, np.ndarray]  # source → (m,) elements per sequence column
    blocks: dict[tuple[str, str], np.ndarray]  # (source, numeric sequence column) → (m,) first byte
    strings: pa.Array  # every string of the batch, in vector order
    filled: np.ndarray  # (len(strings),) bool: non-empty
    first_string: dict[tuple[str, str], np.ndarray]  # (source, string column) → (m,) its first string

    def present_stored(self, source: str) -> np.ndarray:
        return self.present[source][self.rows_of]  # (m,)


def parse(layouts: list[SourceLayout], vectors: list[bytes | None], now: float = np.inf,
          ttl_s: dict[str, float] | None = None, wrapped: bool = False) -> ParsedBatch:
    """Vectors of a batch (None or empty = unknown user) → where every value lies, with one pass of numpy
    gathers. A source is present for a user when the vector has its row and the row's event time
    is within ``ttl_s[source]`` of ``now``. ``wrapped``: each vector is still inside the online
    store's serialized protobuf ``Value`` (saves a parse per user)."""
    n = len(vectors)
    if None in vectors:
        vectors = [v or b"" for v in vectors]
    lengths = np.fromiter(map(len, vectors), np.int64, n)
    have = lengths > 0  # empty: no vector (the readers return b"" for unknown users)
    rows_of = np.flatnonzero(have)
    lengths = lengths[rows_of]
    m, H = len(rows_of), header_size(layouts)
    ends = np.cumsum(lengths)
    starts = ends - lengths
    buf = np.frombuffer(b"".join(vectors), np.uint8)
    if wrapped and m:  # serialized Value(bytes_val=vector): skip the tag and the varint length
        head = buf[np.minimum(starts[:, None] + np.arange(4), len(buf) - 1)]  # (m, 4)
        if not (head[:, 0] == VALUE_BYTES_TAG).all():
            raise ValueError("online value is not a bytes Value; was the vector view written by lantern?")
        starts = starts + 2 + np.argmin(head[:, 1:] & 0x80, axis=1)  # tag + varint bytes (continuation bit clear)
    header = windows(buf, H)[starts]  # (m, H)
    pos = 0

    def take(width: int, dtype: str) -> np.ndarray:
        nonlocal pos
        part = np.ascontiguousarray(header[:, pos:pos + width]).view(dtype)
        pos += width
        return part

    present = {}
    for x in layouts:
        stamp = np.full(n, np.nan)
        stamp[have] = take(8, "<f8")[:, 0]
        with np.errstate(invalid="ignore"):
            present[x.name] = ~np.isnan(stamp) & (now - stamp <= (ttl_s or {}).get(x.name, np.inf))
    numerics = {x.name: take(8 * len(x.numeric), "<f8") for x in layouts if x.numeric}
    counts = {x.name: take(4, "<u4")[:, 0].astype(np.int64) for x in layouts if x.sequences}
    blocks, cursor = {}, starts + H
    for x in layouts:
        for col, kind in _numeric_seqs(x):
            blocks[x.name, col] = cursor
            cursor = cursor + counts[x.name] * ELEMENTS[kind][1]
    strings, filled = _strings(buf[ranges(cursor, ends - cursor)])  # every string ends with SEP
    per_vector = _strings_per_vector(layouts, counts, m)
    first_string, at = {}, np.cumsum(per_vector) - per_vector  # (m,) each vector's next string
    for x in layouts:
        for col in x.categorical:
            first_string[x.name, col], at = at, at + 1
        for col, kind in x.sequences:
            if kind == "string":
                first_string[x.name, col], at = at, at + counts[x.name]
    return ParsedBatch(n, rows_of, buf, present, numerics, counts, blocks, strings, filled, first_string)


def _strings_per_vector(layouts: list[SourceLayout], counts: dict[str, np.ndarray], m: int) -> np.ndarray:
    per = np.full(m, sum(len(x.categorical) for x in layouts), np.int64)
    for x in layouts:
        per += sum(counts[x.name] for _, kind in x.sequences if kind == "string")
    return per


def to_tables(layouts: list[SourceLayout], p: ParsedBatch) -> dict[str, tuple[pa.Table, np.ndarray]]:
    """Per source: its own columns, one row per requested user (absent rows null / empty), and presence."""
    result = {}
    for x in layouts:
        present, kept = p.present[x.name], None
        table = {}
        if x.numeric:  # one conversion (NaN → null) for every column, then zero-copy slices
            values = np.full((len(x.numeric), p.n), np.nan)
            values[:, p.rows_of] = p.numerics[x.name].T
            values[:, ~present] = np.nan
            flat_values = pa.array(values.reshape(-1), pa.float64(), from_pandas=True)
            table.update({c: flat_values.slice(j * p.n, p.n) for j, c in enumerate(x.numeric)})
        for c in x.categorical:
            index = np.zeros(p.n, np.int64)
            index[p.rows_of] = at = p.first_string[x.name, c]
            valid = present.copy()
            valid[p.rows_of] &= p.filled[at]
            table[c] = p.strings.take(pa.array(index, mask=~valid))
        if x.sequences:
            kept = np.where(p.present_stored(x.name), p.counts[x.name], 0)  # (m,) elements returned
            sizes = np.zeros(p.n, np.int64)
            sizes[p.rows_of] = kept
        for col, kind in x.sequences:
            if kind == "string":
                values = p.strings.take(pa.array(ranges(p.first_string[x.name, col], kept)))
            else:
                values = pa.array(elements(p.buf, p.blocks[x.name, col], 0, kept, kind))
            table[col] = _list_array(sizes, values, kind)
        result[x.name] = (pa.table(table), present)
    return result
