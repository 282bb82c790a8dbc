"""A trained model and its in-process scorer over the simulated dataset (fake feature store)."""

from __future__ import annotations

import pytest

from model.inference import InProcessPredictor
from model.train import TrainConfig, fit, prepare
from streaming.scoring import BatchScorer
from streaming.testing import FakeFeatures


@pytest.fixture(scope="module")
def trained(small_ds):
    tc = TrainConfig(variant="lantern", epochs=1, batch_size=128, seed=3)
    prep = prepare(small_ds, tc)
    model, _ = fit(prep, tc, progress=False)
    return prep, model


@pytest.fixture(scope="module")
def scorer(small_ds, trained):
    prep, model = trained
    return BatchScorer(small_ds.questionnaire, prep.features, InProcessPredictor(model, "v-test"),
                       FakeFeatures(small_ds.external))
