"""The model registry: versions with their lineage, promotion by metric, rollback, a decision log."""

from __future__ import annotations

import json

import pytest

from lantern.errors import ModelError
from model.registry import Registry


def test_versions_hold_weights_lineage_and_metrics(registry, model_dirs):
    assert registry.versions() == ["v0001", "v0002"]
    info = registry.info("v0002")
    assert info.metrics == {"val_f1": model_dirs[1][1]} and info.data_window == {"sessions": 1}
    assert info.parent is None and len(info.questionnaire_hash) == 16
    assert registry.load("v0001").meta["version"] == "v0001"
    for name in ("weights.pt", "config.json", "features.json", "questionnaire.json", "meta.json", "version.json"):
        assert (registry.path("v0001") / name).exists()
    with pytest.raises(ModelError, match="v0009.*versions: v0001, v0002"):
        registry.path("v0009")
    with pytest.raises(ModelError, match="no champion"):
        registry.load()


def test_promote_needs_a_metric_at_least_the_champions_and_rollback_restores(model_dirs, tmp_path):
    reg = Registry(tmp_path / "reg")
    path = model_dirs[0][0]
    for f1 in (0.50, 0.48, 0.55):
        reg.register(path, {"val_f1": f1})
    first = reg.promote("v0001")
    assert first.accepted and reg.champion() == "v0001" and "first champion" in first.reason
    worse = reg.promote("v0002")
    assert not worse.accepted and reg.champion() == "v0001" and "0.4800 < champion v0001's 0.5000" in worse.reason
    assert not reg.promote("v0003", min_gain=0.1).accepted  # the configurable margin
    assert reg.promote("v0003").accepted and reg.champion() == "v0003"
    assert reg.register(path, {"val_f1": 0.1}).parent == "v0003"  # lineage: the champion at registration

    back = reg.rollback()
    assert back.accepted and reg.champion() == "v0001" and back.champion_before == "v0003"
    assert not reg.rollback().accepted and reg.champion() == "v0001"  # nothing older to restore
    log = [json.loads(line) for line in (reg.root / "decisions.jsonl").read_text().splitlines()]
    assert [(d["action"], d["accepted"]) for d in log] == [
        ("promote", True), ("promote", False), ("promote", False), ("promote", True), ("rollback", True),
        ("rollback", False)]


def test_a_non_model_directory_is_refused(tmp_path):
    with pytest.raises(ModelError, match="not a lantern model directory"):
        Registry(tmp_path / "r").register(tmp_path, {"val_f1": 0.5})


def test_the_registry_commands_register_promote_refuse_and_roll_back(monkeypatch, capsys, model_dirs, tmp_path):
    from tests.lantern.test_cli import run

    reg = str(tmp_path / "reg")
    for path, _ in model_dirs:
        code, text = run(monkeypatch, capsys, "register", "--model", path, "--registry", reg)
        assert code == 0 and "registered v000" in text
    f1 = {v: Registry(reg).info(v).metrics["val_f1"] for v in ("v0001", "v0002")}
    assert f1["v0001"] != f1["v0002"]  # two seeds, two models
    low, high = sorted(f1, key=f1.get)
    code, text = run(monkeypatch, capsys, "promote", high, "--registry", reg)
    assert code == 0 and "promoted: first champion" in text
    code, text = run(monkeypatch, capsys, "promote", low, "--registry", reg)
    assert code == 1 and f"refused: val_f1 {f1[low]:.4f} < champion {high}'s" in text
    code, text = run(monkeypatch, capsys, "rollback", "--registry", reg)
    assert code == 1 and "no previous champion" in text and Registry(reg).champion() == high
