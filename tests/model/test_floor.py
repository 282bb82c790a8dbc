"""The output gate's fit on validation data: the survey's answer is always a candidate and another
replaces it only with a gain beyond one standard error, so the gated validation loss is never
above the survey-only one."""

import numpy as np
import pytest
import torch

from lantern.settings.model import TrainConfig
from model.floor import GRID, fit_output_gate, hidden_logits
from model.metrics import Layout, log_loss
from model.outputs import key_probs
from model.train import prepare, train_epoch, make_optimizer, for_run
from model.checkpoint import build_model
from model.data import model_config

pytestmark = pytest.mark.slow


def test_the_gated_validation_loss_is_at_most_the_survey_only_one(small_ds):
    tc = TrainConfig(variant="lantern", epochs=1, drop_context=0.3, drop_survey=0.15, seed=2)
    prep = prepare(small_ds, tc)
    torch.manual_seed(2)
    model = build_model(model_config(small_ds.questionnaire, prep.features, "lantern", "small", output_gate=True))
    train = prep.data.take(prep.train_idx)
    run = for_run(tc, len(train))
    opt, sched = make_optimizer(model, run, -(-len(train) // run.batch_size))
    train_epoch(model, opt, sched, train, prep.key_question, run, np.random.default_rng(0), "cpu", parent=prep.parent)
    gate = fit_output_gate(model, prep.val)
    layout, hs = Layout.of(small_ds.questionnaire), prep.val
    has = np.stack([s.present for s in hs.data.sources], 1).any(1)
    survey = key_probs(hidden_logits(model, hs, survey_only_path=True), model.cfg).numpy()
    assert gate["val_loss_gated"] <= log_loss(survey, hs.y, hs.loss_mask & has[:, None], layout) + 1e-6
    pairs = set(zip(gate["beta_fused"], gate["beta_context"]))
    assert pairs <= set(GRID) and all(f + e <= 1 + 1e-6 for f, e in pairs)
    np.testing.assert_allclose(model.output_beta.numpy(), gate["beta_fused"])  # the model now scores with them
