"""The evidence-given oracle: each likelihood term mirrors the simulator (the true latents explain
a session's own evidence better than another respondent's do), and its predictions sit where a
Bayes predictor must: between the latent-trait oracle and the survey-only posterior."""

import numpy as np
import pytest

from lantern.dataset.oracle import Truth, simulate_truth
from lantern.dataset.posterior import Chains, Evidence, _state, evidence_oracle, visible_answers
from lantern.dataset.simulate import SimConfig, _run, simulate
from lantern.settings.model import TrainConfig
from model.data import joined_sources
from model.metrics import Layout, log_loss
from model.train import prepare

CFG = SimConfig(users=1500, seed=5)


@pytest.fixture(scope="module")
def world():
    ds = simulate(CFG)
    _, items, lat, respondent = _run(CFG)
    prep = prepare(ds, TrainConfig(seed=0))
    return ds, items, lat, respondent, prep


def _evidence(world, rows, hs_rows, external: bool) -> Evidence:
    ds, items, lat, _, prep = world
    hs = prep.test
    q = ds.questionnaire
    visible = visible_answers(items, hs.data.survey.q_idx[hs_rows], hs.data.survey.sel[hs_rows], q.n_keys,
                              np.asarray(q.key_question))
    ext = {n: (t.take(rows), p[rows]) for n, (t, p) in joined_sources(ds).items()} if external else None
    return Evidence(CFG, items, lat, visible, len(rows), 1, ext)


def _latents_of(world, rows):
    _, _, lat, respondent, _ = world
    u = respondent[rows]
    return _state(lat.core[u], lat.propensity[u], lat.intensity[u], lat.subtype[u], lat)


def test_the_true_latents_explain_each_sessions_own_evidence_best(world):
    """Per likelihood term: the respondent's own latents give their evidence a higher likelihood
    than a random other respondent's do, on average and for most sessions."""
    *_, prep = world
    rows, hs_rows = prep.test_idx[:150], np.arange(150)
    ev = _evidence(world, rows, hs_rows, external=True)
    own = _latents_of(world, rows)
    other = _latents_of(world, np.random.default_rng(0).permutation(rows))
    for term in (ev.log_survey, ev.log_external):
        mine, theirs = term(own), term(other)
        assert mine.mean() > theirs.mean() and (mine > theirs).mean() > 0.6, term.__name__
    for source in ("demographics", "engagement", "transactions"):
        alone = Evidence(CFG, ev.items, ev.world, [], len(rows), 1,
                         {source: ev.external[source]}).log_external
        assert (alone(own) - alone(other)).mean() > 0, source


def test_predictions_sit_between_the_latent_oracle_and_the_survey_alone(world):
    ds, items, lat, _, prep = world
    truth = simulate_truth(CFG)
    n, hs, layout = 120, prep.test, Layout.of(ds.questionnaire)
    rows, q = prep.test_idx[:n], ds.questionnaire
    ext = {name: (t.take(rows), p[rows]) for name, (t, p) in joined_sources(ds).items()}
    args = (CFG, items, lat, hs.data.survey.q_idx[:n], hs.data.survey.sel[:n], np.asarray(q.key_question), q.n_keys)
    opts = Chains(chains=2, burn=80, samples=60)
    survey, full = evidence_oracle(*args, None, opts), evidence_oracle(*args, ext, opts)
    kq = np.asarray(q.key_question)
    for i, question in enumerate(q.questions):
        if question.kind == "single":  # a distribution over each single-select question's options
            np.testing.assert_allclose(full[:, kq == i].sum(1), 1.0, atol=1e-4)
    y, mask = hs.y[:n], hs.loss_mask[:n]
    ll = {name: log_loss(p, y, mask, layout) for name, p in
          (("oracle", truth.oracle[rows]), ("full", full), ("survey", survey))}
    assert ll["oracle"] < ll["full"] < ll["survey"], ll  # the context helps; knowing the traits helps more


def test_the_truth_remembers_its_simulation(tmp_path):
    cfg = SimConfig(users=300, seed=2, noise=2.0)
    simulate_truth(cfg).save(tmp_path)
    assert Truth.load(tmp_path).config == cfg
