"""`lantern import`: a wide survey export (one row per respondent) → a dataset directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from app.cli_common import out
from lantern.errors import ConfigError


def _names(text: str | None) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip()) if text else ()


def _sources(specs: list[str]) -> dict[str, tuple[str, ...]]:
    sources = {}
    for spec in specs:
        name, sep, cols = spec.partition("=")
        if not sep or not name.strip() or not _names(cols):
            raise ConfigError(f"--source {spec!r}: write NAME=COLUMN[,COLUMN…], e.g. demographics=age,gender")
        sources[name.strip()] = _names(cols)
    return sources


def _scale(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    lo, sep, hi = text.partition(":")
    try:
        return int(lo), int(hi)
    except ValueError:
        raise ConfigError(f"--scale {text!r}: write LO:HI, e.g. 1:6") from None


def import_cmd(
    table: Annotated[Path, typer.Argument(help="Wide export: CSV/TSV (optionally .gz) or parquet.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Dataset directory to write.")],
    items: Annotated[Optional[str], typer.Option(help="Item columns, comma-separated, in order "
                                                      "(default: every column not named elsewhere).")] = None,
    source: Annotated[list[str], typer.Option(help="An external source: NAME=COL,COL (repeatable).")] = [],  # noqa: B006
    categorical: Annotated[Optional[str], typer.Option(help="Context columns holding categories.")] = None,
    id_column: Annotated[Optional[str], typer.Option(help="Respondent id column (default: the first).")] = None,
    scale: Annotated[Optional[str], typer.Option(help="Allowed answer codes LO:HI (default: the codes seen).")] = None,
    nominal: Annotated[bool, typer.Option(help="Items are categories, not ordinal scales.")] = False,
    administer: Annotated[float, typer.Option(help="Share of items given to each respondent; below 1 a "
                                                   "random subset per respondent (SAPA design).")] = 1.0,
    completed_at: Annotated[Optional[str], typer.Option(help="Completion-time column (default: synthetic, "
                                                             "spread over --span-days from --start).")] = None,
    start: Annotated[str, typer.Option(help="First synthetic completion date.")] = "2026-01-01",
    span_days: Annotated[float, typer.Option(min=0)] = 180.0,
    seed: Annotated[int, typer.Option(help="Seeds subsets and synthetic times.")] = 0,
    dictionary: Annotated[Optional[Path], typer.Option(help="Item texts: first column the item, an "
                                                            "'Item' column the text.")] = None,
):
    """Turn a wide survey export into the data contract (questionnaire, sessions, sources)."""
    from lantern.dataset.importer import ImportSpec, import_wide, read_texts
    from lantern.dataset.io import load_dataset, save_dataset

    spec = ImportSpec(items=_names(items), sources=_sources(source), categorical=_names(categorical),
                      id_column=id_column, scale=_scale(scale), ordinal=not nominal, administer=administer,
                      completed_at=completed_at, start=start, span_days=span_days, seed=seed,
                      texts=read_texts(dictionary) if dictionary else {})
    ds = import_wide(table, spec)
    save_dataset(ds, out_dir)
    ds = load_dataset(out_dir)  # the contract's own checks over what was written
    answered = sum(len(a) for a in ds.sessions.column("answers").to_pylist())
    out.print(f"wrote {ds.sessions.num_rows} sessions, {len(ds.questionnaire.questions)} questions "
              f"({ds.questionnaire.n_keys} response keys), {answered} presented items, sources "
              f"{ {k: v.num_rows for k, v in ds.external.items()} } to {out_dir}")
