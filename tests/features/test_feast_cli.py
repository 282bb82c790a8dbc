"""`feast apply` and `feast materialize` work on the repo as-is (definitions.py + generated layout.py)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

from features.lookup import OnlineLookup
from features.store import FeatureStoreConfig, apply, open_store
from tests.features.conftest import NOW

REPO = Path(__file__).resolve().parents[2] / "features"


def feast(repo: Path, *args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("feast")
    return subprocess.run([str(exe), "-c", str(repo), *args], capture_output=True, text=True, timeout=300)


def test_feast_cli_applies_and_materializes_the_repo(recent_ds, tmp_path):
    repo = tmp_path / "features"
    repo.mkdir()
    for name in ("feature_store.yaml", "definitions.py", ".feastignore"):
        shutil.copy(REPO / name, repo / name)
    cfg = FeatureStoreConfig(repo=repo)
    apply(open_store(cfg), recent_ds, cfg)  # writes layout.py and the packed offline parquet
    (repo / ".feast" / "registry.db").unlink()  # start from an empty registry: feast apply alone
    done = feast(repo, "apply")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "lantern_v1" in feast(repo, "feature-services", "list").stdout
    start, end = (NOW - timedelta(days=30)).isoformat(), (NOW + timedelta(minutes=1)).isoformat()
    done = feast(repo, "materialize", start, end)
    assert done.returncode == 0, done.stderr[-2000:]
    users = sorted(set(recent_ds.external["engagement"].column("user_id").to_pylist()))[:20]
    rows = OnlineLookup(open_store(cfg), use_vector=False).lookup(users)  # vectors: `lantern features materialize`
    assert rows["engagement"].present.all()
