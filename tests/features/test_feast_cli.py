"""The feature repo is declarative: `feast apply` and `feast materialize` work on it as-is
(feature_store.yaml + definitions.py, nothing else), and its definitions.py is what
`lantern features apply` writes for the simulator's sources."""

from __future__ import annotations

import shutil
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

from features.lookup import OnlineLookup
from features.repo import FEATURE_SERVICE
from features.store import DEFINITIONS, FeatureStoreConfig, apply, open_store
from lantern.settings.features import PACKAGE_REPO
from tests.features.conftest import NOW

REPO = PACKAGE_REPO


def feast(repo: Path, *args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("feast")
    return subprocess.run([str(exe), "-c", str(repo), *args], capture_output=True, text=True, timeout=300)


def test_feast_cli_applies_and_materializes_the_repo(recent_ds, tmp_path):
    repo = tmp_path / "features"
    repo.mkdir()
    assert {p.name for p in REPO.iterdir() if p.name != ".feast"} == {"feature_store.yaml", DEFINITIONS}
    shutil.copy(REPO / "feature_store.yaml", repo / "feature_store.yaml")
    cfg = FeatureStoreConfig(repo=repo)
    apply(open_store(cfg), recent_ds, cfg)  # writes definitions.py and the packed offline parquet
    assert (repo / DEFINITIONS).read_text() == (REPO / DEFINITIONS).read_text()  # the shipped file: the same
    namespace: dict = {}
    exec(compile((repo / DEFINITIONS).read_text(), DEFINITIONS, "exec"), namespace)  # module-level objects
    assert [p.name for p in namespace[FEATURE_SERVICE].feature_view_projections] == sorted(recent_ds.external)
    (repo / ".feast" / "registry.db").unlink()  # start from an empty registry: feast apply alone
    done = feast(repo, "apply")
    assert done.returncode == 0, done.stderr[-2000:]
    assert open_store(cfg).get_feature_service(FEATURE_SERVICE).name == FEATURE_SERVICE  # in the CLI's registry
    start, end = (NOW - timedelta(days=30)).isoformat(), (NOW + timedelta(minutes=1)).isoformat()
    done = feast(repo, "materialize", start, end)
    assert done.returncode == 0, done.stderr[-2000:]
    users = sorted(set(recent_ds.external["engagement"].column("user_id").to_pylist()))[:20]
    rows = OnlineLookup(open_store(cfg), use_vector=False).lookup(users)  # vectors: `lantern features materialize`
    assert rows["engagement"].present.all()
