"""A held-out quality report, and paired-bootstrap intervals for differences between models.

Every additive metric (log loss, Brier, F1 overall / rare / frequent, single-select accuracy) is
computed from per-session sums, so a bootstrap replicate is one weighted sum: sessions are
resampled with replacement and the *same* resample scores both models (paired). Macro AUC is
not additive; its replicates recompute it per key.
"""

from __future__ import annotations

import numpy as np

from model.metrics import (
    THRESHOLDS,
    Layout,
    _nll,
    _prf,
    auc,
    average_precision,
    decide,
    ece,
    log_loss,
    ordinal_mae,
    per_key,
    prf,
)

STATS = ("nll", "units", "sq_err", "entries", "correct", "single_n",
         "tp", "n_pred", "n_true", "rare_tp", "rare_pred", "rare_true", "freq_tp", "freq_pred", "freq_true",
         "rare_nll", "rare_units")
BOOTSTRAP_METRICS = ("log_loss", "brier", "f1", "rare_f1", "frequent_f1", "accuracy", "rare_log_loss")


def row_stats(probs, y, mask, layout: Layout, threshold: float, rare: np.ndarray) -> np.ndarray:
    """(N, len(STATS)) per-session sums behind every additive metric."""
    nll, units = _nll(probs, y, mask, layout)
    truth = (y > 0) & mask
    pred = decide(probs, layout, threshold) & mask
    single_q = truth & layout.single[None, :]  # the chosen option of each hidden single question
    cols = [nll.sum(1), units.sum(1), np.where(mask, (probs - truth) ** 2, 0).sum(1), mask.sum(1),
            (pred & single_q).sum(1), single_q.sum(1)]
    for keys in (np.ones_like(rare), rare, ~rare):
        p, t = pred & keys[None, :], truth & keys[None, :]
        cols += [(p & t).sum(1), p.sum(1), t.sum(1)]
    cols += [(nll * rare[None, :]).sum(1), (units * rare[None, :]).sum(1)]
    return np.stack(cols, 1).astype(np.float64)


def _f1(tp, n_pred, n_true):
    precision, recall = tp / np.maximum(n_pred, 1), tp / np.maximum(n_true, 1)
    return np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)


def from_sums(s: np.ndarray) -> dict[str, np.ndarray]:
    """Additive metrics from column sums (last axis = STATS); works on a stack of replicates."""
    c = {name: s[..., i] for i, name in enumerate(STATS)}
    return {
        "log_loss": c["nll"] / np.maximum(c["units"], 1),
        "brier": c["sq_err"] / np.maximum(c["entries"], 1),
        "f1": _f1(c["tp"], c["n_pred"], c["n_true"]),
        "rare_f1": _f1(c["rare_tp"], c["rare_pred"], c["rare_true"]),
        "frequent_f1": _f1(c["freq_tp"], c["freq_pred"], c["freq_true"]),
        "accuracy": c["correct"] / np.maximum(c["single_n"], 1),
        "rare_log_loss": c["rare_nll"] / np.maximum(c["rare_units"], 1),
    }


def macro(metric, probs, y, mask) -> float:
    values = per_key(metric, probs, y, mask)
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def quality_report(probs, y, mask, rare, layout: Layout, threshold: float) -> dict:
    """Every metric of one model on one hidden set; ``threshold`` is the multi-select threshold
    tuned on validation data."""
    column_sums = row_stats(probs, y, mask, layout, threshold, rare).sum(0)
    totals, sums = dict(zip(STATS, column_sums)), from_sums(column_sums)

    def counted(prefix: str) -> dict:  # precision / recall / F1 from the same counts as the sums
        return _prf(totals[f"{prefix}tp"], totals[f"{prefix}pred" if prefix else "n_pred"],
                    totals[f"{prefix}true" if prefix else "n_true"])

    return {
        **{k: float(v) for k, v in sums.items()},
        "multi_threshold": threshold,
        "auc_macro": macro(auc, probs, y, mask),
        "ap_macro": macro(average_precision, probs, y, mask),
        "auc_micro": auc(probs, y, mask),
        "ece": ece(probs, y, mask),
        "ordinal_mae": ordinal_mae(probs, y, mask, layout),
        "micro": counted(""),
        "rare": counted("rare_"),
        "frequent": counted("freq_"),
        "rare_log_loss": log_loss(probs, y, mask & rare[None, :], layout),
        "at_0.5": prf(probs, y, mask, 0.5),
        "thresholds": [{"threshold": t, **prf(probs, y, mask, t)} for t in THRESHOLDS],
    }


def resamples(n: int, reps: int, seed: int) -> np.ndarray:
    """(reps, n) how often each session is drawn in each bootstrap replicate."""
    rng = np.random.default_rng(seed)
    return np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(reps)]).astype(np.float64)


def paired_difference(stats_a: np.ndarray, stats_b: np.ndarray, weights: np.ndarray) -> dict:
    """a − b for every additive metric: the point estimate and the 95 % percentile interval."""
    point = {k: v - from_sums(stats_b.sum(0))[k] for k, v in from_sums(stats_a.sum(0)).items()}
    reps_a, reps_b = from_sums(weights @ stats_a), from_sums(weights @ stats_b)
    return {k: _interval(float(point[k]), reps_a[k] - reps_b[k]) for k in BOOTSTRAP_METRICS}


def paired_macro_auc(probs_a, probs_b, y, mask, weights: np.ndarray) -> dict:
    """a − b in macro AUC with a paired-bootstrap 95 % interval (replicates resample sessions)."""
    point = macro(auc, probs_a, y, mask) - macro(auc, probs_b, y, mask)
    diffs = macro_auc_replicates(probs_a, y, mask, weights) - macro_auc_replicates(probs_b, y, mask, weights)
    return _interval(point, diffs)


def macro_auc_replicates(probs, y, mask, weights: np.ndarray) -> np.ndarray:
    """(R,) macro AUC of every bootstrap replicate (``weights``: (R, N) draws of each session):
    each key's AUC on the resampled sessions, averaged over the keys with both classes."""
    per_key = np.stack([weighted_auc(probs[mask[:, k], k], y[mask[:, k], k] > 0, weights[:, mask[:, k]])
                        for k in range(probs.shape[1])], axis=1)  # (R, K)
    finite = np.isfinite(per_key)
    return np.where(finite.any(1), np.where(finite, per_key, 0).sum(1) / np.maximum(finite.sum(1), 1), np.nan)


def weighted_auc(p: np.ndarray, positive: np.ndarray, w: np.ndarray) -> np.ndarray:
    """(R,) ROC AUC of ``p`` against ``positive`` (n,) with each entry counted ``w[r]`` (R, n)
    times: the Mann-Whitney U of the resampled entries, ties counting one half (= ``metrics.auc``
    on the entries repeated). One sort for every replicate; NaN where a replicate lacks a class."""
    if not len(p):
        return np.full(len(w), np.nan)
    order = np.argsort(p, kind="mergesort")
    p, positive, w = p[order], positive[order], w[:, order]
    neg = np.where(positive, 0.0, w)
    below_end = np.concatenate([np.zeros((len(w), 1)), np.cumsum(neg, axis=1)], axis=1)  # (R, n + 1)
    new_value = np.r_[True, p[1:] != p[:-1]]
    starts, group = np.flatnonzero(new_value), np.cumsum(new_value) - 1  # tie groups: first entry, entry's group
    ends = np.r_[starts[1:], len(p)]
    below = below_end[:, starts][:, group]  # negatives scored strictly lower, per entry (R, n)
    tied = (below_end[:, ends] - below_end[:, starts])[:, group]  # negatives in the entry's tie group
    pos = np.where(positive, w, 0.0)
    n_pos, n_neg = pos.sum(1), neg.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n_pos > 0) & (n_neg > 0), (pos * (below + 0.5 * tied)).sum(1) / (n_pos * n_neg), np.nan)


def _interval(point: float, reps: np.ndarray) -> dict:
    lo, hi = np.nanquantile(reps, [0.025, 0.975])
    return {"diff": point, "lo": float(lo), "hi": float(hi), "excludes_0": bool(lo > 0 or hi < 0)}
