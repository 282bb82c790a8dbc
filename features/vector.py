"""One precomputed value per user holding every source: the online lookup's single read.

Binary layout of one user's vector (little endian; pure functions, no Feast import):

    header   per source: event time f8 (NaN = the user has no row)
             per source with numerics: k values f8
             per source with sequences: element count u4
    elements per sequence source, per non-string sequence column: count × (i8 | f4)
    strings  UTF-8, every categorical value and string-sequence element, joined by US (0x1f)

A batch decodes with numpy gathers over the concatenated vectors (no per-value parsing); only
the strings are split per user. Every source keeps its own event time, so TTLs still apply
per source at read time.
"""

from __future__ import annotations

import struct

import numpy as np
import pyarrow as pa

from features.packing import SEQ_TYPES, SourceLayout

SEP = "\x1f"
VALUE_BYTES_TAG = 0x0A  # protobuf Value.bytes_val: field 1, length-delimited
_ELEM = {"int": ("<i8", 8), "float": ("<f4", 4)}


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
            elems.append(np.asarray(row.get(col) or [], _ELEM[kind][0]).tobytes())
    for x in layouts:
        row = rows.get(x.name, {})
        strings += [row.get(c) or "" for c in x.categorical]
        for col, kind in x.sequences:
            if kind == "string":
                strings += list(row.get(col) or [])
    return b"".join(head) + b"".join(elems) + SEP.join(strings).encode()


def decode(layouts: list[SourceLayout], vectors: list[bytes | None], now: float = np.inf,
           ttl_s: dict[str, float] | None = None, wrapped: bool = False) -> dict[str, tuple[pa.Table, np.ndarray]]:
    """Vectors of a batch (None = unknown user) → per source: its columns and presence.

    A source is present for a user when the vector has its row and the row's event time is
    within ``ttl_s[source]`` of ``now``; absent rows come back null / empty. ``wrapped``: each
    vector is still inside the online store's serialized protobuf ``Value`` (saves a parse per user)."""
    n = len(vectors)
    all_lengths = np.array([-1 if v is None else len(v) for v in vectors], np.int64)
    have = all_lengths >= 0
    blobs = [v for v in vectors if v is not None]
    m, H = len(blobs), header_size(layouts)
    lengths = all_lengths[have]
    starts = np.cumsum(lengths) - lengths
    blob_starts = starts  # where each stored blob begins in ``buf`` (string tails are cut from blobs)
    buf = np.frombuffer(b"".join(blobs), np.uint8)
    if wrapped and m:  # serialized Value(bytes_val=vector): skip the tag and the varint length
        head = buf[np.minimum(starts[:, None] + np.arange(4), len(buf) - 1)]  # (m, 4)
        if not (head[:, 0] == VALUE_BYTES_TAG).all():
            raise ValueError("online value is not a bytes Value; was the vector view written by lantern?")
        skip = 2 + np.argmin(head[:, 1:] & 0x80, axis=1)  # tag + varint bytes (continuation bit clear)
        starts, lengths = starts + skip, lengths - skip
    header = buf[starts[:, None] + np.arange(H)] if m else np.zeros((0, H), np.uint8)  # (m, H)
    pos = 0

    def take(width: int, dtype: str) -> np.ndarray:
        nonlocal pos
        part = np.ascontiguousarray(header[:, pos:pos + width]).view(dtype)
        pos += width
        return part

    stamps = {x.name: take(8, "<f8")[:, 0] for x in layouts}
    numerics = {x.name: take(8 * len(x.numeric), "<f8") for x in layouts if x.numeric}
    counts = {x.name: take(4, "<u4")[:, 0].astype(np.int64) for x in layouts if x.sequences}
    cursor = starts + H  # per user: where the next element block begins
    out_cols: dict[str, dict[str, pa.Array]] = {x.name: {} for x in layouts}
    for x in layouts:
        if not x.sequences:
            continue
        cnt = counts[x.name]
        offsets = np.concatenate([[0], np.cumsum(cnt)]).astype(np.int32)
        for col, kind in _numeric_seqs(x):
            dtype, size = _ELEM[kind]
            rel = np.arange(offsets[-1]) - np.repeat(offsets[:-1], cnt)
            idx = (np.repeat(cursor, cnt) + rel * size)[:, None] + np.arange(size)
            values = np.ascontiguousarray(buf[idx]).view(dtype).reshape(-1) if len(idx) else np.zeros(0, dtype)
            out_cols[x.name][col] = (offsets, values.astype(np.float32 if kind == "float" else np.int64))
            cursor = cursor + cnt * size
    string_seqs = any(k == "string" for x in layouts for _, k in x.sequences)
    n_cats = sum(len(x.categorical) for x in layouts)
    tails = [b[c - s:] for b, c, s in zip(blobs, cursor.tolist(), blob_starts.tolist())]
    if string_seqs:  # variable string counts: split per user
        parts = [t.decode().split(SEP) for t in tails]
    elif n_cats and m:  # exactly n_cats strings per vector: one split for the whole batch
        flat = np.array(SEP.encode().join(tails).decode().split(SEP), dtype=object).reshape(m, n_cats)
    at = [0] * m  # per user: next unread string (string-sequence layouts)
    cat_pos = 0
    rows_of = np.flatnonzero(have)
    result = {}
    for x in layouts:
        cols: dict[str, pa.Array] = {}
        stamp = np.full(n, np.nan)
        stamp[have] = stamps[x.name]
        with np.errstate(invalid="ignore"):
            present = ~np.isnan(stamp) & (now - stamp <= (ttl_s or {}).get(x.name, np.inf))
        if x.numeric:  # one conversion (NaN → null) for every column, then zero-copy slices
            values = np.full((len(x.numeric), n), np.nan)
            values[:, have] = numerics[x.name].T
            values[:, ~present] = np.nan
            flat_values = pa.array(values.reshape(-1), pa.float64(), from_pandas=True)
            for j, c in enumerate(x.numeric):
                cols[c] = flat_values.slice(j * n, n)
        for c in x.categorical:
            column = np.full(n, None, dtype=object)
            if string_seqs:
                for u, row in enumerate(rows_of):
                    column[row] = parts[u][at[u]] or None
                    at[u] += 1
            elif m:
                column[rows_of] = flat[:, cat_pos]
            cat_pos += 1
            column[~present | (column == "")] = None
            cols[c] = pa.array(column, pa.string())
        for col, kind in x.sequences:
            if kind == "string":
                lists: list[list[str]] = [[] for _ in range(n)]
                for u, row in enumerate(rows_of):
                    k = int(counts[x.name][u])
                    if present[row]:
                        lists[row] = parts[u][at[u]:at[u] + k]
                    at[u] += k
                cols[col] = pa.array(lists, SEQ_TYPES[kind])
                continue
            offsets, values = out_cols[x.name][col]
            cnt = np.diff(offsets)
            keep = np.repeat(present[rows_of], cnt)
            sizes = np.zeros(n, np.int32)
            sizes[have] = cnt
            sizes[~present] = 0
            full_off = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int32)
            cols[col] = pa.ListArray.from_arrays(pa.array(full_off), pa.array(values[keep])).cast(SEQ_TYPES[kind])
        result[x.name] = (pa.table(cols), present)
    return result
