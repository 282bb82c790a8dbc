"""One precomputed value per user holding every source: the online lookup's single read.

Binary layout of one user's vector (little endian; pure functions, no Feast import):

    format   u1 = FORMAT
    header   per source: event time f8 (NaN = the user has no row)
             per source with numerics: k values f8
             per source with categoricals: k value hashes u8 (0 = missing)
             per source with sequences: element count u4
    elements per sequence source, per sequence column: count × (i8 | f4 | u8 hash of a string)
    strings  UTF-8, every categorical value and string-sequence element, each followed by US (0x1f)

A batch decodes with numpy gathers over the concatenated vectors (no per-value or per-user
parsing): one gather for every header, one per sequence column. The model's inputs need no
string at all: categories travel as 64-bit hashes too (:func:`value_hash`), matched against the
hashes of the model's vocabularies (features/model_inputs.py). The strings are split only when
columns are asked for (one gather and one split for all the batch's strings). Every source keeps
its own event time, so TTLs still apply per source at read time.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from features.packing import SEQ_TYPES, SourceLayout

FORMAT = 2  # the first byte of every vector: a reader refuses vectors of another layout
SEP = "\x1f"
SEP_BYTE = ord(SEP)
VALUE_BYTES_TAG = 0x0A  # protobuf Value.bytes_val: field 1, length-delimited
ELEMENTS = {"int": ("<i8", 8), "float": ("<f4", 4), "string": ("<u8", 8)}  # string elements: their hashes


def value_hash(text: str) -> int:
    """A category value's 64-bit hash (blake2b): 0 for "" (missing), never 0 otherwise. The model
    path matches vocabularies on these; a false match needs a 64-bit collision with a vocabulary word."""
    return (int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") or 1) if text else 0


def value_hashes(texts) -> np.ndarray:
    return np.fromiter(map(value_hash, texts), np.uint64)


def header_size(layouts: list[SourceLayout]) -> int:
    return (1 + 8 * len(layouts) + sum(8 * (len(x.numeric) + len(x.categorical)) for x in layouts)
            + sum(4 for x in layouts if x.sequences))


def encode(layouts: list[SourceLayout], rows: dict[str, dict], stamps: dict[str, float | None]) -> bytes:
    """One user's vector. ``rows[source]`` maps that source's columns to values (None = absent)."""
    head, elems, strings = [bytes([FORMAT])], [], []
    for x in layouts:
        head.append(struct.pack("<d", stamps[x.name] if stamps.get(x.name) is not None else float("nan")))
    for x in layouts:
        if x.numeric:
            values = [rows[x.name].get(c) if x.name in rows else None for c in x.numeric]
            head.append(np.array([np.nan if v is None else v for v in values], "<f8").tobytes())
    for x in layouts:
        if x.categorical:
            head.append(value_hashes(rows.get(x.name, {}).get(c) or "" for c in x.categorical).astype("<u8").tobytes())
    for x in layouts:
        if not x.sequences:
            continue
        row = rows.get(x.name, {})
        n = len(row.get(x.sequences[0][0]) or [])
        head.append(struct.pack("<I", n))
        for col, kind in x.sequences:
            values = row.get(col) or []
            elems.append(np.asarray(value_hashes(values) if kind == "string" else values, ELEMENTS[kind][0]).tobytes())
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
    gathers 8 bytes per start with a single fancy index; ``windows(buf, 8).view("<i8")[:, 0]``
    is the unaligned int64 at every byte (gathering from it is ~2x faster than bytes + view)."""
    if len(buf) < width:
        return np.zeros((0, width), np.uint8)
    return np.lib.stride_tricks.as_strided(buf, (len(buf) - width + 1, width), (1, 1), writeable=False)


def kept_elements(first: np.ndarray, count: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Elements ``first .. first + count`` of each vector's sequences: for each such element, its
    vector and its number within its column's block. Computed once for all of a source's columns."""
    owner = np.repeat(np.arange(len(count)), count)
    number = np.arange(len(owner)) + (first - (np.cumsum(count) - count))[owner]
    return owner, number


def gather(buf: np.ndarray, block: np.ndarray, owner: np.ndarray, number: np.ndarray, kind: str) -> np.ndarray:
    """Elements ``number`` of the blocks starting at byte ``block[owner]`` (see :func:`kept_elements`)."""
    dtype, size = ELEMENTS[kind]
    values = windows(buf, size).view(dtype)[:, 0]  # the value starting at every byte (unaligned, no copy)
    return values[block[owner] + number * size]


def elements(buf: np.ndarray, block: np.ndarray, first: np.ndarray, count: np.ndarray, kind: str) -> np.ndarray:
    """Elements ``first .. first + count`` of each vector's element block starting at byte ``block``."""
    return gather(buf, block, *kept_elements(first, count), kind)


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

    layouts: list[SourceLayout]
    n: int
    rows_of: np.ndarray  # (m,) request position of each stored vector
    buf: np.ndarray  # every vector's bytes, concatenated (uint8)
    present: dict[str, np.ndarray]  # source → (n,) bool: has a row, within the TTL
    numerics: dict[str, np.ndarray]  # source → (m, k) float64, NaN = missing
    categories: dict[str, np.ndarray]  # source → (m, k) uint64 value hashes, 0 = missing
    counts: dict[str, np.ndarray]  # source → (m,) elements per sequence column
    blocks: dict[tuple[str, str], np.ndarray]  # (source, sequence column) → (m,) its first element's byte
    text_span: tuple[np.ndarray, np.ndarray]  # (m,) first and end byte of each vector's strings
    stamps: np.ndarray | None = None  # (n, S) each source row's event time (epoch s), NaN = no row
    _text: tuple | None = field(default=None, repr=False)

    def present_stored(self, source: str) -> np.ndarray:
        return self.present[source][self.rows_of]  # (m,)

    def text(self) -> tuple[pa.Array, np.ndarray, dict[tuple[str, str], np.ndarray]]:
        """Every string of the batch in vector order (an Arrow array on the bytes), whether each is
        non-empty, and (source, string column) → (m,) each vector's first string of that column.
        Split on first use: only columns need the strings, the model's inputs use the hashes."""
        if self._text is None:
            begin, end = self.text_span
            strings, filled = _strings(self.buf[ranges(begin, end - begin)])  # every string ends with SEP
            per_vector = _strings_per_vector(self.layouts, self.counts, len(self.rows_of))
            first, at = {}, np.cumsum(per_vector) - per_vector  # (m,) each vector's next string
            for x in self.layouts:
                for col in x.categorical:
                    first[x.name, col], at = at, at + 1
                for col, kind in x.sequences:
                    if kind == "string":
                        first[x.name, col], at = at, at + self.counts[x.name]
            self._text = strings, filled, first
        return self._text


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
    rows_of = np.flatnonzero(lengths)  # empty: no vector (the readers return b"" for unknown users)
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
    if (ends - starts < H).any():
        raise ValueError(f"a precomputed vector is shorter than this layout's {H}-byte header: written for other "
                         f"sources or another format; run `lantern features materialize`")
    header = windows(buf, H)[starts]  # (m, H)
    if not (header[:, 0] == FORMAT).all():
        raise ValueError(f"precomputed vectors of another format (want {FORMAT}); run `lantern features materialize`")
    pos = 1

    def take(width: int, dtype: str) -> np.ndarray:
        nonlocal pos
        part = np.ascontiguousarray(header[:, pos:pos + width]).view(dtype)
        pos += width
        return part

    stamps = np.full((n, len(layouts)), np.nan)
    stamps[rows_of] = take(8 * len(layouts), "<f8")
    ttl = np.array([(ttl_s or {}).get(x.name, np.inf) for x in layouts])
    with np.errstate(invalid="ignore"):
        fresh = np.ascontiguousarray((now - stamps <= ttl).T)  # (S, n); NaN (no row) compares False
    present = {x.name: fresh[i] for i, x in enumerate(layouts)}
    numerics = {x.name: take(8 * len(x.numeric), "<f8") for x in layouts if x.numeric}
    categories = {x.name: take(8 * len(x.categorical), "<u8") for x in layouts if x.categorical}
    counts = {x.name: take(4, "<u4")[:, 0].astype(np.int64) for x in layouts if x.sequences}
    blocks, cursor = {}, starts + H
    for x in layouts:
        for col, kind in x.sequences:
            blocks[x.name, col] = cursor
            cursor = cursor + counts[x.name] * ELEMENTS[kind][1]
    return ParsedBatch(layouts, n, rows_of, buf, present, numerics, categories, counts, blocks, (cursor, ends),
                       stamps)


def _strings_per_vector(layouts: list[SourceLayout], counts: dict[str, np.ndarray], m: int) -> np.ndarray:
    per = np.full(m, sum(len(x.categorical) for x in layouts), np.int64)
    for x in layouts:
        per += sum(counts[x.name] for _, kind in x.sequences if kind == "string")
    return per


def to_tables(p: ParsedBatch) -> dict[str, tuple[pa.Table, np.ndarray]]:
    """Per source: its own columns, one row per requested user (absent rows null / empty), and presence."""
    result = {}
    strings, filled, first_string = p.text()
    for x in p.layouts:
        present, kept = p.present[x.name], None
        table = {}
        if x.numeric:  # one conversion (NaN → null) for every column, then zero-copy slices
            values = np.full((len(x.numeric), p.n), np.nan)
            values[:, p.rows_of] = p.numerics[x.name].T
            values[:, ~present] = np.nan
            flat_values = pa.array(values.reshape(-1), pa.float64(), from_pandas=True)
            table.update({c: flat_values.slice(j * p.n, p.n) for j, c in enumerate(x.numeric)})
        if x.categorical:  # one take for every column, then zero-copy slices
            index = np.zeros((len(x.categorical), p.n), np.int64)
            valid = np.repeat(present[None], len(x.categorical), axis=0)
            for j, c in enumerate(x.categorical):
                index[j, p.rows_of] = at = first_string[x.name, c]
                valid[j, p.rows_of] &= filled[at]
            flat_strings = strings.take(pa.array(index.reshape(-1), mask=~valid.reshape(-1)))
            table.update({c: flat_strings.slice(j * p.n, p.n) for j, c in enumerate(x.categorical)})
        if x.sequences:
            kept = np.where(p.present_stored(x.name), p.counts[x.name], 0)  # (m,) elements returned
            sizes = np.zeros(p.n, np.int64)
            sizes[p.rows_of] = kept
        for col, kind in x.sequences:
            if kind == "string":
                values = strings.take(pa.array(ranges(first_string[x.name, col], kept)))
            else:
                values = pa.array(elements(p.buf, p.blocks[x.name, col], 0, kept, kind))
            table[col] = _list_array(sizes, values, kind)
        result[x.name] = (pa.table(table), present)
    return result
