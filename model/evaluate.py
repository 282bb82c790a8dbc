"""Held-out evaluation: hide questions deterministically, predict, score, explain (gate/attention)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from lantern.dataset.questionnaire import Questionnaire
from model.data import EncodedData, hide_questions, to_batch
from model.inference import session_gate
from model.metrics import Layout, summarise
from model.outputs import key_probs
from model.quality import quality_report


@dataclass
class HiddenSet:
    """A fixed masked-response task: visible inputs, answers and the hidden keys to score."""

    data: EncodedData  # survey arrays hold only the visible questions
    y: np.ndarray  # (N, K) all answers
    loss_mask: np.ndarray  # (N, K) keys of hidden questions


def hidden_set(data: EncodedData, key_question: np.ndarray, frac: float, seed: int,
               parent: np.ndarray | None = None) -> HiddenSet:
    s = data.survey
    q_in, sel_in, mask = hide_questions(s.q_idx, s.sel, key_question, frac, np.random.default_rng(seed), parent)
    visible = EncodedData(type(s)(q_in, sel_in, s.y), data.sources, data.user_ids)
    return HiddenSet(visible, s.y, mask)


def rare_keys(data: EncodedData, q: Questionnaire, threshold: float = 0.2) -> np.ndarray:
    """Response keys of questions presented in fewer than ``threshold`` of sessions."""
    counts = np.bincount(data.survey.q_idx.ravel(), minlength=len(q.questions) + 1)[1:]
    return (counts / max(len(data), 1) < threshold)[np.asarray(q.key_question)]


def frequency_probs(train: EncodedData, key_question: np.ndarray, n: int) -> np.ndarray:
    """The answer-rate reference: P(option | its question was answered) on training data, the
    same for every session (a single-select question's rates sum to one) — what a model must
    beat to have learned anything."""
    s = train.survey
    answered = np.zeros((len(s.q_idx), key_question.max() + 2), bool)
    rows, cols = np.nonzero((s.q_idx > 0) & (s.sel > 0).any(-1))
    answered[rows, s.q_idx[rows, cols]] = True
    asked = answered[:, key_question + 1].sum(0)
    freq = s.y.sum(0) / np.maximum(asked, 1)
    return np.broadcast_to(freq.astype(np.float32), (n, len(freq)))


@torch.no_grad()
def predict(model: nn.Module, hs: HiddenSet, batch_size: int = 1024, device="cpu", diagnostics=None):
    """Probabilities (N, K); feeds gate/attention aux to ``diagnostics`` when given."""
    model.eval()
    out = np.empty(hs.y.shape, np.float32)
    for start in range(0, len(hs.y), batch_size):
        idx = np.arange(start, min(start + batch_size, len(hs.y)))
        sub = hs.data.take(idx)
        batch = to_batch(sub.survey.q_idx, sub.survey.sel, sub.sources, device)
        if diagnostics is None:
            logits = model(batch)
        else:
            logits, aux = model(batch, return_aux=True)
            diagnostics.add(batch, aux)
        out[idx] = key_probs(logits, model.cfg).cpu().numpy()
    return out


class Diagnostics:
    """Gate distribution per response key and attention mass per external source."""

    def __init__(self, q: Questionnaire, source_names: list[str]):
        self.q, self.sources = q, source_names
        self.key_gate: list[tuple[np.ndarray, np.ndarray]] = []
        self.user_gate: list[np.ndarray] = []
        self.mass = np.zeros(len(source_names))
        self.mass_n = np.zeros(len(source_names))

    def add(self, batch, aux) -> None:
        gate, mask = aux["gate"][:, 1:], aux["survey_mask"][:, 1:]  # drop [CLS]: (B, T)
        sel = batch.sel[:, : gate.shape[1]]  # (B, T, M)
        has = aux["has_external"]
        tok_gate = gate[..., None].expand_as(sel)
        picked = (sel > 0) & (sel <= self.q.n_keys) & mask[..., None] & has[:, None, None]  # options, not "none"
        self.key_gate.append((sel[picked].cpu().numpy() - 1, tok_gate[picked].float().cpu().numpy()))
        has_tokens = has & (mask.float().sum(1) > 0)
        self.user_gate.append(session_gate(aux)[has_tokens].float().cpu().numpy())
        att, smask = aux["attention"], aux["survey_mask"].float()  # (B, Tq, Tk), (B, Tq)
        per_token = (att * smask[..., None]).sum(1) / smask.sum(1, keepdim=True)  # (B, Tk)
        per_source = torch.zeros(att.shape[0], len(self.sources), device=att.device)
        per_source.index_add_(1, aux["token_source"], per_token.float())
        for i, sb in enumerate(batch.sources):
            ok = sb.present
            self.mass[i] += per_source[ok, i].sum().item()
            self.mass_n[i] += ok.sum().item()

    def report(self) -> dict:
        mass = {name: float(self.mass[i] / max(self.mass_n[i], 1)) for i, name in enumerate(self.sources)}
        if not self.user_gate or not any(len(u) for u in self.user_gate):  # external_only: no survey tokens
            return {"attention_mass": mass}
        keys = np.concatenate([k for k, _ in self.key_gate]) if self.key_gate else np.zeros(0, int)
        vals = np.concatenate([v for _, v in self.key_gate]) if self.key_gate else np.zeros(0)
        per_key = {}
        for k, group in pd.Series(vals).groupby(keys):
            per_key[self.q.response_keys[int(k)]] = summarise(group.to_numpy())
        users = np.concatenate(self.user_gate) if self.user_gate else np.zeros(0)
        return {
            "gate": {"per_user": summarise(users),
                     "histogram": np.histogram(users, bins=10, range=(0, 1))[0].tolist(),
                     "per_key": per_key},
            "attention_mass": mass,
        }


def evaluate(model: nn.Module, hs: HiddenSet, q: Questionnaire, rare: np.ndarray, source_names: list[str],
             device="cpu", multi_threshold: float = 0.5, probs_out: dict | None = None) -> dict:
    """The quality report of one model on a hidden set (``multi_threshold``: tuned on validation);
    ``probs_out[variant]`` receives the probabilities (for paired comparisons)."""
    variant = model.cfg.variant
    diag = Diagnostics(q, source_names) if variant in ("lantern", "external_only") else None
    probs = predict(model, hs, device=device, diagnostics=diag)
    if probs_out is not None:
        probs_out[variant] = probs
    report = {"variant": variant, "sessions": int(len(hs.y)), "hidden_keys": int(hs.loss_mask.sum()),
              **quality_report(probs, hs.y, hs.loss_mask, rare, Layout.of(q), multi_threshold)}
    if diag is not None:
        report.update(diag.report())
    return report
