"""Reading and writing a dataset directory (the data contract)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from lantern.dataset import schema
from lantern.dataset.questionnaire import Questionnaire
from lantern.dataset.validate import validate_external, validate_sessions
from lantern.errors import DataValidationError


@dataclass(frozen=True)
class Dataset:
    questionnaire: Questionnaire
    sessions: pa.Table
    external: dict[str, pa.Table]


def _read_parquet(path: Path) -> pa.Table:
    try:
        return pq.read_table(path)
    except FileNotFoundError as exc:
        raise DataValidationError("file not found", file=str(path)) from exc
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataValidationError(f"not a readable parquet file: {exc}", file=str(path)) from exc


def load_dataset(root: str | Path, validate: bool = True) -> Dataset:
    """Load (and by default validate) a dataset directory."""
    root = Path(root)
    if not root.is_dir():
        raise DataValidationError("dataset directory not found", file=str(root))
    questionnaire = Questionnaire.load(root / schema.QUESTIONNAIRE_FILE)
    sessions_path = root / schema.SESSIONS_FILE
    sessions = _read_parquet(sessions_path)
    if validate:
        sessions = validate_sessions(sessions, questionnaire, str(sessions_path))
    external = {}
    for path in sorted((root / schema.EXTERNAL_DIR).glob("*.parquet")):
        table = _read_parquet(path)
        external[path.stem] = validate_external(table, str(path)) if validate else table
    return Dataset(questionnaire, sessions, external)


def save_dataset(ds: Dataset, root: str | Path) -> None:
    root = Path(root)
    (root / schema.EXTERNAL_DIR).mkdir(parents=True, exist_ok=True)
    ds.questionnaire.save(root / schema.QUESTIONNAIRE_FILE)
    pq.write_table(ds.sessions, root / schema.SESSIONS_FILE)
    for name, table in ds.external.items():
        pq.write_table(table, root / schema.EXTERNAL_DIR / f"{name}.parquet")
