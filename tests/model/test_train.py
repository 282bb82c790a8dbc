"""A small train + evaluate: LANTERN learns, the epoch with the lowest validation loss is kept,
checkpoints round-trip, the report has every part."""

import numpy as np
import pytest

from model.checkpoint import load_model, save_model, tuned_threshold
from model.evaluate import evaluate, frequency_probs, predict
from model.metrics import Layout
from model.quality import quality_report
from model.train import TrainConfig, batch_rows, fit, prepare


@pytest.fixture(scope="module")
def trained(small_ds):
    tc = TrainConfig(variant="lantern", epochs=6, batch_size=64, lr=3e-3, patience=6, seed=1)
    prep = prepare(small_ds, tc)
    model, history = fit(prep, tc, progress=False)
    return prep, model, history


def test_lantern_learns_well_above_the_answer_rate_reference(small_ds, trained):
    prep, model, history = trained
    layout = Layout.of(small_ds.questionnaire)
    probs = predict(model, prep.test)
    freq = frequency_probs(prep.data.take(prep.train_idx), prep.key_question, len(prep.test.y))
    ours = quality_report(probs, prep.test.y, prep.test.loss_mask, prep.rare, layout, history["multi_threshold"])
    ref = quality_report(freq, prep.test.y, prep.test.loss_mask, prep.rare, layout, 0.5)
    assert ours["log_loss"] < ref["log_loss"] - 0.05, (ours["log_loss"], ref["log_loss"])
    assert ours["auc_macro"] > ref["auc_macro"] + 0.1
    assert ours["f1"] > ref["f1"] + 0.03
    losses = [h["loss"] for h in history["history"]]
    assert losses[-1] < losses[0]


def test_the_kept_epoch_is_the_one_with_the_lowest_validation_loss(small_ds, trained):
    from model.train import validate

    prep, model, history = trained
    val = [h["val_loss"] for h in history["history"]]
    assert history["best_epoch"] == int(np.argmin(val)) + 1
    assert history["best_epoch_val_loss"] == min(val)  # chosen as trained; then the output gate is fitted
    as_saved = validate(model, prep.val, Layout.of(small_ds.questionnaire))["val_loss"]
    assert history["best_val_loss"] == pytest.approx(as_saved, rel=1e-9) and "output_gate" in history
    assert 0.05 <= history["multi_threshold"] <= 0.95


def test_the_automatic_epoch_budget_gives_small_datasets_more_passes():
    assert TrainConfig().max_epochs(31_000) == 12 and TrainConfig().max_epochs(300_000) == 12
    assert TrainConfig().max_epochs(2_240) == 60 and TrainConfig().max_epochs(20_000) == 18
    assert TrainConfig(epochs=3).max_epochs(2_240) == 3


def test_small_datasets_get_smaller_batches_not_fewer_updates():
    tc = TrainConfig(batch_size=256, min_batches=50)
    assert batch_rows(tc, 30_000) == 256
    assert batch_rows(tc, 2_240) == 44
    assert batch_rows(tc, 100) == 16


def test_evaluation_report_has_every_part(small_ds, trained):
    prep, model, history = trained
    names = [s.name for s in prep.features.sources]
    report = evaluate(model, prep.test, small_ds.questionnaire, prep.rare, names,
                      multi_threshold=history["multi_threshold"])
    for part in ("precision", "recall", "f1"):
        assert 0 <= report["micro"][part] <= 1
        assert part in report["rare"] and part in report["frequent"]
    assert report["micro"]["f1"] == pytest.approx(report["f1"])
    assert [t["threshold"] for t in report["thresholds"]] == [0.3, 0.4, 0.5, 0.6, 0.7]
    assert 0.5 < report["auc_macro"] <= 1 and 0 < report["ap_macro"] <= 1 and 0 <= report["ece"] < 0.2
    assert 0 < report["log_loss"] and 0 < report["brier"] < 0.25 and 0 < report["accuracy"] < 1
    assert np.isnan(report["ordinal_mae"])  # the simulator declares no ordinal scales
    assert set(report["attention_mass"]) == set(names)
    assert report["gate"]["per_user"]["n"] > 0 and report["gate"]["per_key"]
    assert set(report["gate"]["per_key"]) <= set(small_ds.questionnaire.response_keys)


def test_single_select_probabilities_sum_to_one_per_question(small_ds, trained):
    prep, model, _ = trained
    probs = predict(model, prep.test)
    q = small_ds.questionnaire
    kq = np.asarray(q.key_question)
    for i, question in enumerate(q.questions):
        total = probs[:, kq == i].sum(1)
        if question.kind == "single":
            np.testing.assert_allclose(total, 1.0, atol=1e-5)
        else:
            assert (probs[:, kq == i] < 1).all()


def test_checkpoint_round_trip_gives_identical_scores(small_ds, trained, tmp_path):
    prep, model, history = trained
    save_model(tmp_path / "m", model, prep.features, small_ds.questionnaire, {"training": history})
    loaded = load_model(tmp_path / "m")
    assert loaded.meta["questionnaire_hash"] == small_ds.questionnaire.content_hash
    assert tuned_threshold(loaded.meta) == history["multi_threshold"]
    np.testing.assert_allclose(predict(loaded.model, prep.test), predict(model, prep.test), atol=1e-6)
