"""Pure numpy metrics over the hidden questions' response keys."""

from __future__ import annotations

import numpy as np

THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)


def prf(probs: np.ndarray, y: np.ndarray, mask: np.ndarray, threshold: float = 0.5) -> dict:
    """Micro precision / recall / F1 over the entries where ``mask`` is set."""
    pred = (probs >= threshold) & mask
    truth = (y > 0) & mask
    tp = float((pred & truth).sum())
    precision = tp / max(pred.sum(), 1)
    recall = tp / max(truth.sum(), 1)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "support": int(truth.sum())}


def auc(probs: np.ndarray, y: np.ndarray, mask: np.ndarray) -> float:
    """Micro ROC AUC (Mann-Whitney U with average ranks for ties)."""
    p, t = probs[mask], y[mask] > 0
    n_pos, n_neg = int(t.sum()), int((~t).sum())
    if not n_pos or not n_neg:
        return float("nan")
    order = np.argsort(p, kind="mergesort")
    sorted_p = p[order]
    ranks = np.empty(len(p))
    _, first, counts = np.unique(sorted_p, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0  # 1-based average rank of each tie group
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[t].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def ece(probs: np.ndarray, y: np.ndarray, mask: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error over equal-width probability bins."""
    p, t = probs[mask], (y[mask] > 0).astype(float)
    if not len(p):
        return float("nan")
    which = np.minimum((p * bins).astype(int), bins - 1)
    count = np.bincount(which, minlength=bins)
    conf = np.bincount(which, p, bins)
    acc = np.bincount(which, t, bins)
    nz = count > 0
    return float(np.abs(acc[nz] - conf[nz]).sum() / len(p))


def summarise(values: np.ndarray) -> dict:
    if not len(values):
        return {"n": 0}
    q = np.quantile(values, [0.1, 0.5, 0.9])
    return {"n": int(len(values)), "mean": float(values.mean()), "p10": float(q[0]), "p50": float(q[1]),
            "p90": float(q[2])}


def quality_report(probs: np.ndarray, y: np.ndarray, mask: np.ndarray, rare_keys: np.ndarray) -> dict:
    """The evaluation JSON's metric part: micro, thresholds, rare/frequent, auc, ece."""
    rare = mask & rare_keys[None, :]
    frequent = mask & ~rare_keys[None, :]
    return {
        "micro": prf(probs, y, mask),
        "thresholds": [{"threshold": t, **prf(probs, y, mask, t)} for t in THRESHOLDS],
        "rare": prf(probs, y, rare),
        "frequent": prf(probs, y, frequent),
        "auc": auc(probs, y, mask),
        "ece": ece(probs, y, mask),
    }
