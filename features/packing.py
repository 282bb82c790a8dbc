"""Packed feature layout: each external source's columns as a few array features.

An online read costs one protobuf value per feature per user, so a source with a dozen
columns costs a dozen parses. Packing folds every numeric column into one ``Array(Float64)``
(`num`), every categorical column into one ``Array(String)`` (`cat`), and keeps each sequence
column as its own array, so a user costs at most 2 + (sequence columns) values per source.

The layout depends only on the source's schema (not on any model's statistics), so one feature
repo serves every model version; the model's :class:`model.encoding.SourceSpec` shapes the
unpacked columns exactly as it shapes parquet rows. Pure functions, no Feast import.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lantern.dataset import schema

NUM, CAT = "num", "cat"
NULL_CATEGORY = ""  # a missing categorical value inside the packed string array


@dataclass(frozen=True)
class SourceLayout:
    name: str
    numeric: tuple[str, ...]
    categorical: tuple[str, ...]
    sequences: tuple[tuple[str, str], ...]  # (column, "int" | "float" | "string")

    @classmethod
    def from_schema(cls, name: str, table_schema: pa.Schema) -> SourceLayout:
        numeric, categorical, sequences = [], [], []
        for f in table_schema:
            if f.name in schema.EXTERNAL_KEYS.names:
                continue
            kind = schema.feature_kind(f.type)
            if kind == "numeric":
                numeric.append(f.name)
            elif kind == "categorical":
                categorical.append(f.name)
            elif kind == "sequence":
                inner = f.type.value_type
                sequences.append((f.name, "float" if pa.types.is_floating(inner)
                                  else "int" if pa.types.is_integer(inner) else "string"))
        return cls(name, tuple(numeric), tuple(categorical), tuple(sequences))

    @property
    def features(self) -> tuple[str, ...]:
        """Names of the packed features, in order."""
        return ((NUM,) if self.numeric else ()) + ((CAT,) if self.categorical else ()) + tuple(
            c for c, _ in self.sequences)

    def to_dict(self) -> dict:
        return {"name": self.name, "numeric": list(self.numeric), "categorical": list(self.categorical),
                "sequences": [list(s) for s in self.sequences]}

    @classmethod
    def from_dict(cls, d: dict) -> SourceLayout:
        return cls(d["name"], tuple(d["numeric"]), tuple(d["categorical"]),
                   tuple((c, k) for c, k in d["sequences"]))


SEQ_TYPES = {"float": pa.list_(pa.float32()), "int": pa.list_(pa.int64()), "string": pa.list_(pa.string())}


def pack(layout: SourceLayout, table: pa.Table) -> pa.Table:
    """Contract table → ``user_id, event_timestamp`` + packed feature columns."""
    n = table.num_rows
    out = {"user_id": table.column("user_id"), "event_timestamp": table.column("event_timestamp")}
    if layout.numeric:
        cols = [np.asarray(pc.cast(table.column(c), pa.float64()).to_numpy(zero_copy_only=False), np.float64)
                for c in layout.numeric]
        matrix = np.stack(cols, 1).reshape(-1)  # nulls arrive as NaN
        offsets = np.arange(0, n * len(cols) + 1, len(cols), dtype=np.int32)
        out[NUM] = pa.ListArray.from_arrays(pa.array(offsets), pa.array(matrix, pa.float64()))
    if layout.categorical:
        cols = [pc.fill_null(pc.cast(table.column(c), pa.string()), NULL_CATEGORY).to_numpy(zero_copy_only=False)
                for c in layout.categorical]
        flat = np.stack(cols, 1).reshape(-1)
        offsets = np.arange(0, n * len(cols) + 1, len(cols), dtype=np.int32)
        out[CAT] = pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, pa.string()))
    for col, kind in layout.sequences:
        out[col] = pc.cast(pc.fill_null(table.column(col), pa.scalar([], table.column(col).type)), SEQ_TYPES[kind])
    return pa.table(out)


def unpack(layout: SourceLayout, packed: dict[str, list]) -> pa.Table:
    """Packed per-user values (lists, ``None`` = no row) → a table with the source's own columns.

    ``packed[feature][i]`` is user i's value of a packed feature. Rows with no value come back
    null / empty; the caller's presence mask says which rows are real."""
    cols: dict[str, pa.Array] = {}
    if layout.numeric:
        k = len(layout.numeric)
        matrix = np.array([v if v is not None and len(v) == k else [np.nan] * k for v in packed[NUM]],
                          np.float64).reshape(-1, k)
        for j, c in enumerate(layout.numeric):
            cols[c] = pa.array(matrix[:, j], pa.float64(), from_pandas=True)
    if layout.categorical:
        k = len(layout.categorical)
        rows = [v if v is not None and len(v) == k else [NULL_CATEGORY] * k for v in packed[CAT]]
        for j, c in enumerate(layout.categorical):
            cols[c] = pa.array([r[j] or None for r in rows], pa.string())
    for col, kind in layout.sequences:
        cols[col] = pa.array([v if v is not None else [] for v in packed[col]], SEQ_TYPES[kind])
    return pa.table(cols)


def unpack_present(layout: SourceLayout, packed: dict[str, list]) -> tuple[pa.Table, np.ndarray]:
    """:func:`unpack`, plus the presence mask: a row is present when any packed feature has a value."""
    n = len(packed[layout.features[0]])
    present = np.array([any(packed[f][i] is not None for f in layout.features) for i in range(n)], bool)
    return unpack(layout, packed), present
