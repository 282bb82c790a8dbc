"""``lantern import``: a wide survey export → the data contract.

What survey tools export: one row per respondent, one column per item holding the chosen option's
code (empty = not answered), plus context columns. :class:`ImportSpec` says which columns are
items, which codes a scale allows, which context columns form which external source, and how the
survey was administered:

* every item to everyone (``administer=1``), a missing cell being a presented but skipped item;
* or a random subset of items per respondent (``administer`` < 1, the SAPA design): the items a
  respondent was not given are absent, as a real adaptive survey's unpresented questions are;
* completion times from a column, or spread uniformly over ``span_days`` from ``start`` (seeded)
  when the export has none. External rows are stamped one day before the completion, so a
  point-in-time join finds them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from lantern.dataset import schema
from lantern.dataset.io import Dataset
from lantern.dataset.questionnaire import Option, Question, Questionnaire
from lantern.errors import DataValidationError


@dataclass(frozen=True)
class ImportSpec:
    items: tuple[str, ...] = ()  # item columns, in presentation order; () = every other column
    sources: dict[str, tuple[str, ...]] = field(default_factory=dict)  # source → its columns
    categorical: tuple[str, ...] = ()  # context columns read as categories (codes, not amounts)
    id_column: str | None = None  # the respondent id; None = the first column
    scale: tuple[int, int] | None = None  # allowed integer codes lo..hi; None = the codes seen
    ordinal: bool = True  # items are ordinal scales (options in code order)
    administer: float = 1.0  # share of items given to each respondent (random subsets below 1)
    completed_at: str | None = None  # column of completion times; None = synthetic
    start: str = "2026-01-01"
    span_days: float = 180.0
    seed: int = 0
    texts: dict[str, str] = field(default_factory=dict)  # item → question text

    def __post_init__(self):
        if not 0 < self.administer <= 1:
            raise DataValidationError(f"administer must be in (0, 1], got {self.administer}", field="administer")
        if self.scale is not None and self.scale[0] >= self.scale[1]:
            raise DataValidationError(f"scale {self.scale[0]}..{self.scale[1]} is empty", field="scale")


def read_table(path: str | Path) -> pd.DataFrame:
    """CSV / TSV (optionally gzipped) or parquet, every column as read."""
    path = Path(path)
    if not path.is_file():
        raise DataValidationError("file not found", file=str(path))
    try:
        if ".parquet" in path.suffixes:
            return pd.read_parquet(path)
        sep = "\t" if ".tsv" in path.suffixes else ","
        return pd.read_csv(path, sep=sep, keep_default_na=True)
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise DataValidationError(f"not a readable table: {exc}", file=str(path)) from exc


def read_texts(path: str | Path, text_column: str = "Item") -> dict[str, str]:
    """Item texts from a dictionary table: its first column names the item."""
    table = read_table(path)
    if text_column not in table.columns:
        raise DataValidationError(f"no {text_column!r} column (has {list(table.columns)})", file=str(path))
    return dict(zip(table.iloc[:, 0].astype(str), table[text_column].astype(str)))


def _show(value) -> str:
    return repr(value.item() if hasattr(value, "item") else value)


def _codes(frame: pd.DataFrame, item: str, file: str) -> pd.Series:
    """An item column as nullable integers; a value that is no whole number is an error."""
    raw = frame[item]
    numeric = pd.to_numeric(raw, errors="coerce")
    bad = (numeric.isna() & raw.notna()) | (numeric.notna() & (numeric % 1 != 0))
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataValidationError(f"{_show(raw.iloc[row])} is not an integer answer code", file=file, row=row, field=item)
    return numeric.astype("Int64")


def _options(codes: dict[str, pd.Series], spec: ImportSpec, file: str) -> dict[str, list[int]]:
    out = {}
    for item, values in codes.items():
        seen = sorted(int(v) for v in values.dropna().unique())
        if spec.scale is not None:
            lo, hi = spec.scale
            outside = values.notna() & ((values < lo) | (values > hi))
            if outside.any():
                row = int(np.flatnonzero(outside.to_numpy())[0])
                raise DataValidationError(f"unknown code {values.iloc[row]} (the scale is {lo}..{hi})",
                                          file=file, row=row, field=item)
            seen = list(range(lo, hi + 1))
        if len(seen) < 2:
            raise DataValidationError(f"needs at least 2 answer codes, found {seen}", file=file, field=item)
        out[item] = seen
    return out


def _check_columns(frame: pd.DataFrame, spec: ImportSpec, file: str) -> tuple[str, list[str]]:
    id_column = spec.id_column or str(frame.columns[0])
    context = [c for cols in spec.sources.values() for c in cols]
    named = [id_column, *context, *spec.items, *([spec.completed_at] if spec.completed_at else [])]
    missing = [c for c in named if c not in frame.columns]
    if missing:
        raise DataValidationError(f"no such column(s) {missing}; the file has {list(frame.columns)}", file=file)
    items = list(spec.items) or [c for c in frame.columns if c not in {id_column, *context, spec.completed_at}]
    both = sorted(set(items) & set(context))
    if both:
        raise DataValidationError(f"column(s) {both} are both items and external features", file=file)
    if not items:
        raise DataValidationError("no item columns", file=file)
    dup = frame[id_column].astype(str).duplicated()
    if dup.any():
        row = int(np.flatnonzero(dup.to_numpy())[0])
        raise DataValidationError(f"duplicate respondent id {_show(frame[id_column].iloc[row])}", file=file, row=row,
                                  field=id_column)
    unknown_cat = sorted(set(spec.categorical) - set(context))
    if unknown_cat:
        raise DataValidationError(f"categorical column(s) {unknown_cat} belong to no source", file=file)
    return id_column, items


def _completion_times(frame: pd.DataFrame, spec: ImportSpec, rng: np.random.Generator, file: str) -> np.ndarray:
    if spec.completed_at is None:
        offsets = (rng.uniform(0, spec.span_days, len(frame)) * 86400e6).astype("timedelta64[us]")
        return np.datetime64(spec.start, "us") + offsets
    times = pd.to_datetime(frame[spec.completed_at], utc=True, errors="coerce")
    if times.isna().any():
        row = int(np.flatnonzero(times.isna().to_numpy())[0])
        raise DataValidationError(f"{_show(frame[spec.completed_at].iloc[row])} is not a timestamp", file=file, row=row,
                                  field=spec.completed_at)
    return times.dt.tz_convert(None).to_numpy().astype("datetime64[us]")


def _answers(codes: dict[str, pd.Series], administered: np.ndarray) -> pa.Array:
    """``list<struct<question_id, option_ids>>``: administered items in order, null = skipped."""
    items = list(codes)
    values = np.stack([codes[i].to_numpy(dtype="float64", na_value=np.nan) for i in items], 1)  # (N, I)
    rows = []
    for r in range(len(values)):
        rows.append([{"question_id": items[j],  # a blank cell: presented, skipped (null)
                      "option_ids": None if np.isnan(values[r, j]) else [str(int(values[r, j]))]}
                     for j in np.flatnonzero(administered[r])])
    return pa.array(rows, pa.list_(pa.struct(list(schema.ANSWER))))


def _source(frame: pd.DataFrame, columns: tuple[str, ...], spec: ImportSpec, user_ids, stamp, file) -> pa.Table:
    """One external source: a row per respondent with any of its columns filled (a respondent
    with none of them is absent from the source, not a row of blanks)."""
    data = {"user_id": pa.array(user_ids), "event_timestamp": pa.array(stamp, schema.TIMESTAMP)}
    for col in columns:
        values = frame[col]
        as_num = pd.to_numeric(values, errors="coerce")
        numeric = (as_num.notna() == values.notna()).all()
        if col in spec.categorical:
            whole = numeric and (as_num.dropna() % 1 == 0).all()
            values = as_num.astype("Int64").astype("string") if whole else values.astype("string")
            data[col] = pa.array(values.to_numpy(dtype=object, na_value=None), pa.string())
        elif not numeric:
            row = int(np.flatnonzero((as_num.isna() & values.notna()).to_numpy())[0])
            raise DataValidationError(f"{_show(values.iloc[row])} is not a number (name the column with "
                                      "--categorical if it holds categories)", file=file, row=row, field=col)
        else:
            data[col] = pa.array(as_num.to_numpy(dtype="float64"), pa.float64())
    keep = frame[list(columns)].notna().any(axis=1).to_numpy()
    return pa.table(data).filter(pa.array(keep))


def import_wide(path: str | Path, spec: ImportSpec) -> Dataset:
    """Read a wide export and build a dataset in the data contract (validate it before use)."""
    file = str(path)
    frame = read_table(path)
    id_column, items = _check_columns(frame, spec, file)
    codes = {item: _codes(frame, item, file) for item in items}
    options = _options(codes, spec, file)
    questions = tuple(Question(id=item, text=spec.texts.get(item, ""), kind="single", ordinal=spec.ordinal,
                               options=tuple(Option(id=str(c)) for c in options[item])) for item in items)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(path).name.split(".")[0])
    questionnaire = Questionnaire(version=f"import-{name}", questions=questions)
    rng = np.random.default_rng(spec.seed)
    n = len(frame)
    administered = np.ones((n, len(items)), bool)
    if spec.administer < 1:
        k = max(1, round(spec.administer * len(items)))
        ranks = np.argsort(rng.random((n, len(items))), 1)
        administered = ranks < k  # k random items per respondent, kept in questionnaire order
    done = _completion_times(frame, spec, rng, file)
    user_ids = frame[id_column].astype(str).to_numpy()
    sessions = pa.table({"session_id": pa.array([f"s-{u}" for u in user_ids]), "user_id": pa.array(user_ids),
                         "completed_at": pa.array(done, schema.TIMESTAMP),
                         "answers": _answers(codes, administered)}, schema=schema.SESSIONS)
    stamp = done - np.timedelta64(86400 * 10**6, "us")
    external = {src: _source(frame, cols, spec, user_ids, stamp, file) for src, cols in spec.sources.items()}
    return Dataset(questionnaire, sessions, external)
