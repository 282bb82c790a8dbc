"""Pure numpy metrics over the hidden questions' response keys, with decision rules that fit the
question kind: a single-select question is decided by the argmax of its options, a multi-select
option by a threshold tuned on validation data.

Units: ``log_loss`` is the mean negative log-likelihood per decision — one per hidden
single-select question (−log p of the chosen option), one per hidden multi-select option (binary)
— the same quantity the model is trained and selected on. F1 is micro over hidden keys.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)
TUNING_GRID = np.round(np.arange(0.05, 0.951, 0.025), 3)
EPS = 1e-7


@dataclass(frozen=True)
class Layout:
    """Which question each response key belongs to, and the questions' kinds."""

    key_question: np.ndarray  # (K,) question index of every key (keys of a question are contiguous)
    single: np.ndarray  # (K,) True for keys of single-select questions
    ordinal: np.ndarray  # (Q,) True for questions declared as ordinal scales

    @classmethod
    def of(cls, q) -> Layout:
        kq = np.asarray(q.key_question, dtype=np.int64)
        single_q = np.array([x.kind == "single" for x in q.questions])
        return cls(kq, single_q[kq], np.array([getattr(x, "ordinal", False) for x in q.questions]))

    @property
    def starts(self) -> np.ndarray:  # first key of every question
        return np.flatnonzero(np.r_[True, np.diff(self.key_question) != 0])


def _question_max(probs: np.ndarray, layout: Layout) -> np.ndarray:
    return np.maximum.reduceat(probs, layout.starts, axis=1)[:, layout.key_question]  # (N, K)


def decide(probs: np.ndarray, layout: Layout, multi_threshold: float = 0.5, abstain_below: float = 0.0) -> np.ndarray:
    """(N, K) bool: the argmax option of every single-select question (none where its top
    probability is below ``abstain_below``), and every multi-select option at ≥ the threshold."""
    top = _question_max(probs, layout)
    single = (probs >= top) & (top >= abstain_below)
    return np.where(layout.single, single, probs >= multi_threshold)


def _prf(tp: float, n_pred: float, n_true: float) -> dict:
    precision, recall = tp / max(n_pred, 1), tp / max(n_true, 1)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "support": int(n_true)}


def _micro(pred: np.ndarray, y: np.ndarray, mask: np.ndarray) -> dict:
    pred, truth = pred & mask, (y > 0) & mask
    return _prf(float((pred & truth).sum()), float(pred.sum()), float(truth.sum()))


def prf(probs: np.ndarray, y: np.ndarray, mask: np.ndarray, threshold: float = 0.5) -> dict:
    """Micro precision / recall / F1 with one threshold for every key, where ``mask`` is set."""
    return _micro(probs >= threshold, y, mask)


def decision_f1(probs, y, mask, layout: Layout, multi_threshold: float) -> dict:
    """Micro precision / recall / F1 under the question-kind decision rules."""
    return _micro(decide(probs, layout, multi_threshold), y, mask)


def tune_multi_threshold(probs, y, mask, layout: Layout) -> float:
    """The multi-select threshold with the best micro F1 on these (validation) sessions. The
    single-select decisions do not depend on it: they are counted once, not once per grid point."""
    truth = (y > 0) & mask
    single = mask & layout.single[None, :]
    chosen = decide(probs, layout) & single
    tp_s, pred_s = float((chosen & truth).sum()), float(chosen.sum())
    multi = mask & ~layout.single[None, :]
    p_multi, t_multi = probs[multi], truth[multi]
    n_true = float(truth.sum())
    scores = [_prf(tp_s + float((t_multi & (p_multi >= t)).sum()), pred_s + float((p_multi >= t).sum()), n_true)["f1"]
              for t in TUNING_GRID]
    return float(TUNING_GRID[int(np.argmax(scores))])


def decision_units(y, mask, layout: Layout) -> np.ndarray:
    """(N, K) one unit per hidden single-select question (at its chosen option) and per hidden
    multi-select option: what log loss averages over."""
    return np.where(layout.single[None, :], y > 0, True) & mask


def _nll(probs, y, mask, layout: Layout) -> tuple[np.ndarray, np.ndarray]:
    """Per-entry negative log-likelihood and decision units (N, K), zero outside ``mask``."""
    p, t = np.clip(probs, EPS, 1 - EPS), y > 0
    nll = np.where(t, -np.log(p), np.where(layout.single[None, :], 0.0, -np.log1p(-p)))
    return np.where(mask, nll, 0.0), decision_units(y, mask, layout)


def log_loss(probs, y, mask, layout: Layout) -> float:
    nll, units = _nll(probs, y, mask, layout)
    return float(nll.sum() / max(units.sum(), 1))


def auc(probs: np.ndarray, y: np.ndarray, mask: np.ndarray) -> float:
    """ROC AUC over the masked entries (Mann-Whitney U with average ranks for ties)."""
    p, t = probs[mask], y[mask] > 0
    n_pos, n_neg = int(t.sum()), int((~t).sum())
    if not n_pos or not n_neg:
        return float("nan")
    order = np.argsort(p, kind="mergesort")
    _, first, counts = np.unique(p[order], return_index=True, return_counts=True)
    ranks = np.empty(len(p))
    ranks[order] = np.repeat(first + (counts + 1) / 2.0, counts)  # 1-based average rank per tie group
    return float((ranks[t].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def average_precision(probs: np.ndarray, y: np.ndarray, mask: np.ndarray) -> float:
    p, t = probs[mask], y[mask] > 0
    if not t.any():
        return float("nan")
    order = np.argsort(-p, kind="mergesort")
    hits = t[order]
    precision_at = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision_at[hits].mean())


def per_key(metric, probs, y, mask) -> np.ndarray:
    """``metric`` of every key over the sessions where that key is hidden (NaN: one class only)."""
    return np.array([metric(probs[:, k], y[:, k], mask[:, k]) for k in range(probs.shape[1])])


def ece(probs: np.ndarray, y: np.ndarray, mask: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error over equal-width probability bins."""
    p, t = probs[mask], (y[mask] > 0).astype(float)
    if not len(p):
        return float("nan")
    which = np.minimum((p * bins).astype(int), bins - 1)
    count = np.bincount(which, minlength=bins)
    conf, acc = np.bincount(which, p, bins), np.bincount(which, t, bins)
    nz = count > 0
    return float(np.abs(acc[nz] - conf[nz]).sum() / len(p))


def ordinal_mae(probs, y, mask, layout: Layout) -> float:
    """Mean absolute error in scale points of the predictive median, over hidden answers to
    questions declared ordinal (NaN when there are none)."""
    errors = []
    for qi in np.flatnonzero(layout.ordinal):
        keys = np.flatnonzero(layout.key_question == qi)
        rows = mask[:, keys[0]] & (y[:, keys] > 0).any(1)
        if not rows.any():
            continue
        p = probs[rows][:, keys]
        cdf = np.cumsum(p / p.sum(1, keepdims=True), 1)
        median = (cdf < 0.5).sum(1)
        errors.append(np.abs(median - np.argmax(y[rows][:, keys], 1)))
    return float(np.concatenate(errors).mean()) if errors else float("nan")


def summarise(values: np.ndarray) -> dict:
    if not len(values):
        return {"n": 0}
    q = np.quantile(values, [0.1, 0.5, 0.9])
    return {"n": int(len(values)), "mean": float(values.mean()), "p10": float(q[0]), "p50": float(q[1]),
            "p90": float(q[2])}
