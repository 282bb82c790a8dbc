"""Encoded sessions ⇄ parquet: what Ray Data hands each Ray Train worker.

The driver encodes once (feature spec fitted on training users, point-in-time features joined);
workers read their shard of fixed-size rows and rebuild :class:`model.data.EncodedData`
without touching the data contract again. Every array is one fixed-size-list column (row-major
flattening); its full shape travels in :func:`shapes` so a zero-width array (a source with no
numerics) needs no column.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from model.data import EncodedData
from model.encoding import SourceArrays, SurveyArrays

SURVEY_FIELDS = ("q_idx", "sel", "y")
SOURCE_FIELDS = tuple(SourceArrays.__dataclass_fields__)


def _arrays(data: EncodedData) -> dict[str, np.ndarray]:
    out = {f: getattr(data.survey, f) for f in SURVEY_FIELDS}
    for i, src in enumerate(data.sources):
        out.update({f"s{i}.{f}": getattr(src, f) for f in SOURCE_FIELDS})
    return out


def shapes(data: EncodedData) -> dict[str, tuple[tuple[int, ...], str]]:
    """Per column: the per-row shape and dtype (what :func:`from_table` needs)."""
    return {name: (a.shape[1:], a.dtype.str) for name, a in _arrays(data).items()}


def write_encoded(data: EncodedData, path: str | Path, rows_per_group: int = 4096) -> Path:
    columns = {"user_id": pa.array(data.user_ids.astype(str))}
    for name, a in _arrays(data).items():
        width = int(np.prod(a.shape[1:], dtype=np.int64))
        if width:
            columns[name] = pa.FixedSizeListArray.from_arrays(pa.array(a.reshape(-1)), width)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path, row_group_size=rows_per_group)
    return path


def from_table(table: pa.Table, layout: dict[str, tuple[tuple[int, ...], str]], n_sources: int) -> EncodedData:
    n = table.num_rows

    def column(name: str) -> np.ndarray:
        shape, dtype = layout[name]
        if name not in table.column_names:
            return np.zeros((n, *shape), dtype)
        flat = table.column(name).combine_chunks().flatten().to_numpy(zero_copy_only=False)
        return np.ascontiguousarray(flat.astype(dtype, copy=False).reshape(n, *shape))

    survey = SurveyArrays(*(column(f) for f in SURVEY_FIELDS))
    sources = [SourceArrays(*(column(f"s{i}.{f}") for f in SOURCE_FIELDS)) for i in range(n_sources)]
    return EncodedData(survey, sources, table.column("user_id").to_numpy(zero_copy_only=False))
