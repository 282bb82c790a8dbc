"""A small train + evaluate: LANTERN learns, checkpoints round-trip, the report has every part."""

import numpy as np
import pytest
import torch

from model.checkpoint import load_model, save_model
from model.evaluate import evaluate, frequency_probs, predict
from model.metrics import prf, quality_report
from model.train import TrainConfig, fit, prepare


@pytest.fixture(scope="module")
def trained(small_ds):
    tc = TrainConfig(variant="lantern", epochs=6, batch_size=64, lr=3e-3, patience=6, seed=1)
    prep = prepare(small_ds, tc)
    model, history = fit(prep, tc, progress=False)
    return prep, model, history


def test_lantern_learns_well_above_the_frequency_reference(trained):
    prep, model, history = trained
    probs = predict(model, prep.test)
    freq = frequency_probs(prep.data.take(prep.train_idx), prep.key_question, len(prep.test.y))
    ours = quality_report(probs, prep.test.y, prep.test.loss_mask, prep.rare)
    ref = quality_report(freq, prep.test.y, prep.test.loss_mask, prep.rare)
    assert ours["micro"]["f1"] > ref["micro"]["f1"] + 0.1, (ours["micro"], ref["micro"])
    assert ours["auc"] > ref["auc"] + 0.03
    losses = [h["loss"] for h in history["history"]]
    assert losses[-1] < losses[0]


def test_evaluation_report_has_every_part(small_ds, trained):
    prep, model, _ = trained
    names = [s.name for s in prep.features.sources]
    report = evaluate(model, prep.test, small_ds.questionnaire, prep.rare, names)
    for part in ("precision", "recall", "f1"):
        assert 0 <= report["micro"][part] <= 1
        assert part in report["rare"] and part in report["frequent"]
    assert [t["threshold"] for t in report["thresholds"]] == [0.3, 0.4, 0.5, 0.6, 0.7]
    assert 0.5 < report["auc"] <= 1 and 0 <= report["ece"] < 0.2
    assert set(report["attention_mass"]) == set(names)
    assert report["gate"]["per_user"]["n"] > 0 and report["gate"]["per_key"]
    assert set(report["gate"]["per_key"]) <= set(small_ds.questionnaire.response_keys)


def test_checkpoint_round_trip_gives_identical_scores(small_ds, trained, tmp_path):
    prep, model, history = trained
    save_model(tmp_path / "m", model, prep.features, small_ds.questionnaire, {"training": history})
    loaded = load_model(tmp_path / "m")
    assert loaded.meta["questionnaire_hash"] == small_ds.questionnaire.content_hash
    np.testing.assert_allclose(predict(loaded.model, prep.test), predict(model, prep.test), atol=1e-6)


def test_metrics_on_known_values():
    y = np.array([[1, 0, 1, 0]])
    probs = np.array([[0.9, 0.8, 0.2, 0.1]])
    mask = np.ones_like(y, bool)
    r = prf(probs, y, mask)
    assert (r["precision"], r["recall"], r["f1"]) == (0.5, 0.5, 0.5)
    report = quality_report(probs, y, mask, np.array([True, True, False, False]))
    assert report["rare"]["precision"] == 0.5 and report["frequent"]["recall"] == 0.0
    assert report["auc"] == pytest.approx(0.75)
    torch.manual_seed(0)
