"""What only the simulator knows, for evaluation: the Bayes oracle and the never-presented answers.

* ``oracle`` (S, K): every session's true probability of every option given the respondent's
  latent traits — the ceiling no model can beat on average (a multi-select answered "none of
  these" is an answer too: each option's probability is its own).
* ``unasked`` (S, Q): questions the survey would have presented (routing by the respondent's
  would-be answers) but the respondent had stopped before (fatigue); ``unasked_answers`` (S, K)
  their would-be answers: the paper's "questions never asked", scored as their own row.

Written beside a simulated dataset under ``truth/`` (not part of the data contract).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from lantern.dataset.simulate import SUBTYPES, SimConfig, _Item, _Latents, _run, _Unasked

TRUTH_DIR, TRUTH_FILE, CONFIG_FILE = "truth", "truth.npz", "config.json"


@dataclass(frozen=True)
class Truth:
    oracle: np.ndarray  # (S, K) float32
    unasked: np.ndarray  # (S, Q) bool
    unasked_answers: np.ndarray  # (S, K) uint8
    config: SimConfig | None = None  # what simulated it: replays the world (lantern.dataset.posterior)

    def save(self, root: str | Path) -> None:
        (Path(root) / TRUTH_DIR).mkdir(parents=True, exist_ok=True)
        np.savez_compressed(Path(root) / TRUTH_DIR / TRUTH_FILE, oracle=self.oracle, unasked=self.unasked,
                            unasked_answers=self.unasked_answers)
        if self.config is not None:
            (Path(root) / TRUTH_DIR / CONFIG_FILE).write_text(json.dumps(asdict(self.config)))

    @classmethod
    def load(cls, root: str | Path) -> Truth | None:
        path = Path(root) / TRUTH_DIR / TRUTH_FILE
        if not path.exists():
            return None
        config = Path(root) / TRUTH_DIR / CONFIG_FILE
        with np.load(path) as z:
            return cls(z["oracle"], z["unasked"], z["unasked_answers"],
                       SimConfig(**json.loads(config.read_text())) if config.exists() else None)


def _erf(x: np.ndarray) -> np.ndarray:
    """Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7)."""
    sign, x = np.sign(x), np.abs(x)
    t = 1 / (1 + 0.3275911 * x)
    poly = ((((1.061405429 * t - 1.453152027) * t + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t
    return sign * (1 - poly * np.exp(-x * x))


def _binned(mean: np.ndarray, sd: float, edges) -> np.ndarray:
    """P(digitize(mean + sd·ε, edges) = c) for every bin c: (S, len(edges) + 1)."""
    cdf = 0.5 * (1 + _erf((np.asarray(edges)[None, :] - mean[:, None]) / (sd * np.sqrt(2))))
    cdf = np.concatenate([np.zeros((len(mean), 1)), cdf, np.ones((len(mean), 1))], 1)
    return np.diff(cdf, axis=1)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = np.exp(z - z.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-z))


def answer_probs(item: _Item, lat: _Latents, u: np.ndarray) -> np.ndarray:
    """The true answer distribution of ``item`` for respondents ``u``: (S, k), mirroring
    ``simulate._answer`` rule by rule."""
    core, d, k = lat.core[u], item.domain, len(item.question.options)
    if item.rule == "likert":
        return _binned(core @ item.loading, 0.6, [-1.2, -0.4, 0.4, 1.2])
    if item.rule == "categorical":
        return _softmax(core @ item.loading)
    if item.rule == "multi":
        return _sigmoid(core @ item.loading - 0.8)
    if item.rule == "gate":
        low = _binned(lat.propensity[u, d], 0.25, [-0.3, 0.4, 1.0])
        low = np.concatenate([low[:, :2], low[:, 2:].sum(1, keepdims=True), np.zeros((len(u), 1))], 1)
        return np.where(lat.member[u, d, None], np.eye(4)[3][None, :], low)
    if item.rule == "subtype":
        return 0.85 * np.eye(SUBTYPES)[lat.subtype[u, d]] + 0.15 / k
    if item.rule == "spend":
        return _binned(lat.intensity[u, d], 0.5, [-1.0, -0.3, 0.3, 1.0])
    if item.rule == "activities":
        return _sigmoid(item.loading[lat.subtype[u, d]] + 0.8 * lat.intensity[u, d, None] - 1.0)
    return _softmax(item.loading[lat.subtype[u, d]] + lat.intensity[u, d, None])  # nested


def simulate_truth(cfg: SimConfig) -> Truth:
    """The truth behind ``simulate(cfg)`` (the same seed replays the same population)."""
    unasked = _Unasked([], [])
    _, items, lat, respondent = _run(cfg, unasked)
    oracle = np.concatenate([answer_probs(item, lat, respondent) for item in items], 1).astype(np.float32)
    answers = np.concatenate(unasked.answers, 1).astype(np.uint8)
    return Truth(oracle, np.stack(unasked.stopped, 1), answers, cfg)
