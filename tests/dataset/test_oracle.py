"""The simulator's truth: the Bayes oracle matches the answers it generated, and the
never-presented questions are exactly those a respondent stopped before."""

import numpy as np
import pytest

from lantern.dataset.oracle import Truth, simulate_truth
from lantern.dataset.simulate import SimConfig, simulate
from model.encoding import encode_surveys


@pytest.fixture(scope="module")
def sim():
    cfg = SimConfig(users=6000, seed=11)
    return simulate(cfg), simulate_truth(cfg)


def _answered(ds, survey):
    q = ds.questionnaire
    out = np.zeros((len(survey.y), len(q.questions)), bool)
    r, c = np.nonzero((survey.q_idx > 0) & (survey.sel > 0).any(-1))
    out[r, survey.q_idx[r, c] - 1] = True
    return out


def test_the_oracle_is_calibrated_on_the_answers_the_simulator_gave(sim):
    ds, truth = sim
    q = ds.questionnaire
    survey = encode_surveys(q, ds.sessions.column("answers"))
    kq = np.asarray(q.key_question)
    m = _answered(ds, survey)[:, kq]
    n = m.sum(0)
    ok = n >= 100
    empirical, oracle = (survey.y * m).sum(0) / np.maximum(n, 1), (truth.oracle * m).sum(0) / np.maximum(n, 1)
    z = (empirical - oracle) / np.sqrt(np.clip(oracle * (1 - oracle), 1e-6, None) / np.maximum(n, 1))
    assert np.abs(z[ok]).max() < 4.5, np.abs(z[ok]).max()  # sampling noise only, over ~260 keys
    for i, question in enumerate(q.questions):
        if question.kind == "single":
            np.testing.assert_allclose(truth.oracle[:, kq == i].sum(1), 1.0, atol=1e-5)


def test_never_presented_questions_are_routed_in_but_after_the_respondent_stopped(sim):
    ds, truth = sim
    survey = encode_surveys(ds.questionnaire, ds.sessions.column("answers"))
    presented = np.zeros_like(truth.unasked)
    r, c = np.nonzero(survey.q_idx > 0)
    presented[r, survey.q_idx[r, c] - 1] = True
    assert not (truth.unasked & presented).any()
    last = np.where(presented.any(1), presented.shape[1] - 1 - np.argmax(presented[:, ::-1], 1), -1)
    rows, cols = np.nonzero(truth.unasked)
    assert (cols > last[rows]).all()  # only questions after the last one shown
    assert 0.3 < truth.unasked.any(1).mean() < 0.95
    kq = np.asarray(ds.questionnaire.key_question)
    single = np.array([x.kind == "single" for x in ds.questionnaire.questions])
    per_q = np.zeros_like(truth.unasked, dtype=int)
    np.add.at(per_q.T, kq, truth.unasked_answers.T.astype(int))
    assert (per_q[truth.unasked & single[None, :]] == 1).all()  # one would-be option per single-select
    assert (per_q[truth.unasked & ~single[None, :]] == 0).any()  # "none of these" is a would-be answer too


def test_truth_round_trips_and_simulation_bytes_are_unchanged(sim, tmp_path):
    ds, truth = sim
    truth.save(tmp_path)
    back = Truth.load(tmp_path)
    np.testing.assert_array_equal(back.oracle, truth.oracle)
    np.testing.assert_array_equal(back.unasked, truth.unasked)
    assert Truth.load(tmp_path / "nothing") is None
    assert simulate(SimConfig(users=6000, seed=11)).sessions.equals(ds.sessions)
