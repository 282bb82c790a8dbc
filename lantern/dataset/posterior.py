"""The achievable ceiling on simulated data: the Bayes-optimal predictor given exactly the evidence
a model sees.

The oracle in ``truth/`` knows every respondent's latent traits, which no model can. This one
knows only what a model is given — a session's visible answers, and (``external=True``) the
external rows joined to it — plus the simulator's own generative model. It samples the posterior
over the respondent's latents (6 core traits; per niche domain a propensity, whether it makes the
user a member, an intensity and a sub-type) by Metropolis-within-Gibbs, vectorised over every
session and chain at once, and averages the true answer probabilities (``oracle.answer_probs``)
over the samples:

    p(answer | evidence) = E_{latents | evidence} [ p(answer | latents) ]

With and without the external rows, the two give the log-loss gain the context can bring at best;
a model's share of that gain says how much of what the context holds it uses.

Every likelihood term mirrors ``simulate`` line by line (what carries no information — skips,
fatigue, missing values, the irrelevant columns and sources — contributes nothing).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from lantern.dataset.oracle import _erf, answer_probs
from lantern.dataset.simulate import DOMAINS, GENERIC_CATEGORIES, N_CORE, SUBTYPES, SimConfig, _Item, _Latents

D = len(DOMAINS)
_TINY = 1e-12


@dataclass
class Visible:
    """One item's visible answers: the sessions (rows) and what each selected, (n, options) bool."""

    rows: np.ndarray
    chosen: np.ndarray


@dataclass(frozen=True)
class Chains:
    chains: int = 4
    burn: int = 300
    samples: int = 300
    thin: int = 3
    seed: int = 0


def visible_answers(items: list[_Item], q_idx: np.ndarray, sel: np.ndarray, n_keys: int,
                    key_question: np.ndarray) -> list[Visible | None]:
    """Per item, the sessions whose answer to it is visible in the encoded survey arrays (``q_idx``:
    question + 1, ``sel``: key + 1, ``n_keys + 1 + q``: a multi-select answered "none of these");
    a presented, skipped question tells nothing and is left out."""
    first_key = np.searchsorted(key_question, np.arange(len(items)))
    out: list[Visible | None] = []
    for q, item in enumerate(items):
        rows, pos = np.nonzero(q_idx == q + 1)
        picked = sel[rows, pos]  # (n, M)
        answered = (picked > 0).any(1)
        rows, picked = rows[answered], picked[answered]
        if not len(rows):
            out.append(None)
            continue
        k = len(item.question.options)
        chosen = np.zeros((len(rows), k), bool)
        r, m = np.nonzero((picked > 0) & (picked <= n_keys))  # options, not "none of these"
        chosen[r, picked[r, m] - 1 - first_key[q]] = True
        out.append(Visible(rows, chosen))
    return out


def _column(table: pa.Table, name: str) -> np.ndarray:
    return table.column(name).to_numpy(zero_copy_only=False)


class Evidence:
    """The likelihood of everything one set of sessions shows, as a function of latent states.
    States are laid out session-major: state ``n * C + c`` is chain ``c`` of session ``n``."""

    def __init__(self, cfg: SimConfig, items: list[_Item], world: _Latents, visible: list[Visible | None],
                 n_sessions: int, chains: int, external: dict[str, tuple[pa.Table, np.ndarray]] | None):
        self.cfg, self.items, self.world, self.C, self.N = cfg, items, world, chains, n_sessions
        self.visible = [(i, v) for i, v in enumerate(visible) if v is not None]
        self.external = external or {}
        self._prepare_external()

    # ---- external rows, as arrays once ---------------------------------------------------------
    def _prepare_external(self) -> None:
        ext, self.ext = self.external, {}
        if "demographics" in ext:
            t, present = ext["demographics"]
            age, income = _column(t, "age").astype(float), _column(t, "income_k").astype(float)
            region = np.array([int(r[1:]) for r in _column(t, "region")])
            self.ext["demographics"] = (present, age, income, _column(t, "household_size").astype(float), region)
        if "engagement" in ext:
            t, present = ext["engagement"]
            self.ext["engagement"] = (present, _column(t, "sessions_30d").astype(float),
                                      _column(t, "minutes_per_session").astype(float),
                                      _column(t, "email_open_rate").astype(float))
        if "transactions" in ext:
            t, present = ext["transactions"]
            cats, amounts = t.column("category_ids").to_pylist(), t.column("amounts").to_pylist()
            L = max((len(c) for c in cats), default=0)
            cat = np.zeros((len(cats), max(L, 1)), np.int64)
            amt = np.ones((len(cats), max(L, 1)))
            mask = np.zeros((len(cats), max(L, 1)), bool)
            for i, (c, a) in enumerate(zip(cats, amounts)):
                cat[i, : len(c)], amt[i, : len(c)], mask[i, : len(c)] = c, a, True
            self.ext["transactions"] = (present, cat, np.log(amt), mask & present[:, None])

    # ---- the log posterior -----------------------------------------------------------------------
    def log_prior(self, s: _Latents) -> np.ndarray:
        lp = -0.5 * (s.core ** 2).sum(1)
        lp -= 0.5 * ((s.propensity - 0.5 * s.core[:, :D]) ** 2).sum(1) / 0.75
        lp -= 0.5 * ((s.intensity - 0.3 * s.propensity) ** 2).sum(1)
        logits = np.einsum("mc,dcs->mds", s.core, self.world.tie)  # (M, D, S)
        logits -= logits.max(-1, keepdims=True)
        log_soft = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        return lp + np.take_along_axis(log_soft, s.subtype[..., None], -1)[..., 0].sum(1)

    def log_survey(self, s: _Latents) -> np.ndarray:
        out = np.zeros(len(s.core))
        C = self.C
        for i, v in self.visible:
            item = self.items[i]
            u = (v.rows[:, None] * C + np.arange(C)).ravel()  # every chain of each session
            p = np.clip(answer_probs(item, s, u), _TINY, 1 - _TINY)  # (n·C, k)
            chosen = np.repeat(v.chosen, C, 0)
            if item.question.kind == "single":
                ll = np.log((p * chosen).sum(1))
            else:
                ll = np.where(chosen, np.log(p), np.log1p(-p)).sum(1)
            np.add.at(out, u, ll)
        return out

    def log_external(self, s: _Latents) -> np.ndarray:
        C, cfg, out = self.C, self.cfg, np.zeros(len(s.core))
        z, member = s.core, s.propensity > 1.0
        rep = lambda x: np.repeat(x, C, 0)  # noqa: E731 - sessions → states
        if "demographics" in self.ext:
            present, age, income, household, region = map(rep, self.ext["demographics"])
            mu, sd = 0.6 * z[:, 0], 0.8 * cfg.noise
            a = (age - 40) / 12
            inside = _norm_logpdf(a, mu, sd)
            low, high = np.log(np.clip(_cdf((-22 / 12 - mu) / sd), _TINY, 1)), np.log(
                np.clip(1 - _cdf((45 / 12 - mu) / sd), _TINY, 1))
            age_ll = np.where(age <= 18, low, np.where(age >= 85, high, inside))
            inc_ll = _norm_logpdf(np.log(np.where(np.isnan(income), 1, income)),
                                  3.8 + 0.3 * z[:, 1] + 0.2 * s.intensity[:, 1], 0.3 * cfg.noise)
            lam = 0.8 + 1.5 * member[:, 4]
            hh_ll = (household - 1) * np.log(lam) - lam
            reg = np.outer(z[:, 2], np.linspace(-1, 1, 8)) * 0.7
            reg_ll = np.take_along_axis(reg, region[:, None], 1)[:, 0] - np.log(np.exp(reg).sum(1))
            ll = np.where(np.isnan(age), 0, age_ll) + np.where(np.isnan(income), 0, inc_ll) + hh_ll + reg_ll
            out += np.where(present, ll, 0)
        if "engagement" in self.ext:
            present, sessions, minutes, email = map(rep, self.ext["engagement"])
            rate = np.exp(1.5 + 0.4 * z[:, 3] + 0.3 * member[:, 3])
            ll = sessions * np.log(rate) - rate
            ll += _norm_logpdf(np.log(minutes), 2 + 0.3 * z[:, 4] + 0.5 * member[:, 3], 0.4 * cfg.noise)
            e = np.clip(email, 1e-9, 1 - 1e-9)
            ll += _norm_logpdf(np.log(e / (1 - e)), 0.8 * z[:, 5], cfg.noise)
            out += np.where(present, ll, 0)
        if "transactions" in self.ext:
            out += self._log_transactions(s)
        return out

    def _log_transactions(self, s: _Latents) -> np.ndarray:
        present, cat, log_amt, mask = self.ext["transactions"]
        C, cfg = self.C, self.cfg
        state_cat = np.repeat(cat, C, 0)  # (M, L)
        rate = np.where(s.propensity > 1.0, 0.12 + 0.05 * np.clip(s.intensity, -1, 2), 0.01)  # (M, D)
        stay = np.cumprod(np.concatenate([np.ones((len(rate), 1)), 1 - rate], 1), 1)  # Π_{d'<d} (1 − rate)
        log_domain = np.log(rate * stay[:, :D])  # (M, D): P(the first picked domain is d)
        log_generic = np.log(stay[:, D])  # (M,)
        generic = s.core @ self.world.generic_w  # (M, 20)
        generic -= generic.max(1, keepdims=True)
        generic -= np.log(np.exp(generic).sum(1, keepdims=True))
        is_generic = state_cat < GENERIC_CATEGORIES
        g_cat = np.where(is_generic, state_cat, 0)
        d = np.clip((state_cat - GENERIC_CATEGORIES) // SUBTYPES, 0, D - 1)
        sub = (state_cat - GENERIC_CATEGORIES) % SUBTYPES
        noisy = min(1.0, 0.2 * cfg.noise)
        truthful = np.take_along_axis(s.subtype, d, 1) == sub
        sub_ll = np.log((1 - noisy) * truthful + noisy / SUBTYPES)
        cat_ll = np.where(is_generic, log_generic[:, None] + np.take_along_axis(generic, g_cat, 1),
                          np.take_along_axis(log_domain, d, 1) + sub_ll)
        mean_amt = 3 + 0.3 * s.core[:, 1:2] + np.where(is_generic, 0.0, 0.3 * np.take_along_axis(s.intensity, d, 1))
        amt_ll = _norm_logpdf(np.repeat(log_amt, C, 0), mean_amt, 0.5 * cfg.noise)
        return np.where(np.repeat(mask, C, 0), cat_ll + amt_ll, 0).sum(1)

    def log_post(self, s: _Latents) -> np.ndarray:
        return self.log_prior(s) + self.log_survey(s) + (self.log_external(s) if self.ext else 0.0)


def _cdf(x):
    return 0.5 * (1 + _erf(x / np.sqrt(2)))


def _norm_logpdf(x, mu, sd):
    return -0.5 * ((x - mu) / sd) ** 2 - np.log(sd)


def _state(core, prop, inten, sub, world: _Latents) -> _Latents:
    return _Latents(core, prop, prop > 1.0, sub, inten, world.tie, world.generic_w)


def sample_posterior_predictive(ev: Evidence, opts: Chains, log=lambda m: None) -> np.ndarray:
    """(N, K) posterior predictive answer probabilities of every response key."""
    rng = np.random.default_rng(opts.seed)
    M, w = ev.N * ev.C, ev.world
    core = rng.standard_normal((M, N_CORE))  # start from the prior
    prop = 0.5 * core[:, :D] + np.sqrt(0.75) * rng.standard_normal((M, D))
    inten = rng.standard_normal((M, D)) + 0.3 * prop
    sub = rng.integers(0, SUBTYPES, (M, D))
    state = _state(core, prop, inten, sub, w)
    lp = ev.log_post(state)
    steps = {"core": 0.3, "domain": 0.3}
    accepted = {"core": [], "domain": [], "subtype": []}
    total, kept = None, 0
    for it in range(opts.burn + opts.samples):
        for block in ("core", "domain"):
            if block == "core":
                new = _state(core + steps["core"] * rng.standard_normal(core.shape), prop, inten, sub, w)
            else:
                new = _state(core, prop + steps["domain"] * rng.standard_normal(prop.shape),
                             inten + steps["domain"] * rng.standard_normal(inten.shape), sub, w)
            lp_new = ev.log_post(new)
            ok = np.log(rng.random(M)) < lp_new - lp
            core, prop, inten = (np.where(ok[:, None], a, b) for a, b in
                                 ((new.core, core), (new.propensity, prop), (new.intensity, inten)))
            lp = np.where(ok, lp_new, lp)
            accepted[block].append(ok.mean())
            if it < opts.burn and it % 20 == 19:  # adapt the step towards ~30 % acceptance
                rate = float(np.mean(accepted[block][-20:]))
                steps[block] *= np.exp(rate - 0.3)
        for d in range(D):  # a fresh sub-type for one domain at a time
            proposal = sub.copy()
            proposal[:, d] = rng.integers(0, SUBTYPES, M)
            new = _state(core, prop, inten, proposal, w)
            lp_new = ev.log_post(new)
            ok = np.log(rng.random(M)) < lp_new - lp
            sub = np.where(ok[:, None], proposal, sub)
            lp = np.where(ok, lp_new, lp)
            accepted["subtype"].append(ok.mean())
        state = _state(core, prop, inten, sub, w)
        if it >= opts.burn and (it - opts.burn) % opts.thin == 0:
            probs = np.concatenate([answer_probs(item, state, np.arange(M)) for item in ev.items], 1)
            total = probs if total is None else total + probs
            kept += 1
        if it % 100 == 99:
            log(f"posterior: step {it + 1}/{opts.burn + opts.samples}, acceptance "
                + ", ".join(f"{k} {np.mean(v[-100:]):.2f}" for k, v in accepted.items()))
    mean = total / kept  # (M, K)
    return mean.reshape(ev.N, ev.C, -1).mean(1).astype(np.float32)


def evidence_oracle(cfg: SimConfig, items: list[_Item], world: _Latents, q_idx: np.ndarray, sel: np.ndarray,
                    key_question: np.ndarray, n_keys: int, external=None, opts: Chains = Chains(),
                    log=lambda m: None) -> np.ndarray:
    """The posterior predictive (N, K) for sessions whose visible survey is (``q_idx``, ``sel``)
    and, when given, whose joined external rows are ``external`` (source → (rows, present))."""
    visible = visible_answers(items, q_idx, sel, n_keys, key_question)
    ev = Evidence(cfg, items, world, visible, len(q_idx), opts.chains, external)
    return sample_posterior_predictive(ev, opts, log)

