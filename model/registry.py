"""The model registry: one directory per version, a champion pointer, a log of every decision.

    registry/
      versions/v0001/     a model directory (model/checkpoint.py) + version.json
      champion.json       {"champion": "v0003", "previous": ["v0001", "v0002"]}
      decisions.jsonl     one line per promote / rollback, accepted or refused, with the figures

``version.json`` holds what a reviewer asks of a version: its metrics, the data window it was
trained on, the questionnaire hash its outputs are keyed by, and its parent (the champion when
it was registered). Writes are atomic (temp + rename), so a reader — a Serve replica loading a
version, another ``lantern promote`` — never sees half a version or half a pointer. Filesystem
only: the same directory works on a laptop, a shared volume or a cluster's mounted storage.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from lantern.errors import ConfigError, ModelError
from model.checkpoint import META, LoadedModel, load_model

VERSIONS, CHAMPION, DECISIONS, VERSION_FILE = "versions", "champion.json", "decisions.jsonl", "version.json"


@dataclass(frozen=True)
class VersionInfo:
    version: str
    created_at: str
    parent: str | None  # the champion when this version was registered
    metrics: dict  # e.g. {"val_f1": 0.58, "test_f1": ...}
    data_window: dict  # {"sessions": N, "from": iso, "to": iso}
    questionnaire_hash: str
    source: str  # where the model came from (a training run's output directory)


@dataclass(frozen=True)
class Decision:
    action: str  # "promote" | "rollback"
    accepted: bool
    reason: str
    candidate: str | None
    champion_before: str | None
    champion_after: str | None
    at: str


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _write_json(path: Path, payload: dict) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump(payload, f, indent=1, default=str)
    os.replace(tmp, path)


class Registry:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    # ---- versions --------------------------------------------------------------------------------
    def versions(self) -> list[str]:
        folder = self.root / VERSIONS
        return sorted(p.name for p in folder.iterdir() if (p / VERSION_FILE).exists()) if folder.exists() else []

    def path(self, version: str) -> Path:
        path = self.root / VERSIONS / version
        if not (path / VERSION_FILE).exists():
            known = ", ".join(self.versions()) or "none"
            raise ModelError(f"model version {version!r} is not in the registry {self.root} (versions: {known})")
        return path

    def info(self, version: str) -> VersionInfo:
        return VersionInfo(**json.loads((self.path(version) / VERSION_FILE).read_text()))

    def register(self, model_dir: str | Path, metrics: dict, data_window: dict | None = None) -> VersionInfo:
        """Copy a trained model directory in as the next version (atomically)."""
        model_dir = Path(model_dir)
        if not (model_dir / META).exists():
            raise ModelError(f"{model_dir} is not a lantern model directory (no {META})")
        meta = json.loads((model_dir / META).read_text())
        (self.root / VERSIONS).mkdir(parents=True, exist_ok=True)
        existing = self.versions()
        version = f"v{int(existing[-1][1:]) + 1 if existing else 1:04d}"
        info = VersionInfo(version, _now(), self.champion(), dict(metrics), dict(data_window or {}),
                           meta.get("questionnaire_hash", ""), str(model_dir))
        staging = Path(tempfile.mkdtemp(dir=self.root / VERSIONS, prefix=f".{version}."))
        shutil.copytree(model_dir, staging, dirs_exist_ok=True)
        _write_json(staging / META, {**meta, "version": version})
        _write_json(staging / VERSION_FILE, asdict(info))
        try:
            os.rename(staging, self.root / VERSIONS / version)  # fails if a concurrent register took it
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise ModelError(f"could not register {version} in {self.root}: {exc}") from exc
        return info

    def load(self, version: str | None = None, device: str = "cpu") -> LoadedModel:
        """A version's model (the champion when ``version`` is None)."""
        version = version or self.champion()
        if version is None:
            raise ModelError(f"the registry {self.root} has no champion; run `lantern promote VERSION`")
        return load_model(self.path(version), device)

    # ---- champion --------------------------------------------------------------------------------
    def _pointer(self) -> dict:
        path = self.root / CHAMPION
        return json.loads(path.read_text()) if path.exists() else {"champion": None, "previous": []}

    def champion(self) -> str | None:
        return self._pointer()["champion"]

    def decisions(self) -> list[Decision]:
        path = self.root / DECISIONS
        lines = path.read_text().splitlines() if path.exists() else []
        return [Decision(**json.loads(line)) for line in lines if line.strip()]

    def _decide(self, decision: Decision, pointer: dict | None) -> Decision:
        if pointer is not None:
            _write_json(self.root / CHAMPION, pointer)
        with open(self.root / DECISIONS, "a") as f:
            f.write(json.dumps(asdict(decision)) + "\n")
        return decision

    def promote(self, version: str, metric: str = "val_f1", min_gain: float = 0.0) -> Decision:
        """Make ``version`` the champion when its ``metric`` ≥ the champion's + ``min_gain``;
        refused otherwise. Either way the decision and both figures are logged."""
        info, pointer = self.info(version), self._pointer()
        before = pointer["champion"]
        if metric not in info.metrics:
            raise ConfigError(f"version {version} has no metric {metric!r} (it has {sorted(info.metrics)})")
        if before == version:
            return self._decide(Decision("promote", False, f"{version} is already the champion", version,
                                         before, before, _now()), None)
        if before is not None:
            theirs = self.info(before).metrics.get(metric)
            ours = info.metrics[metric]
            if theirs is not None and ours < theirs + min_gain:
                return self._decide(Decision(
                    "promote", False, f"{metric} {ours:.4f} < champion {before}'s {theirs:.4f} + {min_gain:g}",
                    version, before, before, _now()), None)
            reason = f"{metric} {ours:.4f} >= champion {before}'s {theirs if theirs is None else round(theirs, 4)}"
        else:
            reason = f"first champion ({metric} {info.metrics[metric]:.4f})"
        previous = pointer["previous"] + ([before] if before else [])
        return self._decide(Decision("promote", True, reason, version, before, version, _now()),
                            {"champion": version, "previous": previous})

    def rollback(self) -> Decision:
        """Restore the previous champion (the one before the last accepted promotion)."""
        pointer = self._pointer()
        before = pointer["champion"]
        if not pointer["previous"]:
            return self._decide(Decision("rollback", False, "no previous champion to restore", None, before,
                                         before, _now()), None)
        restored = pointer["previous"][-1]
        return self._decide(Decision("rollback", True, f"restored {restored} (was {before})", restored, before,
                                     restored, _now()), {"champion": restored, "previous": pointer["previous"][:-1]})
