"""The output layer: a softmax per single-select question, a sigmoid per multi-select option,
the matching loss, and hiding follow-ups together with their gate."""

import numpy as np
import torch
import torch.nn.functional as F

from model.data import hide_questions, question_parents
from model.lantern import LanternConfig
from model.outputs import key_probs, response_loss

CFG = LanternConfig(n_questions=3, n_keys=7, max_selected=3, variant="survey_only",
                    key_question=(0, 0, 0, 1, 1, 2, 2), single_select=(True, False, True))


def test_probabilities_follow_the_question_kind():
    logits = torch.randn(4, 7) * 3
    p = key_probs(logits, CFG)
    torch.testing.assert_close(p[:, :3], logits[:, :3].softmax(-1))
    torch.testing.assert_close(p[:, 3:5], torch.sigmoid(logits[:, 3:5]))
    torch.testing.assert_close(p[:, 5:], logits[:, 5:].softmax(-1))


def test_a_config_without_a_layout_keeps_a_sigmoid_per_key():
    legacy = LanternConfig(n_questions=3, n_keys=7, max_selected=3, variant="survey_only")
    logits = torch.randn(2, 7)
    torch.testing.assert_close(key_probs(logits, legacy), torch.sigmoid(logits))


def test_the_loss_is_cross_entropy_per_single_question_and_bce_per_multi_option():
    logits = torch.randn(2, 7, requires_grad=True)
    y = torch.tensor([[0, 1, 0, 1, 0, 0, 0], [1, 0, 0, 0, 1, 0, 1]], dtype=torch.float32)
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 1, 1]], dtype=torch.float32)
    loss = response_loss(logits, y, mask, CFG)
    ce = [F.cross_entropy(logits[0:1, :3], torch.tensor([1])), F.cross_entropy(logits[1:2, :3], torch.tensor([0])),
          F.cross_entropy(logits[1:2, 5:], torch.tensor([1]))]
    bce = F.binary_cross_entropy_with_logits(logits[0, 3:5], y[0, 3:5], reduction="sum")
    expected = (sum(ce) + bce) / 5  # three single-select decisions, two multi-select options
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_a_hidden_gate_hides_its_follow_ups_and_only_answered_questions_are_scored(small_ds):
    q = small_ds.questionnaire
    parent = question_parents(q)
    gate, child = q.question_index["pets_gate"], q.question_index["pets_type"]
    assert parent[child] == gate
    kq = np.asarray(q.key_question)
    q_idx = np.array([[gate + 1, child + 1, 0]])
    sel = np.zeros((1, 3, 8), np.int64)
    sel[0, 0, 0] = np.flatnonzero(kq == gate)[3] + 1
    sel[0, 1, 0] = np.flatnonzero(kq == child)[0] + 1
    rng = np.random.default_rng(0)
    for _ in range(20):  # whichever question is drawn, the gate never stays hidden with its child shown
        q_in, _, scored = hide_questions(q_idx, sel, kq, 0.5, rng, parent)
        if q_in[0, 0] == 0:
            assert q_in[0, 1] == 0 and scored[0, kq == child].all()
    skipped = sel.copy()
    skipped[0, 1] = 0  # the follow-up presented but skipped: hidden with the gate, never scored
    q_in, _, scored = hide_questions(q_idx, skipped, kq, 0.99, rng, parent)
    assert q_in[0].tolist() == [0, 0, 0] and not scored[0, kq == child].any() and scored[0, kq == gate].all()
