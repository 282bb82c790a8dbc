"""Materialized external encodings (model/materialized.py): the forward pass from stored encodings
equals encoding the sources per event, for every variant; expired sources are dropped like the
raw lookup drops them; another model version's encodings are refused."""

import numpy as np
import pytest
import torch

from model.checkpoint import build_model
from model.data import encode_dataset, model_config
from model.encoding import FeatureSpec
from model.inference import forward
from model.lantern import BASELINES, VARIANTS
from model.materialized import EncodingVersionMismatch, encode_users, read

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def encoded(small_ds):
    spec = FeatureSpec.fit(small_ds.external)
    return spec, encode_dataset(small_ds, spec).take(np.arange(200))


def _model(small_ds, spec, variant):
    torch.manual_seed(0)
    return build_model(model_config(small_ds.questionnaire, spec, variant, "small")).eval()


def _eager(model, data):
    return forward(model, data.survey.q_idx, data.survey.sel, data.sources, CPU)


@pytest.mark.parametrize("variant", VARIANTS + BASELINES)
def test_stored_encodings_give_the_eager_predictions_for_every_variant(small_ds, encoded, variant):
    spec, data = encoded
    model = _model(small_ds, spec, variant)
    probs, gate = _eager(model, data)
    has_encoder = hasattr(model, "encode_external") and variant in ("lantern", "external_only")
    blobs = encode_users(model, data.sources, "v7") if has_encoder else [None] * len(data)
    stored = [None if b is None else read(b, "v7") for b in blobs]
    stored = [None if i % 3 == 0 else e for i, e in enumerate(stored)]  # a third encoded per event: mixed batches
    probs_s, gate_s = forward(model, data.survey.q_idx, data.survey.sel, data.sources, CPU, stored=stored)
    assert np.abs(probs_s - probs).max() <= 1e-5
    np.testing.assert_allclose(gate_s, gate, atol=1e-5)  # NaN where no external data, in both


def test_a_source_past_its_ttl_is_dropped_as_the_lookup_drops_it(small_ds, encoded):
    spec, data = encoded
    model = _model(small_ds, spec, "lantern")
    S = len(spec.sources)
    times = np.tile(np.arange(S, dtype=float) * 100.0, (len(data), 1))  # source s written at 100·s
    blobs = encode_users(model, data.sources, "v7", event_times=times)
    ttl = np.full(S, 150.0)
    stored = [read(b, "v7", now=200.0, ttl_s=ttl) for b in blobs]  # source 0 is 200 s old: expired
    assert not any(e.present[0] for e in stored) and any(e.present[1:].any() for e in stored)
    expected_sources = [s.take(np.arange(len(data))) for s in data.sources]
    expected_sources[0].present[:] = False
    expected, _ = forward(model, data.survey.q_idx, data.survey.sel, expected_sources, CPU)
    probs, _ = forward(model, data.survey.q_idx, data.survey.sel, data.sources, CPU, stored=stored)
    assert np.abs(probs - expected).max() <= 1e-5


def test_another_model_versions_encoding_is_refused(small_ds, encoded):
    spec, data = encoded
    blob = encode_users(_model(small_ds, spec, "lantern"), data.take(np.arange(2)).sources, "v0003")[0]
    assert read(blob, "v0003").tokens.shape[1] == 64
    with pytest.raises(EncodingVersionMismatch, match="'v0003', not 'v0004'"):
        read(blob, "v0004")
