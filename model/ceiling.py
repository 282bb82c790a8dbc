"""`lantern bench ceiling`: the achievable ceiling of bench quality's test task on simulated data.

The evidence-given Bayes oracle (lantern.dataset.posterior) scores the same held-out sessions with
the same hidden questions as `lantern bench quality`, twice: from the visible answers alone, and
from the visible answers and the external rows. The difference is the log-loss gain the context
can bring at best; `bench quality` then reports each variant's share of it (it reads
``truth/ceiling.npz`` when the split matches).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from lantern.dataset.io import Dataset
from lantern.dataset.oracle import TRUTH_DIR, Truth
from lantern.dataset.posterior import Chains, evidence_oracle
from lantern.dataset.simulate import _run
from lantern.errors import ConfigError
from model.data import joined_sources
from model.metrics import Layout, log_loss
from model.train import Prepared, TrainConfig, prepare

CEILING_FILE = "ceiling.npz"
POSTERIOR_SURVEY, POSTERIOR_FULL = "posterior_survey", "posterior_full"


def compute_ceiling(root: str | Path, ds: Dataset, truth: Truth, tc: TrainConfig, opts: Chains = Chains(),
                    log=print) -> dict:
    """Both posteriors on the test sessions of ``prepare(ds, tc)``; saved beside the truth."""
    if truth is None or truth.config is None:
        raise ConfigError(f"{root} has no simulator truth with its config: the ceiling needs simulated data "
                          "(`lantern simulate` writes truth/)")
    t0 = time.perf_counter()
    prep = prepare(ds, tc)
    _, items, world, _ = _run(truth.config)
    rows, hs, q = prep.test_idx, prep.test, ds.questionnaire
    external = {name: (table.take(rows), present[rows]) for name, (table, present) in joined_sources(ds).items()}
    kq = np.asarray(q.key_question)
    probs = {}
    for name, ext in ((POSTERIOR_SURVEY, None), (POSTERIOR_FULL, external)):
        log(f"{name}: sampling {len(rows)} sessions × {opts.chains} chains")
        probs[name] = evidence_oracle(truth.config, items, world, hs.data.survey.q_idx, hs.data.survey.sel, kq,
                                      q.n_keys, ext, opts, log)
    np.savez_compressed(Path(root) / TRUTH_DIR / CEILING_FILE, session_ids=_session_ids(ds, rows),
                        eval_seed=tc.eval_seed, **probs)
    layout = Layout.of(q)
    report = {name: {"log_loss": log_loss(p, hs.y, hs.loss_mask, layout),
                     "rare_log_loss": log_loss(p, hs.y, hs.loss_mask & prep.rare[None, :], layout)}
              for name, p in {**probs, "oracle": truth.oracle[rows]}.items()}
    return {"test_sessions": int(len(rows)), "chains": opts.__dict__, "seconds": time.perf_counter() - t0,
            "models": report}


def load_ceiling(root: str | Path, ds: Dataset, prep: Prepared, tc: TrainConfig) -> dict | None:
    """The saved posteriors when they were computed for this very test task, else None."""
    path = Path(root) / TRUTH_DIR / CEILING_FILE
    if not path.exists():
        return None
    with np.load(path) as z:
        same = (int(z["eval_seed"]) == tc.eval_seed
                and np.array_equal(z["session_ids"], _session_ids(ds, prep.test_idx)))
        return {name: z[name] for name in (POSTERIOR_SURVEY, POSTERIOR_FULL)} if same else None


def achievable_share(results: dict) -> dict:
    """Per variant: its log-loss gain over survey_only as a share of the gain the evidence-given
    oracle gets from the external rows (overall and on rare keys)."""
    post_s, post_f, base = results.get(POSTERIOR_SURVEY), results.get(POSTERIOR_FULL), results.get("survey_only")
    if post_s is None or post_f is None or base is None:
        return {}
    out = {}
    for name, r in results.items():
        if name in (POSTERIOR_SURVEY, POSTERIOR_FULL, "survey_only") or "log_loss" not in r:
            continue
        out[name] = {m: (base[m] - r[m]) / (post_s[m] - post_f[m]) if post_s[m] != post_f[m] else float("nan")
                     for m in ("log_loss", "rare_log_loss")}
    return out


def _session_ids(ds: Dataset, rows: np.ndarray) -> np.ndarray:
    return np.asarray(ds.sessions.column("session_id").take(rows).to_pylist())
