"""Shapes, masks, gate invariants, degrade-to-survey-only exactness, variants and presets."""

import numpy as np
import pytest
import torch

from model.data import EncodedData, encode_dataset, hide_questions, model_config, to_batch
from model.encoding import FeatureSpec
from model.lantern import PRESETS, VARIANTS, Lantern, num_parameters


@pytest.fixture(scope="module")
def encoded(small_ds):
    spec = FeatureSpec.fit(small_ds.external)
    return spec, encode_dataset(small_ds, spec)


def _model(small_ds, spec, variant="lantern", **kw):
    torch.manual_seed(0)
    return Lantern(model_config(small_ds.questionnaire, spec, variant, "small", **kw)).eval()


def _batch(data: EncodedData, idx, absent_all=False):
    sub = data.take(np.asarray(idx))
    if absent_all:
        for s in sub.sources:
            s.present[:] = False
    return to_batch(sub.survey.q_idx, sub.survey.sel, sub.sources)


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_outputs_every_response_key(small_ds, encoded, variant):
    spec, data = encoded
    logits, aux = _model(small_ds, spec, variant)(_batch(data, range(16)), return_aux=True)
    assert logits.shape == (16, small_ds.questionnaire.n_keys)
    assert torch.isfinite(logits).all()
    if variant in ("lantern", "external_only"):
        assert aux["attention"].shape[:2] == aux["gate"].shape == aux["survey_mask"].shape[:2]
        assert aux["token_source"].max().item() == len(spec.sources) - 1


def test_gate_is_zero_without_external_and_in_unit_interval_otherwise(small_ds, encoded):
    spec, data = encoded
    model = _model(small_ds, spec)
    batch = _batch(data, range(64))
    has = torch.stack([s.present for s in batch.sources]).any(0)
    assert has.any() and (~has).any(), "fixture should mix users with and without external data"
    _, aux = model(batch, return_aux=True)
    gate = aux["gate"]
    assert (gate[~has] == 0).all()
    assert ((gate[has] > 0) & (gate[has] < 1)).all()
    att = aux["attention"][has]  # rows sum to one over the user's valid external tokens
    torch.testing.assert_close(att.sum(-1), torch.ones_like(att.sum(-1)))


def test_the_scorers_aux_without_attention_weights_has_the_same_logits_and_gate(small_ds, encoded):
    spec, data = encoded
    model = _model(small_ds, spec).eval()
    batch = _batch(data, range(64))
    with torch.no_grad():
        logits, aux = model(batch, return_aux=True)
        fused_logits, fused_aux = model(batch, return_aux=True, aux_attention=False)
    assert fused_aux["attention"] is None  # the fused kernel ran: no weights to return
    torch.testing.assert_close(fused_logits, logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fused_aux["gate"], aux["gate"], atol=1e-5, rtol=1e-5)


def test_no_external_data_gives_exactly_the_survey_only_path(small_ds, encoded):
    spec, data = encoded
    model = _model(small_ds, spec)
    batch = _batch(data, range(48), absent_all=True)
    fused = model(batch)
    survey_only = model(batch, survey_only_path=True)
    assert (fused - survey_only).abs().max().item() <= 1e-6
    # and inside a mixed batch, rows without external data match the survey-only path too
    mixed = _batch(data, range(200))
    has = torch.stack([s.present for s in mixed.sources]).any(0)
    diff = (model(mixed) - model(mixed, survey_only_path=True)).abs()
    assert diff[~has].max().item() <= 1e-6
    assert diff[has].max().item() > 1e-4  # external data does change the answer


def test_masks_padding_and_absent_tokens_do_not_leak(small_ds, encoded):
    spec, data = encoded
    model = _model(small_ds, spec)
    batch = _batch(data, range(8))
    base = model(batch)
    for s in batch.sources:  # garbage behind masks changes nothing
        s.seq_cat[~s.seq_mask] = 3
        s.seq_val[~s.seq_mask] = 1e3
    absent = ~batch.sources[0].present
    batch.sources[0].num[absent] = 77.0
    torch.testing.assert_close(model(batch), base, atol=1e-6, rtol=0)
    wider = to_batch(np.pad(data.survey.q_idx[:8], ((0, 0), (0, 0))), data.survey.sel[:8],
                     [s.take(np.arange(8)) for s in data.sources])
    torch.testing.assert_close(model(wider), base, atol=1e-6, rtol=0)


def test_hiding_removes_questions_and_masks_exactly_their_keys(small_ds, encoded):
    _, data = encoded
    kq = np.asarray(small_ds.questionnaire.key_question)
    s = data.survey
    q_in, sel_in, mask = hide_questions(s.q_idx[:100], s.sel[:100], kq, 0.3, np.random.default_rng(0))
    for row in range(100):
        before = set(s.q_idx[row][s.q_idx[row] > 0] - 1)
        after = set(q_in[row][q_in[row] > 0] - 1)
        hidden = before - after
        answered = {int(qi) - 1 for qi, sl in zip(s.q_idx[row], s.sel[row]) if qi and sl.any()}
        assert hidden and hidden <= answered
        assert set(kq[mask[row]]) == hidden
        assert not (sel_in[row][q_in[row] == 0] > 0).any()


def test_paper_preset_is_about_fifty_million_parameters(small_ds, encoded):
    spec, _ = encoded
    n = num_parameters(Lantern(model_config(small_ds.questionnaire, spec, "lantern", "paper")))
    assert 40e6 <= n <= 60e6, n
    assert PRESETS["small"]["d_model"] < PRESETS["paper"]["d_model"]


def test_training_mode_adds_fusion_noise_eval_is_deterministic(small_ds, encoded):
    spec, data = encoded
    model = _model(small_ds, spec, dropout=0.0)
    batch = _batch(data, range(8))
    torch.testing.assert_close(model(batch), model(batch))
    model.train()
    assert not torch.allclose(model(batch), model(batch))


def test_the_scorers_length_sorted_chunks_answer_like_one_untrimmed_batch(small_ds, encoded):
    """streaming.scoring.forward sorts rows by length, cuts chunks and trims each chunk's
    padding (survey tokens and sequence positions); rows come back in input order, equal to
    one pass over the whole batch with every sequence position kept."""
    from model.inference import CPU_CHUNK_ROWS, _forward, forward

    spec, data = encoded
    model = _model(small_ds, spec)
    sub = data.take(np.arange(3 * CPU_CHUNK_ROWS + 5))
    full = to_batch(sub.survey.q_idx, sub.survey.sel, sub.sources)
    for source, arrays in zip(full.sources, sub.sources):  # undo the sequence trim: every position
        source.seq_cat, source.seq_mask = torch.as_tensor(arrays.seq_cat), torch.as_tensor(arrays.seq_mask)
        source.seq_val = torch.as_tensor(arrays.seq_val)
    with torch.no_grad():
        whole_probs, whole_gate = _forward(model, full, len(sub.survey.q_idx))
    probs, gate = forward(model, sub.survey.q_idx, sub.survey.sel, sub.sources, torch.device("cpu"))
    np.testing.assert_allclose(probs, whole_probs, atol=1e-5)
    np.testing.assert_allclose(gate, whole_gate, atol=1e-5)


def test_each_key_reads_its_own_questions_query_only(small_ds, encoded):
    """The question readout: moving one question's query moves the logits of that question's
    keys and of no other key."""
    spec, data = encoded
    model = _model(small_ds, spec, question_readout=True)
    assert model.cfg.question_readout
    with torch.no_grad():
        model.readout.out.normal_(0, 0.5)  # trained weights: not the zero start
        batch = _batch(data, range(16))
        base = model(batch)
        q = 3
        model.readout.query[q].add_(torch.randn_like(model.readout.query[q]))
        moved = (model(batch) - base).abs().amax(0)  # (K,)
    own = torch.as_tensor(small_ds.questionnaire.key_question) == q
    assert moved[own].min().item() > 1e-5
    assert moved[~own].max().item() == 0.0


def test_the_output_gate_spans_the_survey_only_and_the_fused_answer(small_ds, encoded):
    """z_s + β ⊙ (z − z_s): β = 1 is the fused model, β = 0 its survey-only path, for users with
    external data; users without any keep the survey-only answer exactly whatever β is."""
    spec, data = encoded
    model = _model(small_ds, spec, output_gate=True)
    batch = _batch(data, range(200))
    has = torch.stack([s.present for s in batch.sources]).any(0)
    no_survey = _batch(data, range(200))
    no_survey.q_idx.zero_()
    no_survey.sel.zero_()
    with torch.no_grad():
        fused, survey = model(batch), model(batch, survey_only_path=True)
        context = model(no_survey)  # the same weights with the survey closed
        model.output_beta.zero_()
        closed = model(batch)
        model.output_beta.fill_(0.5)
        half = model(batch)
        model.output_beta.zero_()
        model.output_beta_ext.fill_(1.0)
        leaning = model(batch)
    torch.testing.assert_close(closed, survey, atol=1e-6, rtol=0)
    torch.testing.assert_close(half[has], (survey + 0.5 * (fused - survey))[has], atol=1e-5, rtol=0)
    assert (half[~has] - survey[~has]).abs().max().item() <= 1e-6
    torch.testing.assert_close(leaning[has], context[has], atol=1e-4, rtol=0)  # β_e = 1: the context alone
    assert (leaning[~has] - survey[~has]).abs().max().item() <= 1e-6
    assert {"output_beta", "output_beta_ext"} <= set(model.state_dict())  # saved and served with the weights


def test_modality_dropout_closes_the_sources_it_drops(small_ds, encoded):
    from lantern.settings.model import TrainConfig
    from model.train import drop_modalities

    spec, data = encoded
    sources = [s.take(np.arange(400)) for s in data.sources]
    before = np.stack([s.present for s in sources], 1)
    frac = drop_modalities(sources, 400, TrainConfig(drop_context=0.5, drop_survey=0.25), np.random.default_rng(0))
    after = np.stack([s.present for s in sources], 1)
    assert not (after & ~before).any()  # nothing absent becomes present
    dropped = before.any(1) & ~after.any(1)
    assert 0.4 < dropped.sum() / before.any(1).sum() < 0.6  # whole rows lose their context
    assert set(np.unique(frac)) == {0.3, 1.0} and 0.15 < (frac == 1.0).mean() < 0.35
    assert data.sources[0].present[:400].tolist() == before[:, 0].tolist()  # the data set is untouched
