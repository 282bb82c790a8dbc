"""A model version on disk: weights, model config, feature spec, questionnaire, metadata.

This directory layout is also the model registry's version format (model/registry.py).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from lantern.dataset.questionnaire import Questionnaire
from lantern.errors import ModelError
from model.baseline import LogisticBaseline
from model.encoding import FeatureSpec
from model.lantern import Lantern, LanternConfig, SourceDims

WEIGHTS, CONFIG, FEATURES, QUESTIONNAIRE, META = (
    "weights.pt", "config.json", "features.json", "questionnaire.json", "meta.json")


def tuned_threshold(meta: dict, override: float | None = None, default: float = 0.5) -> float:
    """The multi-select threshold: ``override`` when given, else the one tuned on validation data
    when the model was trained (``default`` for models saved before it was)."""
    if override is not None:
        return override
    return float(meta.get("training", {}).get("multi_threshold", default))


def build_model(cfg: LanternConfig) -> nn.Module:
    return LogisticBaseline(cfg) if cfg.variant == "logistic" else Lantern(cfg)


@dataclass
class LoadedModel:
    model: nn.Module
    config: LanternConfig
    features: FeatureSpec
    questionnaire: Questionnaire
    meta: dict

    def version(self, path: str | Path) -> str:
        """The version its scores name: the registry's, else the model directory's name."""
        return self.meta.get("version", Path(path).name)


def save_model(path: str | Path, model: nn.Module, features: FeatureSpec, questionnaire: Questionnaire,
               meta: dict) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, path / WEIGHTS)
    (path / CONFIG).write_text(json.dumps(asdict(model.cfg), indent=1))
    features.save(path / FEATURES)
    questionnaire.save(path / QUESTIONNAIRE)
    meta = {**meta, "questionnaire_hash": questionnaire.content_hash}
    (path / META).write_text(json.dumps(meta, indent=1, default=str))
    return path


def load_model(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    path = Path(path)
    missing = [f for f in (WEIGHTS, CONFIG, FEATURES, QUESTIONNAIRE, META) if not (path / f).exists()]
    if missing:
        raise ModelError(f"{path} is not a lantern model directory (missing {', '.join(missing)})")
    raw = json.loads((path / CONFIG).read_text())
    raw["sources"] = tuple(SourceDims(**{**s, "cat_cards": tuple(s["cat_cards"])}) for s in raw["sources"])
    raw.setdefault("wide", False)  # saved before the wide path and the question-kind outputs existed
    for name in ("key_question", "single_select"):
        raw[name] = tuple(raw.get(name, ()))
    cfg = LanternConfig(**raw)
    model = build_model(cfg)
    try:
        model.load_state_dict(torch.load(path / WEIGHTS, map_location="cpu", weights_only=True))
    except (RuntimeError, OSError) as exc:
        raise ModelError(f"{path / WEIGHTS} does not match {path / CONFIG}: {exc}") from exc
    model.to(device).eval()
    return LoadedModel(model, cfg, FeatureSpec.load(path / FEATURES), Questionnaire.load(path / QUESTIONNAIRE),
                       json.loads((path / META).read_text()))
