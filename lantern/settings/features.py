"""Feature-store configuration: plain data, no Feast import (the CLI's settings read it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

#: the Feast repo shipped with lantern: feature_store.yaml + definitions.py (the simulator's sources)
PACKAGE_REPO = Path(__file__).resolve().parents[2] / "features" / "feature_repo"


@dataclass(frozen=True)
class FeatureStoreConfig:
    repo: Path = PACKAGE_REPO
    online: Literal["sqlite", "redis"] = "sqlite"
    redis: str = "127.0.0.1:6379"  # host:port[,password=...] (Feast's connection_string)
    ttl_days: float = 90.0
    # where `lantern features apply` writes the packed offline parquet (Feast's file sources);
    # None: <repo>/.feast/offline. Relative paths are from the repo.
    offline: Path | None = None
    # read each user's external encoding stored for the served model (`lantern features encode`)
    # where the store has one, instead of encoding the user's sources per event
    encodings: bool = True
