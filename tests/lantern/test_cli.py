"""The `lantern` command: exit codes, error messages, config file + environment precedence."""

import json
import sys

import pytest

from app.cli import main


def run(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["lantern", *map(str, args)])
    with pytest.raises(SystemExit) as exit_:
        main()
    captured = capsys.readouterr()
    return exit_.value.code or 0, " ".join((captured.out + captured.err).split())  # undo Rich's wrapping


def test_help_lists_every_job(monkeypatch, capsys):
    code, text = run(monkeypatch, capsys, "--help")
    assert code == 0
    for job in ("simulate", "validate", "train", "evaluate", "bench", "demo"):
        assert job in text


def test_bad_paths_and_flags_exit_with_clear_errors(monkeypatch, capsys, tmp_path):
    code, text = run(monkeypatch, capsys, "validate", tmp_path / "absent")
    assert code == 3 and "dataset directory not found" in text
    code, text = run(monkeypatch, capsys, "train", "--data", tmp_path, "--variant", "nope")
    assert code == 2 and "unknown variant 'nope'" in text
    code, text = run(monkeypatch, capsys, "simulate", "--users", "3")
    assert code == 2 and "--users" in text
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nepochs = ")
    code, text = run(monkeypatch, capsys, "--config", bad, "train")
    assert code == 2 and "not valid TOML" in text
    code, text = run(monkeypatch, capsys, "evaluate", "--model", tmp_path, "--data", tmp_path)
    assert code == 4 and "not a lantern model directory" in text


def test_simulate_train_evaluate_with_config_file_and_env_overrides(monkeypatch, capsys, tmp_path):
    data, models = tmp_path / "data", tmp_path / "models"
    cfg = tmp_path / "lantern.toml"
    cfg.write_text(f'[paths]\ndata = "{data}"\nmodels = "{models}"\n[simulate]\nusers = 400\n'
                   '[train]\nepochs = 3\nseed = 5\nbatch_size = 64\n')
    monkeypatch.setenv("LANTERN_TRAIN__SEED", "9")  # env beats the file
    code, text = run(monkeypatch, capsys, "--config", cfg, "simulate")
    assert code == 0 and "wrote" in text
    assert run(monkeypatch, capsys, "validate", data)[0] == 0
    code, text = run(monkeypatch, capsys, "--config", cfg, "train", "--epochs", "1", "--variant", "survey_only")
    assert code == 0, text
    meta = json.loads((models / "survey_only-small" / "meta.json").read_text())
    assert meta["training"]["config"]["epochs"] == 1  # flag beats env and file
    assert meta["training"]["config"]["seed"] == 9
    assert meta["training"]["config"]["batch_size"] == 64
    report = tmp_path / "eval.json"
    code, text = run(monkeypatch, capsys, "--config", cfg, "evaluate", "--model", models / "survey_only-small",
                     "--json", report)
    assert code == 0, text
    body = json.loads(report.read_text())
    assert {"micro", "thresholds", "rare", "frequent", "log_loss", "auc_macro", "ap_macro", "ece"} <= set(body)
